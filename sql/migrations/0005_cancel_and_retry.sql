-- pgqueue migration 0005: a cancel request survives a graceful shutdown; retry names a
-- unique_key conflict.
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

-- A retried job becomes unfinished again, so it needs its unique_key back. When another
-- unfinished job holds that key, retry used to fail on the unique index with a bare
-- duplicate-key error (and a batch retry lost the whole batch to one such job). Now
-- pgqueue.retry raises a clear error naming the holder, and pgqueue.retry_discarded
-- retries a batch, skipping (and reporting) every job whose key is held.

create or replace function pgqueue.retry(job_id bigint)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_state text;
    v_key text;
    v_holder bigint;
begin
    update pgqueue.jobs j
       set state = 'available', run_at = now(), finished_at = null,
           max_attempts = greatest(j.max_attempts, j.attempt + 1),
           cancel_requested_at = null
     where j.id = retry.job_id
       and j.state in ('discarded', 'cancelled', 'retryable', 'scheduled')
    returning j.state into v_state;
    if v_state is not null then
        perform pg_notify('pgqueue_jobs', (select j.queue from pgqueue.jobs j where j.id = retry.job_id));
        return v_state;
    end if;
    select j.state into v_state from pgqueue.jobs j where j.id = retry.job_id;
    return v_state;
exception when unique_violation then
    -- only a finished job (discarded, cancelled) can lack its key: another job took it
    select j.unique_key into v_key from pgqueue.jobs j where j.id = retry.job_id;
    select o.id into v_holder from pgqueue.jobs o
     where o.unique_key = v_key and o.id <> retry.job_id
       and o.state in ('pending', 'scheduled', 'available', 'running', 'retryable');
    raise exception 'job % cannot be retried: its unique_key % is held by unfinished job %',
            retry.job_id, quote_literal(v_key), coalesce(v_holder::text, '(just committed)')
        using errcode = 'unique_violation',
              detail = format('at most one unfinished job may hold a unique_key; job %s holds %L',
                              coalesce(v_holder::text, '?'), v_key),
              hint = 'wait for that job to finish or cancel it, then retry; or enqueue a new job';
end $$;
comment on function pgqueue.retry is 'Make a discarded, cancelled, retryable or scheduled job available now (one more attempt if needed). Returns the state after the call; raises unique_violation (naming the holder) when another unfinished job holds its unique_key';

create function pgqueue.retry_discarded(queue text default null, task text default null)
returns table (id bigint, state text, held_by bigint)
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    r record;
    v_holder bigint;
    v_queues text[] := '{}';
begin
    -- In id order, so of several discarded jobs sharing a free key the oldest gets it.
    -- The check sees this call's own retries; a key taken by a concurrent enqueue after
    -- the check makes the update fail with unique_violation, and nothing is retried.
    for r in
        select j.id, j.queue, j.unique_key from pgqueue.jobs j
         where j.state = 'discarded'
           and (retry_discarded.queue is null or j.queue = retry_discarded.queue)
           and (retry_discarded.task is null or j.task = retry_discarded.task)
         order by j.id
           for update
    loop
        v_holder := null;
        if r.unique_key is not null then
            select o.id into v_holder from pgqueue.jobs o
             where o.unique_key = r.unique_key
               and o.state in ('pending', 'scheduled', 'available', 'running', 'retryable');
        end if;
        id := r.id;
        held_by := v_holder;
        if v_holder is null then
            update pgqueue.jobs j
               set state = 'available', run_at = now(), finished_at = null,
                   max_attempts = greatest(j.max_attempts, j.attempt + 1),
                   cancel_requested_at = null
             where j.id = r.id;
            state := 'available';
            if not (r.queue = any(v_queues)) then
                v_queues := v_queues || r.queue;
            end if;
        else
            state := 'discarded';
        end if;
        return next;
    end loop;
    perform pg_notify('pgqueue_jobs', x) from unnest(v_queues) x;
end $$;
comment on function pgqueue.retry_discarded is 'Retry every discarded job (of one queue and/or task when given), in id order; a job whose unique_key another unfinished job holds is skipped: returned with state discarded and held_by set';
