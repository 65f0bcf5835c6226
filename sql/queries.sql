-- Runtime SQL of pgqueue, one named block each (loaded by pgqueue/_sql.py).
-- Most of the logic lives in the pgqueue.* functions of the schema, so that a
-- worker or producer in another language calls exactly what Python calls.

-- name: enqueue
select pgqueue.enqueue(task => %(task)s, args => %(args)s::jsonb, kwargs => %(kwargs)s::jsonb,
                       queue => %(queue)s, priority => %(priority)s,
                       run_at => coalesce(%(run_at)s::timestamptz,
                                          now() + make_interval(secs => %(delay)s::float8)),
                       max_attempts => %(max_attempts)s, unique_key => %(unique_key)s);

-- name: copy_jobs
copy pgqueue.jobs (task, args, kwargs, queue, priority, max_attempts, state) from stdin;

-- name: bulk_stage_create
create temporary table if not exists pgqueue_bulk_stage (
    task text, args jsonb, kwargs jsonb, queue text, priority integer,
    delay double precision, run_at timestamptz, max_attempts integer, unique_key text
) on commit delete rows;

-- name: bulk_stage_copy
copy pg_temp.pgqueue_bulk_stage (task, args, kwargs, queue, priority, delay, run_at,
                                 max_attempts, unique_key) from stdin;

-- name: bulk_stage_insert
with staged as (
    select s.*, coalesce(s.run_at, now() + make_interval(secs => coalesce(s.delay, 0))) as due
      from pg_temp.pgqueue_bulk_stage s
), ins as (
    insert into pgqueue.jobs (task, args, kwargs, queue, priority, run_at, max_attempts,
                              unique_key, state)
    select task, args, kwargs, queue, priority, due, max_attempts, unique_key,
           case when due > now() then 'scheduled' else 'available' end
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
select id, queue, task, args, kwargs, state, priority, run_at, attempt, max_attempts,
       unique_key, result, errors, created_at, started_at, finished_at, worker_id,
       cancel_requested_at
  from pgqueue.jobs where id = %(id)s;

-- name: job_state
select state, result, errors from pgqueue.jobs where id = %(id)s;

-- name: claim
select id, queue, task, args, kwargs, attempt, max_attempts, priority,
       extract(epoch from timeout)::float8 as timeout, run_at, cancel_requested_at
  from pgqueue.claim(%(worker_id)s, %(queues)s, %(tasks)s, %(batch)s);

-- name: next_due
select pgqueue.next_due(%(queues)s, %(tasks)s);

-- name: complete
select pgqueue.complete(%(worker_id)s, %(ids)s, %(attempts)s, %(results)s::jsonb[]);

-- name: complete_one
select pgqueue.complete(%(worker_id)s, array[%(id)s::bigint], array[%(attempt)s::integer],
                        array[%(result)s::jsonb]);

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
                         %(tasks)s, %(concurrency)s);

-- name: rescue
select id, state from pgqueue.rescue(make_interval(secs => %(stale_after)s::float8));

-- name: release_unknown
select pgqueue.release_unknown(%(worker_id)s, %(known)s);

-- name: worker_delete
delete from pgqueue.workers where id = %(worker_id)s;

-- name: cancel
select pgqueue.cancel(%(id)s);

-- name: retry
select pgqueue.retry(%(id)s);

-- name: prune
select pgqueue.prune(make_interval(secs => %(older_than)s::float8), %(states)s);

-- name: queue_stats
select s.queue, s.pending, s.ready, s.waiting, s.running, s.completed, s.discarded,
       s.cancelled, s.oldest_ready_seconds, s.paused,
       (select count(*) from pgqueue.jobs j
         where j.queue = s.queue
           and j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()
           and not exists (
               select 1 from pgqueue.workers w
                where w.heartbeat_at > now() - make_interval(secs => %(stale_after)s::float8)
                  and (w.queues is null or j.queue = any(w.queues))
                  and j.task = any(w.tasks))) as no_worker
  from pgqueue.queue_stats s
 order by s.queue;

-- name: queue_pause
insert into pgqueue.queues (name, paused) values (%(name)s, %(paused)s)
on conflict (name) do update set paused = excluded.paused, updated_at = now();

-- name: jobs_list
select id, queue, task, state, attempt, max_attempts, priority, run_at, created_at,
       finished_at
  from pgqueue.jobs
 where (%(state)s::text is null or state = %(state)s)
   and (%(queue)s::text is null or queue = %(queue)s)
   and (%(task)s::text is null or task = %(task)s)
 order by id desc
 limit %(limit)s;

-- name: workers_list
select id, name, hostname, pid, queues, concurrency, started_at,
       extract(epoch from now() - heartbeat_at)::float8 as heartbeat_age,
       (select count(*) from pgqueue.jobs j where j.worker_id = w.id and j.state = 'running')
           as running
  from pgqueue.workers w
 order by started_at;
