-- pgqueue migration 0003: views for dashboards, alerts and ad-hoc questions.
--
-- Read-only views over pgqueue.jobs and pgqueue.workers; nothing here changes how
-- jobs run. Every view reads the database clock (now()) at query time.

------------------------------------------------------------------------------
-- pending jobs by queue, for cheap depth gauges (pgqueue.metrics reads every
-- unfinished state through a partial index; claimable and running have theirs)
------------------------------------------------------------------------------

create index jobs_pending_idx on pgqueue.jobs (queue)
    where state = 'pending';

------------------------------------------------------------------------------
-- per queue: a paused queue shows even before it has jobs
------------------------------------------------------------------------------

create or replace view pgqueue.queue_stats as
with per_queue as (
    select j.queue,
           count(*) filter (where j.state = 'pending')                          as pending,
           count(*) filter (where j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()) as ready,
           count(*) filter (where j.state in ('scheduled', 'retryable') and j.run_at > now()) as waiting,
           count(*) filter (where j.state = 'running')                          as running,
           count(*) filter (where j.state = 'completed')                        as completed,
           count(*) filter (where j.state = 'discarded')                        as discarded,
           count(*) filter (where j.state = 'cancelled')                        as cancelled,
           extract(epoch from now() - min(j.run_at) filter (
               where j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()))::double precision
                                                                                as oldest_ready_seconds
      from pgqueue.jobs j
     group by j.queue
)
select coalesce(s.queue, q.name)       as queue,
       coalesce(s.pending, 0)          as pending,
       coalesce(s.ready, 0)            as ready,
       coalesce(s.waiting, 0)          as waiting,
       coalesce(s.running, 0)          as running,
       coalesce(s.completed, 0)        as completed,
       coalesce(s.discarded, 0)        as discarded,
       coalesce(s.cancelled, 0)        as cancelled,
       s.oldest_ready_seconds,
       coalesce(q.paused, false)       as paused
  from per_queue s
  full join pgqueue.queues q on q.name = s.queue;
comment on view pgqueue.queue_stats is 'Per queue (every queue with jobs or a pgqueue.queues row): jobs by state, seconds since the oldest ready job became due, paused flag';

------------------------------------------------------------------------------
-- failures
------------------------------------------------------------------------------

create view pgqueue.failed_jobs as
select j.id,
       j.queue,
       j.task,
       j.state,
       j.attempt,
       j.max_attempts,
       case when j.state = 'retryable' then j.run_at end        as retry_at,
       j.finished_at,
       jsonb_array_length(j.errors)                              as error_count,
       (j.errors -> -1 ->> 'at')::timestamptz                    as failed_at,
       j.errors -> -1 ->> 'type'                                 as error_type,
       j.errors -> -1 ->> 'message'                              as error_message,
       j.errors -> -1 ->> 'traceback'                            as error_traceback,
       j.errors -> -1 ->> 'worker'                               as error_worker,
       j.args,
       j.kwargs
  from pgqueue.jobs j
 where j.state in ('retryable', 'discarded');
comment on view pgqueue.failed_jobs is 'Jobs waiting for a retry (retryable, retry_at set) or given up (discarded), with their last error; every attempt''s error stays in pgqueue.jobs.errors';

------------------------------------------------------------------------------
-- running jobs and who runs them
------------------------------------------------------------------------------

create view pgqueue.running_jobs as
select j.id,
       j.queue,
       j.task,
       j.attempt,
       j.max_attempts,
       j.started_at,
       extract(epoch from now() - j.started_at)::double precision  as running_seconds,
       j.worker_id,
       w.name                                                      as worker_name,
       w.hostname                                                  as worker_hostname,
       w.pid                                                       as worker_pid,
       w.heartbeat_at,
       extract(epoch from now() - w.heartbeat_at)::double precision as heartbeat_age_seconds,
       j.cancel_requested_at
  from pgqueue.jobs j
  left join pgqueue.workers w on w.id = j.worker_id
 where j.state = 'running';
comment on view pgqueue.running_jobs is 'Running jobs with their worker and its heartbeat age in seconds (null worker columns: the worker row is gone, the job awaits rescue)';

------------------------------------------------------------------------------
-- throughput
------------------------------------------------------------------------------

create view pgqueue.throughput as
select date_trunc('minute', j.finished_at)                       as minute,
       j.queue,
       count(*) filter (where j.state = 'completed')             as completed,
       count(*) filter (where j.state = 'discarded')             as discarded,
       count(*) filter (where j.state = 'cancelled')             as cancelled,
       (avg(extract(epoch from j.finished_at - j.started_at))
            filter (where j.state = 'completed'))::double precision as avg_duration_seconds
  from pgqueue.jobs j
 where j.finished_at >= date_trunc('minute', now()) - interval '59 minutes'
 group by 1, 2;
comment on view pgqueue.throughput is 'Jobs finished per minute and queue over the last hour (the current minute included), by final state, with the mean run time of the completed ones; minutes without finished jobs have no row';
