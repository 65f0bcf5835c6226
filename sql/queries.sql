-- Runtime SQL of pgqueue, one named block each (loaded by pgqueue/_sql.py).
-- Most of the logic lives in the pgqueue.* functions of the schema, so that a
-- worker or producer in another language calls exactly what Python calls.

-- name: enqueue
-- A delay counts from this statement (the function adds it to clock_timestamp()), not
-- from the start of the caller's transaction; max_attempts null: the task's default.
select pgqueue.enqueue(task => %(task)s, args => %(args)s::jsonb, kwargs => %(kwargs)s::jsonb,
                       queue => %(queue)s, priority => %(priority)s,
                       run_at => %(run_at)s::timestamptz,
                       delay => make_interval(secs => %(delay)s::float8),
                       max_attempts => %(max_attempts)s, unique_key => %(unique_key)s,
                       meta => %(meta)s::jsonb,
                       partition_key => %(partition_key)s,
                       debounce => make_interval(secs => %(debounce)s::float8),
                       debounce_key => %(debounce_key)s,
                       debounce_max => make_interval(secs => %(debounce_max)s::float8));

-- name: enqueue_plain
-- The common case (no unique key, no debounce, no delay or run_at): one INSERT, the
-- row as pgqueue.enqueue would write it (available now, state and run_at from the
-- column defaults), without a function call. Only the producer's columns are written;
-- the caller has already refused bad input (pgqueue/_options.py), and the table's
-- constraints refuse the rest. The statement trigger sends the NOTIFY, at commit.
insert into pgqueue.jobs (task, args, kwargs, queue, priority, max_attempts, partition_key,
                          meta)
values (%(task)s, coalesce(%(args)s::jsonb, '[]'), coalesce(%(kwargs)s::jsonb, '{}'),
        coalesce(%(queue)s, 'default'), coalesce(%(priority)s, 0), %(max_attempts)s,
        %(partition_key)s, coalesce(%(meta)s::jsonb, '{}'))
returning id;

-- name: copy_jobs
copy pgqueue.jobs (task, args, kwargs, queue, priority, max_attempts, partition_key, state, meta) from stdin;

-- name: bulk_stage_create
create temporary table if not exists pgqueue_bulk_stage (
    task text, args jsonb, kwargs jsonb, queue text, priority integer,
    delay double precision, run_at timestamptz, max_attempts integer, unique_key text,
    meta jsonb,
    partition_key text
) on commit delete rows;

-- name: bulk_stage_copy
copy pg_temp.pgqueue_bulk_stage (task, args, kwargs, queue, priority, delay, run_at,
                                 max_attempts, unique_key, meta, partition_key) from stdin;

-- name: bulk_stage_insert
-- Delays count from this statement (one clock reading for every row), not from the
-- start of the caller's transaction.
with clock as (
    select clock_timestamp() as at
), staged as (
    select s.*, coalesce(s.run_at, c.at + make_interval(secs => s.delay), now()) as due, c.at
      from pg_temp.pgqueue_bulk_stage s cross join clock c
), ins as (
    insert into pgqueue.jobs (task, args, kwargs, queue, priority, run_at, max_attempts,
                              unique_key, partition_key, state, meta)
    select task, args, kwargs, queue, priority, due, max_attempts, unique_key, partition_key,
           case when due > at then 'scheduled' else 'available' end, coalesce(meta, '{}')
      from staged
    on conflict (unique_key) where unique_key is not null
        and state in ('pending', 'scheduled', 'available', 'running', 'retryable')
    do nothing
    returning 1
)
select count(*) from ins;

-- name: bulk_stage_clear
truncate pg_temp.pgqueue_bulk_stage;

-- name: job_get
-- Every column, so `jobs show` and Job.row follow the table as migrations add columns.
select * from pgqueue.jobs where id = %(id)s;

-- name: job_workers
-- For a job still waiting: its task and queue, and whether a live worker (by its own
-- stale_after, else 10 s) claims that task from that queue.
select j.task, j.queue,
       exists (select 1 from pgqueue.workers w
                where w.heartbeat_at > now() - coalesce(w.stale_after, interval '10 seconds')
                  and (w.queues is null or j.queue = any(w.queues))
                  and j.task = any(w.tasks))
  from pgqueue.jobs j
 where j.id = %(id)s;

-- name: job_owner
-- Who owns a job now: read when a late outcome of this worker was fenced out.
select attempt, state, worker_id from pgqueue.jobs where id = %(id)s;

-- name: job_state
select state, result, errors from pgqueue.jobs where id = %(id)s;

-- name: claim
-- The worker sends its arrays as text literals (pgqueue._sql.array), cast here.
-- args, kwargs and inputs come back as JSON text, parsed per job when it starts: a
-- document this worker cannot parse (written by SQL: an integer of more digits than
-- Python converts, nesting deeper than its recursion limit) fails only its own job.
-- max_attempts and timeout come back resolved: where the row left them null, the claim
-- wrote this worker's declarations (task_max_attempts, task_timeouts, parallel to tasks).
select id, queue, task, args::text, kwargs::text, attempt, max_attempts, priority, run_at,
       extract(epoch from timeout)::float8 as timeout,
       extract(epoch from started_at - run_at)::float8 as queue_latency, cancel_requested_at,
       -- workflow steps: their dependencies' results, read now (null for plain jobs)
       case when inputs <> 'none' then pgqueue.job_inputs(id)::text end as inputs,
       -- metadata as text, null when empty (most jobs: nothing to parse); the workflow;
       -- seconds from enqueue to this claim (database clock)
       nullif(meta, '{}')::text as meta, workflow_id,
       extract(epoch from started_at - created_at)::float8 as waited,
       -- a queue with a concurrency limit (read once per claim): its job's end frees a
       -- slot that claims held back may be waiting for
       queue = any(array(select q.name from pgqueue.queues q
                          where q.concurrency is not null
                             or q.partition_concurrency is not null)) as limited
  from pgqueue.claim(%(worker_id)s, %(queues)s::text[], %(tasks)s::text[], %(batch)s,
                     %(position_queues)s::text[], %(position_priorities)s::smallint[],
                     %(position_run_ats)s::timestamptz[], %(position_ids)s::bigint[],
                     %(task_max_attempts)s::integer[], %(task_timeouts)s::float8[],
                     %(task_concurrency)s::integer[]);

-- name: next_due
select pgqueue.next_due(%(queues)s, %(tasks)s, %(task_concurrency)s::integer[]);

-- name: complete
select pgqueue.complete(%(worker_id)s, %(ids)s::bigint[], %(attempts)s::integer[],
                        %(results)s::jsonb[]);

-- name: complete_freed
-- complete, and tell every worker that jobs of these queues with a concurrency limit
-- ended (slots of the limit are free): sent when the statement commits.
select pgqueue.complete(%(worker_id)s, %(ids)s::bigint[], %(attempts)s::integer[],
                        %(results)s::jsonb[])
 where (select count(pg_notify('pgqueue_freed', x)) from unnest(%(queues)s::text[]) x) >= 0;

-- name: notify_freed
select count(pg_notify('pgqueue_freed', x)) from unnest(%(queues)s::text[]) x;

-- name: complete_one
select pgqueue.complete(%(worker_id)s, array[%(id)s::bigint], array[%(attempt)s::integer],
                        array[%(result)s::jsonb]);

-- name: replace_step
-- A workflow step that called ctx.replace: its replacement joins the workflow and the
-- step completes, in one transaction. Returns the state, null when fenced out.
select pgqueue.replace_step(%(worker_id)s, %(id)s, %(attempt)s, %(steps)s::jsonb,
                            %(result_steps)s::integer[], %(result_is_list)s);

-- name: fail
select pgqueue.fail(worker_id => %(worker_id)s, job_id => %(id)s, job_attempt => %(attempt)s,
                    error => %(error)s::jsonb,
                    retry_delay => make_interval(secs => %(retry_delay)s::float8),
                    discard => %(discard)s, backoff_base => %(backoff_base)s,
                    backoff_cap => %(backoff_cap)s);

-- name: hand_back
select pgqueue.hand_back(%(worker_id)s, %(ids)s, %(attempts)s);

-- name: heartbeat
select pgqueue.heartbeat(%(worker_id)s, %(name)s, %(hostname)s, %(pid)s, %(queues)s,
                         %(tasks)s, %(concurrency)s,
                         make_interval(secs => %(stale_after)s::float8));

-- name: rescue
select id, state from pgqueue.rescue(make_interval(secs => %(stale_after)s::float8));

-- name: lost_attempts
-- Of this worker's attempts (ids and attempts, parallel), those it no longer owns: the
-- job was rescued (and perhaps claimed again, finished or deleted) meanwhile.
select r.id
  from unnest(%(ids)s::bigint[], %(attempts)s::integer[]) as r(id, attempt)
 where not exists (select 1 from pgqueue.jobs j
                    where j.id = r.id and j.state = 'running' and j.attempt = r.attempt
                      and j.worker_id = %(worker_id)s);

-- name: release_unknown
select pgqueue.release_unknown(%(worker_id)s, %(known)s, %(known_attempts)s);

-- name: worker_delete
delete from pgqueue.workers where id = %(worker_id)s;

-- name: cancel
select pgqueue.cancel(%(id)s);

-- name: retry
select pgqueue.retry(%(id)s);

-- name: prune
select pgqueue.prune(make_interval(secs => %(older_than)s::float8), %(states)s);

-- name: maintenance_prune
-- Automatic retention, one worker at a time: the others skip the round. The advisory
-- lock is transaction-scoped, so nothing leaks behind a transaction pooler.
select case when pg_try_advisory_xact_lock(%(lock)s)
            then pgqueue.prune(make_interval(secs => %(older_than)s::float8)) else 0 end;

-- name: autovacuum_covers_jobs
-- Whether autovacuum will vacuum pgqueue.jobs: on for the server (with the statistics
-- it needs) and not turned off for the table.
select current_setting('autovacuum')::boolean and current_setting('track_counts')::boolean
       and coalesce((select o.option_value::boolean from pg_options_to_table(c.reloptions) o
                      where o.option_name = 'autovacuum_enabled'), true)
  from pg_class c
 where c.oid = 'pgqueue.jobs'::regclass;

-- name: oldest_transaction
-- The open transaction of this database that holds back vacuum the longest (seconds,
-- pid, user, application, state, query); other roles' sessions need pg_read_all_stats.
select extract(epoch from now() - t.since)::float8, t.pid, t.usename, t.application_name,
       t.state, t.query
  from (select a.xact_start as since, a.pid, a.usename::text, a.application_name, a.state,
               a.query
          from pg_stat_activity a
         where a.datname = current_database() and a.pid <> pg_backend_pid()
           and a.xact_start is not null
           and (a.backend_xmin is not null or a.backend_xid is not null)
        union all
        select p.prepared, null, p.owner::text, 'prepared transaction ' || p.gid, 'prepared',
               null
          from pg_prepared_xacts p
         where p.database = current_database()) t
 order by t.since
 limit 1;

-- name: queue_stats
select s.queue, s.pending, s.ready, s.waiting, s.running, s.completed, s.discarded,
       s.cancelled, s.oldest_ready_seconds, s.paused,
       s.concurrency, s.rate_limit, extract(epoch from s.rate_period)::float8 as rate_period,
       s.partition_concurrency, s.partition_rate_limit,
       extract(epoch from s.partition_rate_period)::float8 as partition_rate_period,
       s.held_back, s.rate_limited,
       (select count(*) from pgqueue.jobs j
         where j.queue = s.queue
           and j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()
           and not exists (
               select 1 from pgqueue.workers w
                where w.heartbeat_at > now() - coalesce(
                          w.stale_after, make_interval(secs => %(stale_after)s::float8))
                  and (w.queues is null or j.queue = any(w.queues))
                  and j.task = any(w.tasks))) as no_worker
  from pgqueue.queue_stats s
 order by s.queue;

-- name: queue_pause
-- Resuming announces the queue on pgqueue_requeued: its jobs waited behind the
-- positions where the workers' claims start.
with q as (
    insert into pgqueue.queues (name, paused) values (%(name)s, %(paused)s)
    on conflict (name) do update set paused = excluded.paused, updated_at = now()
    returning name, paused
)
select count(pg_notify('pgqueue_requeued', q.name)) from q where not q.paused;

-- name: jobs_list
select id, queue, task, state, attempt, max_attempts, priority, run_at, created_at,
       finished_at, errors -> -1 ->> 'message' as last_error
  from pgqueue.jobs
 where (%(state)s::text is null or state = %(state)s)
   and (%(queue)s::text is null or queue = %(queue)s)
   and (%(task)s::text is null or task = %(task)s)
   and (%(since)s::float8 is null
        or created_at >= now() - make_interval(secs => %(since)s::float8))
 order by id desc
 limit %(limit)s;

-- name: workers_list
select id, name, hostname, pid, queues, concurrency, started_at,
       extract(epoch from now() - heartbeat_at)::float8 as heartbeat_age,
       extract(epoch from stale_after)::float8 as stale_after,
       (select count(*) from pgqueue.jobs j where j.worker_id = w.id and j.state = 'running')
           as running
  from pgqueue.workers w
 order by started_at;

-- name: retry_failed
-- Every discarded job (of one queue / task when given) becomes available now, except
-- those whose unique_key another unfinished job holds (held_by set, left discarded).
select id, state, held_by from pgqueue.retry_discarded(%(queue)s, %(task)s);

-- name: check_heartbeat
-- Seconds since the freshest worker heartbeat (null: no worker row), of workers that
-- claim from any of the given queues (null: any worker).
select extract(epoch from now() - max(w.heartbeat_at))::float8
  from pgqueue.workers w
 where %(queues)s::text[] is null or w.queues is null or w.queues && %(queues)s::text[];

-- name: check_unserved
-- Per active queue and task: due jobs that no live worker (by its own stale_after, else
-- 10 s) claims, when the oldest has waited longer than the limit.
select j.queue, j.task, count(*) as jobs,
       extract(epoch from now() - min(j.run_at))::float8 as age
  from pgqueue.jobs j
 where j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()
   and (%(queues)s::text[] is null or j.queue = any(%(queues)s::text[]))
   and not exists (select 1 from pgqueue.queues q where q.name = j.queue and q.paused)
 group by j.queue, j.task
having min(j.run_at) < now() - make_interval(secs => %(limit)s::float8)
   and not exists (select 1 from pgqueue.workers w
                    where w.heartbeat_at > now() - coalesce(w.stale_after, interval '10 seconds')
                      and (w.queues is null or j.queue = any(w.queues))
                      and j.task = any(w.tasks))
 order by age desc;

-- name: check_oldest
-- Per active (not paused) queue: seconds since its oldest due, unclaimed job became due.
-- A queue whose jobs wait on its own rate limit is left out (it is meant to wait).
select j.queue, extract(epoch from now() - min(j.run_at))::float8 as age
  from pgqueue.jobs j
 where j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()
   and (%(queues)s::text[] is null or j.queue = any(%(queues)s::text[]))
   and not exists (select 1 from pgqueue.queues q where q.name = j.queue and q.paused)
 group by j.queue
having not pgqueue.queue_rate_limited(j.queue)
 order by age desc;

-- name: schedules_due
-- The schedules a scheduler must act on now (database clock): due, or with no next
-- slot yet; and now() itself, the instant slots are judged against.
select name, cron, extract(epoch from every)::float8 as every, tz, catch_up, catch_up_limit,
       next_slot, now() as now
  from pgqueue.schedules
 where not paused and declared and (next_slot is null or next_slot <= now())
 order by next_slot nulls first, name
 limit 100;

-- name: schedules_wait
-- Seconds until the earliest next slot (null: nothing scheduled).
select extract(epoch from min(next_slot) - now())::float8
  from pgqueue.schedules
 where not paused and declared;

-- name: schedule_fire
select pgqueue.fire_schedule(%(name)s, %(expected)s, %(slots)s::timestamptz[], %(next_slot)s);

-- name: schedule_get_for_update
select name, task, args, kwargs, cron, extract(epoch from every)::float8 as every, tz, queue,
       priority, catch_up, catch_up_limit, pass_slot, declared, declared_by, next_slot, now()
  from pgqueue.schedules
 where name = %(name)s
   for update;

-- name: schedule_insert
insert into pgqueue.schedules (name, task, args, kwargs, cron, every, tz, queue, priority,
                               catch_up, catch_up_limit, pass_slot, declared_by, next_slot)
values (%(name)s, %(task)s, %(args)s::jsonb, %(kwargs)s::jsonb, %(cron)s,
        make_interval(secs => %(every)s::float8), %(tz)s, %(queue)s, %(priority)s,
        %(catch_up)s, %(catch_up_limit)s, %(pass_slot)s, %(declared_by)s, %(next_slot)s);

-- name: schedule_update
update pgqueue.schedules
   set task = %(task)s, args = %(args)s::jsonb, kwargs = %(kwargs)s::jsonb, cron = %(cron)s,
       every = make_interval(secs => %(every)s::float8), tz = %(tz)s, queue = %(queue)s,
       priority = %(priority)s, catch_up = %(catch_up)s, catch_up_limit = %(catch_up_limit)s,
       pass_slot = %(pass_slot)s, declared_by = %(declared_by)s, declared = true,
       next_slot = case when %(reslot)s then %(next_slot)s else next_slot end,
       updated_at = now()
 where name = %(name)s;

-- name: schedules_undeclare
-- Schedules of tasks this app registers, declared by a worker of an app, that this app
-- no longer declares: kept, and fire no more until an operator resumes them.
update pgqueue.schedules
   set declared = false, updated_at = now()
 where task = any(%(tasks)s) and not (name = any(%(names)s)) and declared
   and declared_by like 'app:%%'
returning name;

-- name: schedules_list
select name, task, cron, extract(epoch from every)::float8 as every, tz, queue, priority,
       catch_up, paused, declared, next_slot, last_slot, last_fired_at, last_job_id,
       args, kwargs, declared_by
  from pgqueue.schedules
 where %(name)s::text is null or name = %(name)s
 order by name;

-- name: schedule_pause
select pgqueue.pause_schedule(%(name)s, %(paused)s);

-- name: schedule_trigger
select pgqueue.trigger_schedule(%(name)s);

-- name: schedules_overdue
-- Schedules whose next slot is overdue by more than %(lag)s seconds (database clock).
select name, next_slot, extract(epoch from now() - next_slot)::float8 as lag
  from pgqueue.schedules
 where not paused and declared and next_slot < now() - make_interval(secs => %(lag)s::float8)
 order by next_slot;

-- name: job_meta_merge
-- Add keys to a job's meta while this attempt still owns it (tracing records the
-- attempt's span here, for the workflow steps that wait for this one).
update pgqueue.jobs set meta = meta || %(meta)s::jsonb
 where id = %(id)s and attempt = %(attempt)s and state = 'running';

-- name: job_dependency_meta
-- The meta of the steps a workflow step waited for (its dependencies), in input order.
select d.depends_on, j.meta
  from pgqueue.job_dependencies d
  join pgqueue.jobs j on j.id = d.depends_on
 where d.job_id = %(id)s
 order by d.position nulls last, d.depends_on;

-- name: set_queue_limits
-- Every limit of a queue at once (null: none); set_by 'app' never overrides 'operator'.
select pgqueue.set_queue_limits(
    queue => %(queue)s, concurrency => %(concurrency)s,
    rate_limit => %(rate_limit)s, rate_period => make_interval(secs => %(rate_period)s::float8),
    partition_concurrency => %(partition_concurrency)s,
    partition_rate_limit => %(partition_rate_limit)s,
    partition_rate_period => make_interval(secs => %(partition_rate_period)s::float8),
    set_by => %(set_by)s);

-- name: queue_known
-- Whether anything knows queue %(queue)s before an operator's setting: its row (an
-- earlier setting, an app.queue() declaration), a worker claiming it by name, or a job
-- waiting in it (read through the partial indexes on queue).
select exists (select 1 from pgqueue.queues where name = %(queue)s)
    or exists (select 1 from pgqueue.workers w where %(queue)s = any(w.queues))
    or exists (select 1 from pgqueue.jobs j where j.queue = %(queue)s
                  and j.state in ('available', 'scheduled', 'retryable'))
    or exists (select 1 from pgqueue.jobs j where j.queue = %(queue)s and j.state = 'pending');

-- name: queue_limits_get
select concurrency, rate_limit, extract(epoch from rate_period)::float8,
       partition_concurrency, partition_rate_limit,
       extract(epoch from partition_rate_period)::float8, limits_set_by
  from pgqueue.queues where name = %(queue)s;
