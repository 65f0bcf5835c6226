-- pgqueue dashboard: the queries behind its pages (pgqueue/dashboard/app.py).
--
-- Every page must answer quickly on a table of millions of finished jobs, so no query
-- here counts over all jobs: the unfinished states are read from their partial indexes
-- (jobs_claim_idx, jobs_pending_idx, jobs_running_idx), finished jobs only over the last
-- hour (jobs_finished_at_idx), lists page by keyset (id < the last id shown), and the
-- size of the whole table is the planner's estimate.
--
-- The filters of the job list are optional parameters ("%(x)s is null or ..."): run
-- them on connections that never prepare statements, so each execution is planned with
-- its values and the unused filters fold away.

-- name: overview_queues
-- Per queue (every queue with unfinished jobs or a pgqueue.queues row): pending, ready
-- (due now), waiting (due later), running, seconds since the oldest ready job became
-- due, paused, its limits (periods in seconds) and, for a limited queue with ready
-- jobs, how many of them its limits hold back now (pgqueue.queue_held_back, the column
-- of pgqueue.queue_stats; that view counts finished jobs too, so it is not read here).
with claimable as (
    select j.queue,
           count(*) filter (where j.run_at <= now()) as ready,
           count(*) filter (where j.run_at > now()) as waiting,
           extract(epoch from now() - min(j.run_at) filter (where j.run_at <= now()))::float8
               as oldest_ready_seconds
      from pgqueue.jobs j
     where j.state in ('available', 'scheduled', 'retryable')
     group by j.queue
), pending as (
    select j.queue, count(*) as pending
      from pgqueue.jobs j
     where j.state = 'pending'
     group by j.queue
), running as (
    select j.queue, count(*) as running
      from pgqueue.jobs j
     where j.state = 'running'
     group by j.queue
), names as (
    select queue from claimable
    union select queue from pending
    union select queue from running
    union select name from pgqueue.queues
)
select n.queue,
       coalesce(p.pending, 0) as pending,
       coalesce(c.ready, 0) as ready,
       coalesce(c.waiting, 0) as waiting,
       coalesce(r.running, 0) as running,
       c.oldest_ready_seconds,
       coalesce(q.paused, false) as paused,
       q.concurrency, q.rate_limit, extract(epoch from q.rate_period)::float8 as rate_period,
       q.partition_concurrency, q.partition_rate_limit,
       extract(epoch from q.partition_rate_period)::float8 as partition_rate_period,
       q.limits_set_by,
       case when coalesce(c.ready, 0) = 0
                 or (q.concurrency is null and q.rate_limit is null
                     and q.partition_concurrency is null and q.partition_rate_limit is null)
            then 0 else pgqueue.queue_held_back(n.queue) end as held_back
  from names n
  left join claimable c on c.queue = n.queue
  left join pending p on p.queue = n.queue
  left join running r on r.queue = n.queue
  left join pgqueue.queues q on q.name = n.queue
 order by n.queue;

-- name: queue_limits
-- One queue's limits (periods in seconds) and who set them; no row: never set.
select q.name, q.concurrency, q.rate_limit, extract(epoch from q.rate_period)::float8 as rate_period,
       q.partition_concurrency, q.partition_rate_limit,
       extract(epoch from q.partition_rate_period)::float8 as partition_rate_period,
       q.limits_set_by, q.updated_at
  from pgqueue.queues q
 where q.name = %(name)s;

-- name: overview_throughput
-- Jobs finished per minute of the last hour (0 = the current minute), queue and state.
select (extract(epoch from date_trunc('minute', now()) - date_trunc('minute', j.finished_at))
            / 60)::int as minutes_ago,
       j.queue, j.state, count(*) as jobs
  from pgqueue.jobs j
 where j.finished_at >= date_trunc('minute', now()) - interval '59 minutes'
 group by 1, 2, 3;

-- name: overview_totals
-- The planner's estimate of the rows in pgqueue.jobs (no scan), the live workers
-- (heartbeat within their stale_after, else 10 s) and the database clock.
select greatest((select c.reltuples from pg_class c where c.oid = 'pgqueue.jobs'::regclass),
                0)::bigint as jobs_estimate,
       (select count(*) from pgqueue.workers w
         where w.heartbeat_at > now() - coalesce(w.stale_after, interval '10 seconds'))
           as live_workers,
       now() as now;

-- name: jobs_page
-- One page of the job list, newest first, after the keyset cursor (the last id shown).
select j.id, j.queue, j.task, j.state, j.attempt, j.max_attempts, j.priority, j.run_at,
       j.created_at, j.finished_at, j.workflow_id, j.schedule_name, j.partition_key,
       j.errors -> -1 ->> 'message' as last_error
  from pgqueue.jobs j
 where (%(state)s::text is null or j.state = %(state)s)
   and (%(queue)s::text is null or j.queue = %(queue)s)
   and (%(task)s::text is null or j.task = %(task)s)
   and (%(workflow)s::bigint is null or j.workflow_id = %(workflow)s)
   and (%(partition_key)s::text is null or j.partition_key = %(partition_key)s)
   and (%(schedule)s::text is null or j.schedule_name = %(schedule)s)
   and (%(created_from)s::timestamptz is null or j.created_at >= %(created_from)s)
   and (%(created_to)s::timestamptz is null or j.created_at < %(created_to)s)
   and (%(before_id)s::bigint is null or j.id < %(before_id)s)
 order by j.id desc
 limit %(limit)s;

-- name: jobs_page_by_run_at
-- One page of scheduled or retryable jobs, soonest first, after the keyset cursor
-- (run_at, id), read from jobs_due_later_idx.
select j.id, j.queue, j.task, j.state, j.attempt, j.max_attempts, j.priority, j.run_at,
       j.created_at, j.finished_at, j.workflow_id, j.schedule_name, j.partition_key,
       j.errors -> -1 ->> 'message' as last_error
  from pgqueue.jobs j
 where j.state in ('scheduled', 'retryable')
   and j.state = %(state)s
   and (%(queue)s::text is null or j.queue = %(queue)s)
   and (%(task)s::text is null or j.task = %(task)s)
   and (%(workflow)s::bigint is null or j.workflow_id = %(workflow)s)
   and (%(partition_key)s::text is null or j.partition_key = %(partition_key)s)
   and (%(schedule)s::text is null or j.schedule_name = %(schedule)s)
   and (%(created_from)s::timestamptz is null or j.created_at >= %(created_from)s)
   and (%(created_to)s::timestamptz is null or j.created_at < %(created_to)s)
   and (%(after_run_at)s::timestamptz is null
        or (j.run_at, j.id) > (%(after_run_at)s::timestamptz, %(after_id)s::bigint))
 order by j.run_at, j.id
 limit %(limit)s;

-- name: jobs_bulk_count
-- How many jobs of the filter a bulk action would change (its states only).
select count(*)
  from pgqueue.jobs j
 where j.state = any(%(states)s::text[])
   and (%(state)s::text is null or j.state = %(state)s)
   and (%(queue)s::text is null or j.queue = %(queue)s)
   and (%(task)s::text is null or j.task = %(task)s)
   and (%(workflow)s::bigint is null or j.workflow_id = %(workflow)s)
   and (%(partition_key)s::text is null or j.partition_key = %(partition_key)s)
   and (%(schedule)s::text is null or j.schedule_name = %(schedule)s)
   and (%(created_from)s::timestamptz is null or j.created_at >= %(created_from)s)
   and (%(created_to)s::timestamptz is null or j.created_at < %(created_to)s);

-- name: jobs_bulk_cancel
-- Cancel every unfinished job of the filter, in one statement (queued jobs at once,
-- running ones asked to stop); returns how many were cancelled or asked.
select count(*)
  from (select pgqueue.cancel(j.id) as state
          from pgqueue.jobs j
         where j.state in ('pending', 'scheduled', 'available', 'retryable', 'running')
           and (%(state)s::text is null or j.state = %(state)s)
           and (%(queue)s::text is null or j.queue = %(queue)s)
           and (%(task)s::text is null or j.task = %(task)s)
           and (%(workflow)s::bigint is null or j.workflow_id = %(workflow)s)
           and (%(partition_key)s::text is null or j.partition_key = %(partition_key)s)
           and (%(schedule)s::text is null or j.schedule_name = %(schedule)s)
           and (%(created_from)s::timestamptz is null or j.created_at >= %(created_from)s)
           and (%(created_to)s::timestamptz is null or j.created_at < %(created_to)s)
         order by j.id) c
 where c.state in ('cancelled', 'running');

-- name: jobs_bulk_retry
-- Make every discarded, cancelled, retryable or scheduled job of the filter available
-- now (a workflow step waiting for dependencies retried with it: pending), in one
-- statement: a unique_key held by another job fails it all; a step whose needed
-- dependency stays failed is left as it is and counted as refused.
select count(*) filter (where r.refused is null and r.state in ('available', 'pending'))
           as count,
       count(*) filter (where r.refused is not null) as refused,
       min(r.refused) as reason
  from pgqueue.retry_many(array(
        select j.id
          from pgqueue.jobs j
         where j.state in ('discarded', 'cancelled', 'retryable', 'scheduled')
           and (%(state)s::text is null or j.state = %(state)s)
           and (%(queue)s::text is null or j.queue = %(queue)s)
           and (%(task)s::text is null or j.task = %(task)s)
           and (%(workflow)s::bigint is null or j.workflow_id = %(workflow)s)
           and (%(partition_key)s::text is null or j.partition_key = %(partition_key)s)
           and (%(schedule)s::text is null or j.schedule_name = %(schedule)s)
           and (%(created_from)s::timestamptz is null or j.created_at >= %(created_from)s)
           and (%(created_to)s::timestamptz is null or j.created_at < %(created_to)s))) r;

-- name: job_detail
-- One job; "meta" and any column added later come from the row as JSON.
select j.id, j.queue, j.task, j.state, j.priority, j.args, j.kwargs, j.result, j.errors,
       j.attempt, j.max_attempts, j.run_at, j.created_at, j.started_at, j.finished_at,
       j.timeout::text as timeout, j.unique_key, j.worker_id, j.cancel_requested_at,
       j.workflow_id, j.workflow_step, j.deps_pending, j.inputs, j.schedule_name,
       j.schedule_slot, j.meta, j.partition_key, j.debounce_key,
       w.name as workflow_name, w.state as workflow_state,
       w.batch_seal_job_id is not null as in_batch,
       case when w.batch_seal_job_id is null then null
            when j.id = w.batch_seal_job_id then 'seal'
            when j.id = w.batch_callback_job_id then 'callback'
            when j.inputs = 'error' then 'on_error'
            else 'member' end as batch_role,
       k.name as worker_name, k.hostname as worker_hostname, k.pid as worker_pid,
       (select coalesce(array_agg(d.depends_on order by d.depends_on), '{}')
          from pgqueue.job_dependencies d where d.job_id = j.id) as depends_on,
       (select coalesce(array_agg(d.job_id order by d.job_id), '{}')
          from pgqueue.job_dependencies d where d.depends_on = j.id) as dependents,
       now() as now
  from pgqueue.jobs j
  left join pgqueue.workflows w on w.id = j.workflow_id
  left join pgqueue.workers k on k.id = j.worker_id
 where j.id = %(id)s;

-- name: workflows_page
select w.id, w.name, w.state, w.created_at, w.finished_at, w.total, w.remaining,
       w.completed, w.discarded, w.cancelled
  from pgqueue.workflows w
 where (%(state)s::text is null or w.state = %(state)s)
   and (%(before_id)s::bigint is null or w.id < %(before_id)s)
 order by w.id desc
 limit %(limit)s;

-- name: workflow
select w.id, w.name, w.state, w.created_at, w.finished_at, w.total, w.remaining,
       w.completed, w.discarded, w.cancelled, w.failed_job_ids, w.on_error_job_id,
       w.batch_seal_job_id is not null as is_batch
  from pgqueue.workflows w
 where w.id = %(id)s;

-- name: workflow_steps
-- The steps of one workflow (jobs_workflow_idx), with the jobs each one waits for.
select s.job_id, s.step, s.task, s.state, s.attempt, s.depends_on, s.is_error_callback,
       s.last_error
  from pgqueue.workflow_steps s
 where s.workflow_id = %(id)s
 order by s.job_id
 limit %(limit)s;

-- name: schedules
select s.name, s.task, s.cron, s.every::text as every, s.tz, s.queue, s.catch_up, s.paused,
       s.declared, s.next_slot, s.last_slot, s.last_fired_at, s.last_job_id, s.declared_by,
       now() as now
  from pgqueue.schedules s
 order by s.name;

-- name: workers
-- Every worker row, live or not (a dead one stays until another worker's rescue removes
-- it), with its heartbeat age and the jobs it runs (jobs_running_idx).
select w.id, w.name, w.hostname, w.pid, w.queues, w.tasks, w.concurrency, w.started_at,
       extract(epoch from now() - w.heartbeat_at)::float8 as heartbeat_age,
       w.heartbeat_at > now() - coalesce(w.stale_after, interval '10 seconds') as alive,
       (select count(*) from pgqueue.jobs j
         where j.worker_id = w.id and j.state = 'running') as running,
       (select coalesce(array_agg(r.id order by r.id), '{}')
          from (select j.id from pgqueue.jobs j
                 where j.worker_id = w.id and j.state = 'running'
                 order by j.id limit 10) r) as running_ids
  from pgqueue.workers w
 order by w.name, w.started_at;

-- name: batches_page
-- One page of batches, newest first, after the keyset cursor; member counts from
-- pgqueue.batches (each batch's members are counted on jobs_workflow_idx).
select b.batch_id, b.name, b.state, b.workflow_state, b.members, b.completed, b.discarded,
       b.cancelled, b.unfinished, b.callback_job_id, b.callback_task, b.callback_state,
       b.created_at, b.sealed_at, b.finished_at
  from pgqueue.batches b
 where (%(state)s::text is null or b.state = %(state)s)
   and (%(before_id)s::bigint is null or b.batch_id < %(before_id)s)
 order by b.batch_id desc
 limit %(limit)s;

-- name: batch
select b.batch_id, b.name, b.state, b.workflow_state, b.members, b.completed, b.discarded,
       b.cancelled, b.unfinished, b.callback_job_id, b.callback_task, b.callback_state,
       b.on_error_job_id, b.created_at, b.sealed_at, b.finished_at,
       w.batch_seal_job_id as seal_job_id, w.remaining
  from pgqueue.batches b
  join pgqueue.workflows w on w.id = b.batch_id
 where b.batch_id = %(id)s;

-- name: batch_members
-- One page of a batch's member steps (members and the steps that replaced them) in the
-- order they were added, after the keyset cursor (jobs_workflow_idx).
select j.id as job_id, j.workflow_step as step, j.task, j.queue, j.state, j.attempt,
       j.max_attempts, j.created_at, j.finished_at, j.partition_key,
       j.errors -> -1 ->> 'message' as last_error
  from pgqueue.jobs j
  join pgqueue.workflows w on w.id = j.workflow_id
 where j.workflow_id = %(id)s
   and j.id <> w.batch_seal_job_id
   and j.id is distinct from w.batch_callback_job_id
   and j.inputs <> 'error'
   and (%(after_id)s::bigint is null or j.id > %(after_id)s)
 order by j.id
 limit %(limit)s;
