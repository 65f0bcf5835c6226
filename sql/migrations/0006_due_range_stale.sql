-- pgqueue migration 0006: a job due between a claim and the next_due that follows it
-- is claimed at once; run_at is always a time every client can read; each worker is
-- judged dead by its own stale_after.
--
-- next_due: a worker that claims fewer jobs than it asked for asks next_due when to
-- wake. A scheduled job that became due between the two statements was neither
-- claimed (not due yet for the claim) nor reported (no longer in the future for
-- next_due), and waited for the next poll. next_due now also reports jobs that became
-- due within the last 2 seconds and are still waiting, as a negative number of
-- seconds: the worker claims again at once.
--
-- run_at: 'infinity', '-infinity' and times outside what clients can represent made
-- every claim or every next_due fail ("cannot subtract infinite timestamps") or left
-- a claimed row that no Python worker could read. pgqueue.enqueue refuses them with a
-- clear error, and a constraint keeps every other path (direct inserts, workflow
-- delays) inside the same range: 0001-01-02 to 9999-12-31 UTC, which stays within
-- years 1 to 9999 in every time zone. Rows already outside it are moved to its edge
-- (a job meant to run first still runs first; one meant never to run still waits).
--
-- stale_after: rescue judged every worker by the rescuer's stale_after, so a worker
-- with a short one rescued the running jobs of a live peer with a longer one. Each
-- worker now records its own in pgqueue.workers, and rescue and the queue statistics
-- use the owner's value (the caller's for rows of workers that record none).
--
-- attempt: a row inserted directly with a negative attempt (or one at the integer's
-- limit) failed the whole claim statement that took it, so no worker could claim
-- anything in any queue. A constraint keeps attempt at 0 or more and below the limit.
--
-- release_unknown: after a lost claim reply a worker hands back the running jobs it
-- owns but does not know. It matched them by id only, so a job it still tracked from an
-- older attempt (rescued by a peer while its thread ran on, then claimed again in the
-- lost reply) was kept, and stayed running under a live worker that never started it.
-- It now matches (id, attempt).
--
-- claim: a claim from positions joined the ids that pgqueue.claim_candidates returned
-- to pgqueue.jobs; the planner, taking the function's default estimate of 1000 rows,
-- hashed them and read the whole table on every claim. Draining 20,000 jobs ran at
-- 2,800 jobs/s instead of 12,000, and behind an old snapshot, where the table only
-- grows, claims slowed down with it. The ids are now looked up by primary key.

------------------------------------------------------------------------------
-- next_due: also the jobs that became due a moment ago
------------------------------------------------------------------------------

create or replace function pgqueue.next_due(queues text[], tasks text[])
returns double precision
language sql stable set search_path = pg_catalog, pgqueue as $$
    select least(
        -- the next due time; negative for a job that became due in the last 2 s
        (select extract(epoch from min(j.run_at) - now())::double precision
           from pgqueue.jobs j
          where j.state in ('scheduled', 'retryable')
            and j.run_at > now() - interval '2 seconds'
            and (next_due.queues is null or j.queue = any(next_due.queues))
            and (next_due.tasks is null or j.task = any(next_due.tasks))
            and not exists (select 1 from pgqueue.queues q
                             where q.name = j.queue and q.paused)),
        -- a job due for 2 to 60 s that still waits: another transaction held its row
        -- while the claim passed it; look again in a second
        (select 1.0::double precision
          where exists (select 1 from pgqueue.jobs j
                         where j.state in ('scheduled', 'retryable')
                           and j.run_at > now() - interval '60 seconds'
                           and j.run_at <= now() - interval '2 seconds'
                           and (next_due.queues is null or j.queue = any(next_due.queues))
                           and (next_due.tasks is null or j.task = any(next_due.tasks))
                           and not exists (select 1 from pgqueue.queues q
                                            where q.name = j.queue and q.paused))))
$$;
comment on function pgqueue.next_due is 'Seconds until the earliest scheduled or retryable job becomes due; negative for one that became due within the last 2 s and still waits (claim again now); at most 1 while one due for 2 to 60 s still waits (its row was held by another transaction); null if none';

------------------------------------------------------------------------------
-- run_at: finite, and readable by every client
------------------------------------------------------------------------------

update pgqueue.jobs
   set run_at = greatest(least(run_at, '9999-12-30 23:59:59+00'::timestamptz),
                         '0001-01-02 00:00:00+00'::timestamptz)
 where not (run_at >= '0001-01-02 00:00:00+00' and run_at < '9999-12-31 00:00:00+00');

alter table pgqueue.jobs add constraint jobs_run_at_in_range
    check (run_at >= '0001-01-02 00:00:00+00' and run_at < '9999-12-31 00:00:00+00');

create or replace function pgqueue.enqueue(
    task text,
    args jsonb default '[]',
    kwargs jsonb default '{}',
    queue text default 'default',
    priority integer default 0,
    run_at timestamptz default null,
    max_attempts integer default null,
    unique_key text default null
) returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_id bigint;
    v_run_at timestamptz := coalesce(enqueue.run_at, now());
begin
    if enqueue.task is null or enqueue.task = '' or length(enqueue.task) > 512 then
        raise exception 'pgqueue.enqueue: task must be a name of 1 to 512 characters, got %', quote_nullable(enqueue.task)
            using errcode = '22023';
    end if;
    if enqueue.queue = '' or length(enqueue.queue) > 128 then
        raise exception 'pgqueue.enqueue: queue must be a name of 1 to 128 characters, got %', quote_literal(enqueue.queue)
            using errcode = '22023';
    end if;
    if not (v_run_at >= '0001-01-02 00:00:00+00' and v_run_at < '9999-12-31 00:00:00+00') then
        raise exception 'pgqueue.enqueue: run_at must be a finite time between 0001-01-02 and 9999-12-31 UTC, got %', v_run_at
            using errcode = '22023',
                  hint = 'pass null (or omit run_at) to run the job now';
    end if;
    if jsonb_typeof(coalesce(enqueue.args, '[]')) <> 'array'
       or jsonb_typeof(coalesce(enqueue.kwargs, '{}')) <> 'object' then
        raise exception 'pgqueue.enqueue: args must be a JSON array and kwargs a JSON object'
            using errcode = '22023';
    end if;
    loop
        insert into pgqueue.jobs as j (task, args, kwargs, queue, priority, run_at,
                                       max_attempts, unique_key, state)
        values (enqueue.task, coalesce(enqueue.args, '[]'), coalesce(enqueue.kwargs, '{}'),
                coalesce(enqueue.queue, 'default'), coalesce(enqueue.priority, 0), v_run_at,
                coalesce(enqueue.max_attempts, 20), enqueue.unique_key,
                case when v_run_at > now() then 'scheduled' else 'available' end)
        on conflict (unique_key) where unique_key is not null
            and state in ('pending', 'scheduled', 'available', 'running', 'retryable')
        do nothing
        returning j.id into v_id;
        if v_id is not null then
            return v_id;
        end if;
        -- An unfinished job holds the key: hand back its id, never touch it.
        select j.id into v_id from pgqueue.jobs j
         where j.unique_key = enqueue.unique_key
           and j.state in ('pending', 'scheduled', 'available', 'running', 'retryable');
        if v_id is not null then
            return v_id;
        end if;
        -- It finished between the two statements: try the insert again.
    end loop;
end $$;
comment on function pgqueue.enqueue is 'Enqueue one job in the caller''s transaction; returns its id (the existing id for a live unique_key)';

------------------------------------------------------------------------------
-- each worker's own stale_after
------------------------------------------------------------------------------

alter table pgqueue.workers add column stale_after interval;
comment on column pgqueue.workers.stale_after is 'Heartbeat silence after which this worker counts as dead (its own setting); null: the judging caller''s';

drop function pgqueue.heartbeat(uuid, text, text, integer, text[], text[], integer);

create function pgqueue.heartbeat(worker_id uuid, name text, hostname text, pid integer,
                                  queues text[], tasks text[], concurrency integer,
                                  stale_after interval default null)
returns setof bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
begin
    insert into pgqueue.workers as w (id, name, hostname, pid, queues, tasks, concurrency,
                                      stale_after)
    values (heartbeat.worker_id, heartbeat.name, heartbeat.hostname, heartbeat.pid,
            heartbeat.queues, heartbeat.tasks, heartbeat.concurrency, heartbeat.stale_after)
    on conflict (id) do update set heartbeat_at = now();
    -- Running jobs of this worker that were asked to cancel.
    return query
        select j.id from pgqueue.jobs j
         where j.worker_id = heartbeat.worker_id
           and j.state = 'running'
           and j.cancel_requested_at is not null;
end $$;
comment on function pgqueue.heartbeat is 'Register or refresh a worker (stale_after: its own dead-after setting); returns its running jobs that were asked to cancel';

create or replace function pgqueue.rescue(stale_after interval)
returns table (id bigint, state text)
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    r record;
    v_queues text[] := '{}';
begin
    -- A running job is orphaned when its owner has not heartbeated within its own
    -- stale_after (the caller's when it recorded none), or its owner row is gone.
    for r in
        with orphans as (
            select j.id from pgqueue.jobs j
             where j.state = 'running'
               and not exists (select 1 from pgqueue.workers w
                                where w.id = j.worker_id
                                  and w.heartbeat_at > now() - coalesce(w.stale_after,
                                                                        rescue.stale_after))
               for update skip locked
        )
        update pgqueue.jobs j
           set state = case when j.cancel_requested_at is not null then 'cancelled'
                            when j.attempt >= j.max_attempts then 'discarded'
                            else 'available' end,
               -- keeps its place in line: a rescued job is not sent behind the backlog
               run_at = least(j.run_at, now()),
               finished_at = case when j.cancel_requested_at is not null
                                   or j.attempt >= j.max_attempts then now() end,
               errors = j.errors || jsonb_build_array(jsonb_build_object(
                   'at', now(), 'attempt', j.attempt, 'worker', j.worker_id,
                   'type', 'pgqueue.WorkerLost',
                   'message', 'the worker running this attempt stopped heartbeating; the job was rescued',
                   'traceback', null))
          from orphans o
         where j.id = o.id
        returning j.id, j.state, j.queue
    loop
        id := r.id;
        state := r.state;
        return next;
        if r.state = 'available' and not (r.queue = any(v_queues)) then
            v_queues := v_queues || r.queue;
        end if;
    end loop;
    perform pg_notify('pgqueue_jobs', x) from unnest(v_queues) x;
    delete from pgqueue.workers w
     where w.heartbeat_at < now() - coalesce(w.stale_after, rescue.stale_after) * 10;
end $$;
comment on function pgqueue.rescue is 'Requeue (or discard, by attempts) running jobs whose worker is dead (silent for longer than its own stale_after, else the given one) or gone; any live worker may call it';

------------------------------------------------------------------------------
-- attempt: never a value the claim's attempt + 1 cannot take
------------------------------------------------------------------------------

update pgqueue.jobs set attempt = 0 where attempt < 0;
update pgqueue.jobs set attempt = 2147483646 where attempt = 2147483647;

alter table pgqueue.jobs add constraint jobs_attempt_in_range
    check (attempt >= 0 and attempt < 2147483647);

------------------------------------------------------------------------------
-- release_unknown: by (id, attempt)
------------------------------------------------------------------------------

drop function pgqueue.release_unknown(uuid, bigint[]);

create function pgqueue.release_unknown(worker_id uuid, known bigint[],
                                        known_attempts integer[] default null)
returns setof bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    -- After a lost claim connection: jobs this worker owns but never received. Never
    -- started, so the attempt does not count; a job asked to cancel meanwhile is.
    -- known_attempts (parallel to known) names the attempt the worker runs; without it
    -- a known id matches any attempt.
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
       and not exists (
           select 1 from unnest(release_unknown.known, release_unknown.known_attempts)
                         as k(id, attempt)
            where k.id = j.id and (k.attempt is null or k.attempt = j.attempt))
    returning j.id, j.queue, j.state
)
select b.id from back b
 where (select count(pg_notify('pgqueue_jobs', q.queue))
          from (select distinct queue from back where state = 'available') q) >= 0
   and (select count(pg_notify('pgqueue_done', c.id::text))
          from back c where c.state = 'cancelled') >= 0
$$;
comment on function pgqueue.release_unknown is 'Hand back running jobs owned by a worker that never received them (a claim whose reply was lost): those not in known (with the attempt in known_attempts, when given); a job asked to cancel becomes cancelled';

------------------------------------------------------------------------------
-- claim: the candidates' ids looked up by primary key
------------------------------------------------------------------------------

create or replace function pgqueue.claim(worker_id uuid, queues text[], tasks text[], batch integer,
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
        -- The ids as an array, looked up by primary key: joined to the function's
        -- result instead, the planner took its default estimate of 1000 rows and read
        -- the whole table for every claim.
        return query
        update pgqueue.jobs j
           set state = 'running',
               attempt = j.attempt + 1,
               started_at = now(),
               worker_id = claim.worker_id,
               cancel_requested_at = null
         where j.id = any(array(
                   select c.id
                     from pgqueue.claim_candidates(v_queues[1], claim.tasks, claim.batch,
                                                   v_levels, v_run_ats, v_ids) c))
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
     where j.id = any(array(select c.id from candidates c))
    returning j.*;
end $$;
comment on function pgqueue.claim is 'Claim up to batch due jobs (priority desc, run_at, id), marking them running with a new attempt token, committed by the caller''s statement; optional positions (parallel arrays: queue, priority, run_at, id of the first job last claimed at that level) let the read skip what earlier claims passed';
