-- pgqueue migration 0005: a cancel request survives a graceful shutdown.
--
-- A job asked to cancel while it runs ends `cancelled` however its attempt ends: by
-- raising (fail), by its worker dying (rescue), and now also when its worker shuts down
-- gracefully before the job finished (hand_back) or never received the job because a
-- claim reply was lost (release_unknown). Before, those two put the job back to
-- `available`, the next claim cleared the request and the job ran again.

create or replace function pgqueue.hand_back(worker_id uuid, ids bigint[], attempts integer[])
returns setof bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    -- Graceful shutdown: the interrupted attempt does not count, unless the job was
    -- asked to cancel, which it is then (finished, the attempt kept).
    with back as (
    update pgqueue.jobs j
       set state = case when j.cancel_requested_at is not null then 'cancelled'
                        else 'available' end,
           run_at = least(j.run_at, now()),   -- keeps its place in line
           attempt = case when j.cancel_requested_at is not null then j.attempt
                          else j.attempt - 1 end,
           finished_at = case when j.cancel_requested_at is not null then now() end,
           worker_id = null,
           errors = j.errors || jsonb_build_array(case
               when j.cancel_requested_at is not null then jsonb_build_object(
                   'at', now(), 'attempt', j.attempt, 'worker', hand_back.worker_id,
                   'type', 'pgqueue.Cancelled', 'interrupted', true,
                   'message', 'cancellation was requested and the worker shut down before the job finished',
                   'traceback', null)
               else jsonb_build_object(
                   'at', now(), 'attempt', j.attempt, 'worker', hand_back.worker_id,
                   'type', 'pgqueue.Interrupted', 'interrupted', true,
                   'message', 'worker shut down before the job finished; the attempt was handed back and does not count',
                   'traceback', null) end)
      from unnest(hand_back.ids, hand_back.attempts) as r(id, attempt)
     where j.id = r.id
       and j.state = 'running'
       and j.attempt = r.attempt
       and j.worker_id = hand_back.worker_id
    returning j.id, j.queue, j.state
)
select b.id from back b
 where (select count(pg_notify('pgqueue_jobs', q.queue))
          from (select distinct queue from back where state = 'available') q) >= 0
   and (select count(pg_notify('pgqueue_done', c.id::text))
          from back c where c.state = 'cancelled') >= 0
$$;
comment on function pgqueue.hand_back is 'Return running jobs to available without counting the attempt (graceful shutdown); a job asked to cancel becomes cancelled';

create or replace function pgqueue.release_unknown(worker_id uuid, known bigint[])
returns setof bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    -- After a lost claim connection: jobs this worker owns but never received. Never
    -- started, so the attempt does not count; a job asked to cancel meanwhile is.
    with back as (
    update pgqueue.jobs j
       set state = case when j.cancel_requested_at is not null then 'cancelled'
                        else 'available' end,
           run_at = least(j.run_at, now()),
           attempt = j.attempt - 1,
           finished_at = case when j.cancel_requested_at is not null then now() end,
           worker_id = null
     where j.worker_id = release_unknown.worker_id
       and j.state = 'running'
       and j.id <> all(release_unknown.known)
    returning j.id, j.queue, j.state
)
select b.id from back b
 where (select count(pg_notify('pgqueue_jobs', q.queue))
          from (select distinct queue from back where state = 'available') q) >= 0
   and (select count(pg_notify('pgqueue_done', c.id::text))
          from back c where c.state = 'cancelled') >= 0
$$;
comment on function pgqueue.release_unknown is 'Hand back running jobs owned by a worker that never received them (a claim whose reply was lost); a job asked to cancel becomes cancelled';
