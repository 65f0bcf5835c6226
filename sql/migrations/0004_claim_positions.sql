-- pgqueue migration 0004: claiming stays fast while a long transaction pins vacuum.
--
-- Every claimed job leaves one entry in jobs_claim_idx that points at the row version
-- the claim replaced. Vacuum removes such entries only once no snapshot can still see
-- that version; while one old snapshot stays open (a REPEATABLE READ report, a session
-- idle in transaction), none can be removed, and a claim that reads its queue from the
-- start of the index steps over one entry per job claimed since that snapshot was
-- taken: claiming slows down in step with the churn (case B23).
--
-- Claims now start where the claimable jobs are. A worker remembers, per queue and
-- priority level, the first job its last claim took there (its position), and passes
-- those positions back. pgqueue.claim_candidates reads each known level from its
-- position -- at most one second further back, so jobs committed up to a second after
-- their run_at are not skipped -- and every other level from its start, always in
-- strict claim order (priority desc, run_at, id) across levels. A job can land behind a
-- position: a job handed back or rescued keeps its place in line (its old run_at), an
-- insert can carry an explicit past run_at or come from a transaction open for more
-- than a second. Those send a notification on pgqueue_requeued (payload: queue name)
-- and workers forget their positions in that queue. The rest (a transaction that
-- inserts, then stays open over a second before it commits; rows another session held
-- locked while a claim passed them) is caught by the position-free claim each worker
-- runs at least once a second while it holds positions.
--
-- The other statements a worker runs all the time stop reading dead entries too:
-- next_due reads the earliest future run_at from a small index of scheduled and
-- retryable jobs, complete() and fail() look running jobs up by primary key, and the
-- heartbeat reads cancel requests from an index that holds only those.

------------------------------------------------------------------------------
-- candidates of one queue, in claim order, locked
------------------------------------------------------------------------------

create function pgqueue.claim_candidates(queue text, tasks text[], batch integer,
                                         levels smallint[] default null,
                                         level_run_ats timestamptz[] default null,
                                         level_ids bigint[] default null)
returns table (id bigint, priority smallint, run_at timestamptz)
language plpgsql volatile set search_path = pg_catalog, pgqueue
    set enable_seqscan = off as $$
#variable_conflict use_column
declare
    v_left integer := claim_candidates.batch;
    v_above integer := 32768;           -- upper bound (exclusive) of the next range
    v_n integer;
    v_floor timestamptz := now() - interval '1 second';
    v_run_at timestamptz;
    v_id bigint;
    k integer;
begin
    if v_left <= 0
       or exists (select 1 from pgqueue.queues q
                   where q.name = claim_candidates.queue and q.paused) then
        return;
    end if;
    -- Known levels, highest first: the levels above each from their start (bounds on
    -- priority, so the index range starts there), then the level from its position.
    for k in 1 .. coalesce(cardinality(claim_candidates.levels), 0) loop
        return query
        select j.id, j.priority, j.run_at
          from pgqueue.jobs j
         where j.queue = claim_candidates.queue
           and j.state in ('available', 'scheduled', 'retryable')
           and j.priority < v_above
           and j.priority > claim_candidates.levels[k]
           and j.run_at <= now()
           and (claim_candidates.tasks is null or j.task = any(claim_candidates.tasks))
         order by j.priority desc, j.run_at, j.id
         limit v_left
           for update skip locked;
        get diagnostics v_n = row_count;
        v_left := v_left - v_n;
        if v_left <= 0 then
            return;
        end if;
        if claim_candidates.level_run_ats[k] < v_floor then
            v_run_at := claim_candidates.level_run_ats[k];
            v_id := claim_candidates.level_ids[k];
        else
            v_run_at := v_floor;
            v_id := 0;
        end if;
        return query
        select j.id, j.priority, j.run_at
          from pgqueue.jobs j
         where j.queue = claim_candidates.queue
           and j.state in ('available', 'scheduled', 'retryable')
           and j.priority = claim_candidates.levels[k]
           and (j.run_at, j.id) >= (v_run_at, v_id)
           and j.run_at <= now()
           and (claim_candidates.tasks is null or j.task = any(claim_candidates.tasks))
         order by j.run_at, j.id
         limit v_left
           for update skip locked;
        get diagnostics v_n = row_count;
        v_left := v_left - v_n;
        if v_left <= 0 then
            return;
        end if;
        v_above := claim_candidates.levels[k];
    end loop;
    -- Below the lowest known level (every level, without positions).
    return query
    select j.id, j.priority, j.run_at
      from pgqueue.jobs j
     where j.queue = claim_candidates.queue
       and j.state in ('available', 'scheduled', 'retryable')
       and j.priority < v_above
       and j.run_at <= now()
       and (claim_candidates.tasks is null or j.task = any(claim_candidates.tasks))
     order by j.priority desc, j.run_at, j.id
     limit v_left
       for update skip locked;
end $$;
comment on function pgqueue.claim_candidates is 'Lock up to batch claimable, due jobs of one queue in claim order (priority desc, run_at, id), reading each level in levels (distinct, descending) from its position (level_run_ats, level_ids; at most 1 s back) and every other level from its start; returns nothing for a paused queue';

------------------------------------------------------------------------------
-- claim, with positions
------------------------------------------------------------------------------

drop function pgqueue.claim(uuid, text[], text[], integer);

create function pgqueue.claim(worker_id uuid, queues text[], tasks text[], batch integer,
                              position_queues text[] default null,
                              position_priorities smallint[] default null,
                              position_run_ats timestamptz[] default null,
                              position_ids bigint[] default null)
returns setof pgqueue.jobs
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_queues text[] := claim.queues;
    v_levels smallint[];
    v_run_ats timestamptz[];
    v_ids bigint[];
begin
    if v_queues is null then
        -- Every queue that has claimable rows: one probe of the claim index per queue.
        with recursive qs(name) as (
            (select j.queue from pgqueue.jobs j
              where j.state in ('available', 'scheduled', 'retryable')
              order by j.queue limit 1)
            union all
            select (select j.queue from pgqueue.jobs j
                     where j.state in ('available', 'scheduled', 'retryable')
                       and j.queue > qs.name
                     order by j.queue limit 1)
              from qs where qs.name is not null
        )
        select array_agg(qs.name) into v_queues from qs where qs.name is not null;
        if v_queues is null then
            return;
        end if;
    end if;
    if cardinality(v_queues) = 1 then
        if claim.position_queues is not null then
            select array_agg(p.priority order by p.priority desc),
                   array_agg(p.run_at order by p.priority desc),
                   array_agg(p.id order by p.priority desc)
              into v_levels, v_run_ats, v_ids
              from (select distinct on (p.priority) p.priority, p.run_at, p.id
                      from unnest(claim.position_queues, claim.position_priorities,
                                  claim.position_run_ats, claim.position_ids)
                           as p(queue, priority, run_at, id)
                     where p.queue = v_queues[1] and p.priority is not null
                       and p.run_at is not null and p.id is not null
                     order by p.priority, p.run_at, p.id) p;
        end if;
        if v_levels is null then
            -- No position: one read of the claim index in claim order.
            return query
            with candidates as (
                select j.id
                  from pgqueue.jobs j
                 where j.queue = v_queues[1]
                   and j.state in ('available', 'scheduled', 'retryable')
                   and j.run_at <= now()
                   and (claim.tasks is null or j.task = any(claim.tasks))
                   and not exists (select 1 from pgqueue.queues q
                                    where q.name = v_queues[1] and q.paused)
                 order by j.priority desc, j.run_at, j.id
                 limit claim.batch
                   for update skip locked
            )
            update pgqueue.jobs j
               set state = 'running',
                   attempt = j.attempt + 1,
                   started_at = now(),
                   worker_id = claim.worker_id,
                   cancel_requested_at = null
              from candidates c
             where j.id = c.id
            returning j.*;
            return;
        end if;
        return query
        with candidates as (
            select c.id
              from pgqueue.claim_candidates(v_queues[1], claim.tasks, claim.batch,
                                            v_levels, v_run_ats, v_ids) c
        )
        update pgqueue.jobs j
           set state = 'running',
               attempt = j.attempt + 1,
               started_at = now(),
               worker_id = claim.worker_id,
               cancel_requested_at = null
          from candidates c
         where j.id = c.id
        returning j.*;
        return;
    end if;
    -- Several queues: the best `batch` of each, then the best `batch` of those. Rows
    -- locked but not taken are released when the claiming statement's transaction ends.
    return query
    with positions as (
        select p.queue, p.priority, p.run_at, p.id
          from unnest(claim.position_queues, claim.position_priorities,
                      claim.position_run_ats, claim.position_ids) as p(queue, priority, run_at, id)
         where p.queue is not null and p.priority is not null
           and p.run_at is not null and p.id is not null
    ),
    candidates as (
        select c.id
          from unnest(v_queues) as qn(name)
         cross join lateral (
            select array_agg(p.priority order by p.priority desc) as levels,
                   array_agg(p.run_at order by p.priority desc) as run_ats,
                   array_agg(p.id order by p.priority desc) as ids
              from (select distinct on (p.priority) p.priority, p.run_at, p.id
                      from positions p
                     where p.queue = qn.name
                     order by p.priority, p.run_at, p.id) p
         ) lv
         cross join lateral pgqueue.claim_candidates(qn.name, claim.tasks, claim.batch,
                                                     lv.levels, lv.run_ats, lv.ids) c
         order by c.priority desc, c.run_at, c.id
         limit claim.batch
    )
    update pgqueue.jobs j
       set state = 'running',
           attempt = j.attempt + 1,
           started_at = now(),
           worker_id = claim.worker_id,
           cancel_requested_at = null
      from candidates c
     where j.id = c.id
    returning j.*;
end $$;
comment on function pgqueue.claim is 'Claim up to batch due jobs (priority desc, run_at, id), marking them running with a new attempt token, committed by the caller''s statement; optional positions (parallel arrays: queue, priority, run_at, id of the first job last claimed at that level) let the read skip what earlier claims passed';

------------------------------------------------------------------------------
-- complete and fail: the row(s) by primary key
------------------------------------------------------------------------------

-- Given `state = 'running'`, the planner may read all of jobs_running_idx (it is small
-- by its statistics) and filter the ids, instead of looking each id up: while an old
-- snapshot holds vacuum back, that index also holds one entry per attempt finished
-- since then, and every completion reads them all. Compared with a subquery's value,
-- the state proves no partial index's predicate, so the rows are found by primary key.
-- And `enable_seqscan = off`: a plan cached while the table was small (a new
-- database, before autovacuum first analyzes it) must not stay a sequential scan as the
-- table grows; these functions (and claim_candidates) only ever want their indexes.

create or replace function pgqueue.complete(worker_id uuid, ids bigint[], attempts integer[], results jsonb[])
returns setof bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue
    set enable_seqscan = off as $$
#variable_conflict use_column
declare
    v_done bigint[];
    i integer;
begin
    with done as (
        update pgqueue.jobs j
           set state = 'completed', result = r.result, finished_at = now()
          from unnest(complete.ids, complete.attempts, complete.results) as r(id, attempt, result)
         where j.id = r.id
           and j.state = (select 'running'::text)   -- see above: rows by primary key
           and j.attempt = r.attempt
           and j.worker_id = complete.worker_id
        returning j.id
    )
    select array_agg(d.id) into v_done from done d;
    -- Wake result waiters: ids in payloads well under the 8000-byte limit.
    i := 1;
    while i <= coalesce(cardinality(v_done), 0) loop
        perform pg_notify('pgqueue_done', array_to_string(v_done[i:i + 399], ','));
        i := i + 400;
    end loop;
    return query select unnest(v_done);
end $$;
comment on function pgqueue.complete is 'Record completions fenced by (id, running, attempt, worker); returns the ids that were still owned';

create or replace function pgqueue.fail(worker_id uuid, job_id bigint, job_attempt integer, error jsonb,
                             retry_delay interval default null, discard boolean default false,
                             backoff_base double precision default 1.0,
                             backoff_cap double precision default 3600.0)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue
    set enable_seqscan = off as $$
#variable_conflict use_column
declare
    v_state text;
begin
    update pgqueue.jobs j
       set state = case
               when j.cancel_requested_at is not null then 'cancelled'
               when fail.discard or j.attempt >= j.max_attempts then 'discarded'
               else 'retryable' end,
           run_at = case
               when j.cancel_requested_at is not null or fail.discard or j.attempt >= j.max_attempts
                   then j.run_at
               when fail.retry_delay is not null then now() + greatest(fail.retry_delay, interval '0')
               else now() + pgqueue.backoff(j.attempt, fail.backoff_base, fail.backoff_cap)
               end,
           errors = j.errors || jsonb_build_array(coalesce(fail.error, '{}'::jsonb)
                       || jsonb_build_object('at', now(), 'attempt', j.attempt,
                                             'worker', fail.worker_id)),
           finished_at = case
               when j.cancel_requested_at is not null or fail.discard or j.attempt >= j.max_attempts
                   then now() end
     where j.id = fail.job_id
       and j.state = (select 'running'::text)   -- see above: the row by primary key
       and j.attempt = fail.job_attempt
       and j.worker_id = fail.worker_id
    returning j.state into v_state;
    if v_state in ('discarded', 'cancelled') then
        perform pg_notify('pgqueue_done', fail.job_id::text);
    end if;
    return v_state;  -- null: the attempt token was stale, nothing changed
end $$;
comment on function pgqueue.fail is 'Record a failed attempt fenced by the attempt token: retryable with backoff (computed here, database clock), discarded when attempts are exhausted, cancelled if cancellation was requested. Returns the new state or null if the token was stale';

------------------------------------------------------------------------------
-- cancel requests of running jobs, read by every heartbeat
------------------------------------------------------------------------------

-- Rows enter only on a cancel request, so this stays tiny whatever the churn; the
-- heartbeat no longer reads all of the worker's entries in jobs_running_idx.
create index jobs_cancel_requested_idx on pgqueue.jobs (worker_id)
    where state = 'running' and cancel_requested_at is not null;

------------------------------------------------------------------------------
-- next_due: the earliest future run_at, from its own small index
------------------------------------------------------------------------------

create index jobs_due_later_idx on pgqueue.jobs (run_at)
    where state in ('scheduled', 'retryable');

create or replace function pgqueue.next_due(queues text[], tasks text[])
returns double precision
language sql stable set search_path = pg_catalog, pgqueue as $$
    select extract(epoch from min(j.run_at) - now())::double precision
      from pgqueue.jobs j
     where j.state in ('scheduled', 'retryable')
       and j.run_at > now()
       and (next_due.queues is null or j.queue = any(next_due.queues))
       and (next_due.tasks is null or j.task = any(next_due.tasks))
       and not exists (select 1 from pgqueue.queues q where q.name = j.queue and q.paused)
$$;
comment on function pgqueue.next_due is 'Seconds until the earliest scheduled or retryable job becomes due (null if none is waiting)';

------------------------------------------------------------------------------
-- notifications for jobs placed behind the workers' positions
------------------------------------------------------------------------------

create or replace function pgqueue.notify_inserted() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
declare
    v_floor timestamptz := clock_timestamp() - interval '1 second';
begin
    -- PostgreSQL folds identical notifications of one transaction into one,
    -- so a bulk insert wakes each queue once, at commit.
    perform pg_notify('pgqueue_jobs', q.queue),
            case when q.behind then pg_notify('pgqueue_requeued', q.queue) end
       from (select i.queue, bool_or(i.run_at < v_floor) as behind
               from inserted i
              where i.state <> 'pending'
              group by i.queue) q;
    return null;
end $$;

create function pgqueue.notify_requeued() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
begin
    perform pg_notify('pgqueue_requeued', new.queue);
    return null;
end $$;

-- A running job put back in line (hand-back, rescue, release of a lost claim) keeps
-- its run_at, so it sits behind the positions of the claims that passed it.
create trigger jobs_notify_requeued
    after update on pgqueue.jobs
    for each row
    when (old.state = 'running' and new.state in ('available', 'scheduled', 'retryable')
          and new.run_at < now())
    execute function pgqueue.notify_requeued();
