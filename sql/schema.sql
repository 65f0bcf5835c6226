-- pgqueue canonical schema: what every migration in sql/migrations/ builds, in one file.
-- Keep it equal to them: tests/test_migrations.py compares a database built from each.

create schema if not exists pgqueue;

comment on schema pgqueue is 'pgqueue: a job queue that lives in PostgreSQL';

create table pgqueue.migrations (
    version     integer primary key,
    name        text not null,
    applied_at  timestamptz not null default now()
);
comment on table pgqueue.migrations is 'One row per applied migration of sql/migrations/';

------------------------------------------------------------------------------
-- jobs
------------------------------------------------------------------------------

create table pgqueue.jobs (
    id                  bigint generated always as identity primary key,
    queue               text not null default 'default',
    task                text not null,
    args                jsonb not null default '[]',
    kwargs              jsonb not null default '{}',
    state               text not null default 'available',
    priority            smallint not null default 0,
    run_at              timestamptz not null default now(),
    attempt             integer not null default 0,
    max_attempts        integer not null default 20,
    timeout             interval,
    unique_key          text,
    result              jsonb,
    errors              jsonb not null default '[]',
    created_at          timestamptz not null default now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    worker_id           uuid,
    cancel_requested_at timestamptz,

    constraint jobs_state_valid check (state in (
        'pending', 'scheduled', 'available', 'running',
        'retryable', 'completed', 'discarded', 'cancelled')),
    -- CHECK expressions run on every insert and every state change (twice per job
    -- at least), and each one measurably slows both: the table keeps those that guard
    -- the state machine. Argument shapes, names and ranges are checked by
    -- pgqueue.enqueue() and the producers' validation; priority's range is its type.
    constraint jobs_max_attempts_positive check (max_attempts >= 1),
    constraint jobs_finished_iff_terminal check (
        (state in ('completed', 'discarded', 'cancelled')) = (finished_at is not null)),
    constraint jobs_running_has_owner check (
        state <> 'running' or (worker_id is not null and started_at is not null and attempt >= 1))
) with (
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

comment on table pgqueue.jobs is 'One row per job. State machine: see README "States".';
comment on column pgqueue.jobs.id is 'Job id, assigned at enqueue';
comment on column pgqueue.jobs.queue is 'Queue name; workers claim from the queues they are given';
comment on column pgqueue.jobs.task is 'Registered task name (module.qualname by default); workers only claim tasks they know';
comment on column pgqueue.jobs.args is 'Positional arguments, a JSON array in pgqueue''s tagged JSON (README "Argument format")';
comment on column pgqueue.jobs.kwargs is 'Keyword arguments, a JSON object in pgqueue''s tagged JSON';
comment on column pgqueue.jobs.state is 'pending | scheduled | available | running | retryable | completed | discarded | cancelled';
comment on column pgqueue.jobs.priority is 'Higher runs first; ties by run_at then id';
comment on column pgqueue.jobs.run_at is 'Earliest time the job may start (database clock); for retryable jobs the end of the backoff';
comment on column pgqueue.jobs.attempt is 'Number of the current or last attempt; 0 before the first claim. Together with worker_id it is the attempt token that fences every state change';
comment on column pgqueue.jobs.max_attempts is 'Attempts allowed before the job is discarded';
comment on column pgqueue.jobs.timeout is 'Per-job run time limit; null means the task''s own setting';
comment on column pgqueue.jobs.unique_key is 'At most one unfinished job (pending..running) per key; enqueueing a key again returns the existing job';
comment on column pgqueue.jobs.result is 'Return value of the completed attempt, tagged JSON';
comment on column pgqueue.jobs.errors is 'JSON array, one object per failed or interrupted attempt: at, attempt, worker, type, message, traceback';
comment on column pgqueue.jobs.created_at is 'Enqueue time (database clock)';
comment on column pgqueue.jobs.started_at is 'Start of the current or last attempt';
comment on column pgqueue.jobs.finished_at is 'Time the job reached a terminal state; null until then';
comment on column pgqueue.jobs.worker_id is 'Process instance (pgqueue.workers.id) that runs or last ran the job';
comment on column pgqueue.jobs.cancel_requested_at is 'Set when a running job is asked to cancel; the worker signals the task';

-- The claimable set: small, lean, ordered as the claim reads it.
create index jobs_claim_idx on pgqueue.jobs (queue, priority desc, run_at, id)
    where state in ('available', 'scheduled', 'retryable');
create index jobs_running_idx on pgqueue.jobs (worker_id)
    where state = 'running';
create unique index jobs_unique_key_idx on pgqueue.jobs (unique_key)
    where unique_key is not null
      and state in ('pending', 'scheduled', 'available', 'running', 'retryable');
create index jobs_finished_at_idx on pgqueue.jobs (finished_at)
    where finished_at is not null;

------------------------------------------------------------------------------
-- workers and queues
------------------------------------------------------------------------------

create table pgqueue.workers (
    id            uuid primary key,
    name          text not null,
    hostname      text not null,
    pid           integer not null,
    queues        text[],
    tasks         text[] not null default '{}',
    concurrency   integer not null,
    started_at    timestamptz not null default now(),
    heartbeat_at  timestamptz not null default now(),
    constraint workers_concurrency_positive check (concurrency >= 1)
);
comment on table pgqueue.workers is 'Live worker process instances; id is new at every process start';
comment on column pgqueue.workers.queues is 'Queues the worker claims from; null means every queue';
comment on column pgqueue.workers.heartbeat_at is 'Last heartbeat (database clock); a worker silent for longer than the stale threshold is dead';

create table pgqueue.queues (
    name        text primary key,
    paused      boolean not null default false,
    updated_at  timestamptz not null default now()
);
comment on table pgqueue.queues is 'Per-queue settings; a queue without a row is active';

------------------------------------------------------------------------------
-- notifications: one per queue per statement, small payload (queue name)
------------------------------------------------------------------------------

create function pgqueue.notify_inserted() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
begin
    -- PostgreSQL folds identical notifications of one transaction into one,
    -- so a bulk insert wakes each queue once, at commit.
    perform pg_notify('pgqueue_jobs', q.queue)
       from (select distinct queue from inserted where state <> 'pending') q;
    return null;
end $$;

create trigger jobs_notify_inserted
    after insert on pgqueue.jobs
    referencing new table as inserted
    for each statement execute function pgqueue.notify_inserted();

------------------------------------------------------------------------------
-- the SQL API
------------------------------------------------------------------------------

create function pgqueue.backoff(attempt integer, base double precision default 1.0,
                                cap double precision default 3600.0,
                                jitter double precision default 0.25)
returns interval
language sql volatile parallel safe set search_path = pg_catalog as $$
    -- base * 2^(attempt-1), exponent clamped before exponentiation, capped,
    -- then spread by +-jitter and capped again: never negative, never overflows.
    select make_interval(secs => least(cap, greatest(0.0,
        least(cap, base * power(2.0, least(greatest(attempt, 1) - 1, 60)))
        * (1.0 + jitter * (2.0 * random() - 1.0)))))
$$;
comment on function pgqueue.backoff is 'Retry delay for an attempt number: exponential with jitter, capped (seconds)';

create function pgqueue.enqueue(
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

create function pgqueue.claim(worker_id uuid, queues text[], tasks text[], batch integer)
returns setof pgqueue.jobs
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_queues text[] := claim.queues;
begin
    -- Every read walks jobs_claim_idx in claim order within one queue (queue is an
    -- equality there), so the cost does not grow with the number of claimable rows;
    -- plpgsql keeps the plans between calls.
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
    -- Several queues: the best `batch` of each, then the best `batch` of those. Rows
    -- locked but not taken are released when the claiming statement's transaction ends.
    return query
    with candidates as (
        select c.id
          from unnest(v_queues) as qn(name)
         cross join lateral (
            select j.id, j.priority, j.run_at
              from pgqueue.jobs j
             where j.queue = qn.name
               and j.state in ('available', 'scheduled', 'retryable')
               and j.run_at <= now()
               and (claim.tasks is null or j.task = any(claim.tasks))
               and not exists (select 1 from pgqueue.queues q
                                where q.name = qn.name and q.paused)
             order by j.priority desc, j.run_at, j.id
             limit claim.batch
               for update skip locked
         ) c
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
comment on function pgqueue.claim is 'Claim up to batch due jobs (priority desc, run_at, id), marking them running with a new attempt token, committed by the caller''s statement';

create function pgqueue.next_due(queues text[], tasks text[])
returns double precision
language sql stable set search_path = pg_catalog, pgqueue as $$
    select extract(epoch from min(j.run_at) - now())::double precision
      from pgqueue.jobs j
     where j.state in ('available', 'scheduled', 'retryable')
       and (next_due.queues is null or j.queue = any(next_due.queues))
       and (next_due.tasks is null or j.task = any(next_due.tasks))
       and not exists (select 1 from pgqueue.queues q where q.name = j.queue and q.paused)
$$;
comment on function pgqueue.next_due is 'Seconds until the earliest claimable job is due (negative if overdue, null if none)';

create function pgqueue.complete(worker_id uuid, ids bigint[], attempts integer[], results jsonb[])
returns setof bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
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
           and j.state = 'running'
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

create function pgqueue.fail(worker_id uuid, job_id bigint, job_attempt integer, error jsonb,
                             retry_delay interval default null, discard boolean default false,
                             backoff_base double precision default 1.0,
                             backoff_cap double precision default 3600.0)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
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
       and j.state = 'running'
       and j.attempt = fail.job_attempt
       and j.worker_id = fail.worker_id
    returning j.state into v_state;
    if v_state in ('discarded', 'cancelled') then
        perform pg_notify('pgqueue_done', fail.job_id::text);
    end if;
    return v_state;  -- null: the attempt token was stale, nothing changed
end $$;
comment on function pgqueue.fail is 'Record a failed attempt fenced by the attempt token: retryable with backoff (computed here, database clock), discarded when attempts are exhausted, cancelled if cancellation was requested. Returns the new state or null if the token was stale';

create function pgqueue.hand_back(worker_id uuid, ids bigint[], attempts integer[])
returns setof bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    -- Graceful shutdown: the interrupted attempt does not count.
    with back as (
    update pgqueue.jobs j
       set state = 'available',
           run_at = least(j.run_at, now()),   -- keeps its place in line
           attempt = j.attempt - 1,
           worker_id = null,
           errors = j.errors || jsonb_build_array(jsonb_build_object(
               'at', now(), 'attempt', j.attempt, 'worker', hand_back.worker_id,
               'type', 'pgqueue.Interrupted', 'interrupted', true,
               'message', 'worker shut down before the job finished; the attempt was handed back and does not count',
               'traceback', null))
      from unnest(hand_back.ids, hand_back.attempts) as r(id, attempt)
     where j.id = r.id
       and j.state = 'running'
       and j.attempt = r.attempt
       and j.worker_id = hand_back.worker_id
    returning j.id, j.queue
)
select b.id from back b
 where (select count(pg_notify('pgqueue_jobs', q.queue))
          from (select distinct queue from back) q) >= 0
$$;
comment on function pgqueue.hand_back is 'Return running jobs to available without counting the attempt (graceful shutdown)';

create function pgqueue.heartbeat(worker_id uuid, name text, hostname text, pid integer,
                                  queues text[], tasks text[], concurrency integer)
returns setof bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
begin
    insert into pgqueue.workers as w (id, name, hostname, pid, queues, tasks, concurrency)
    values (heartbeat.worker_id, heartbeat.name, heartbeat.hostname, heartbeat.pid,
            heartbeat.queues, heartbeat.tasks, heartbeat.concurrency)
    on conflict (id) do update set heartbeat_at = now();
    -- Running jobs of this worker that were asked to cancel.
    return query
        select j.id from pgqueue.jobs j
         where j.worker_id = heartbeat.worker_id
           and j.state = 'running'
           and j.cancel_requested_at is not null;
end $$;
comment on function pgqueue.heartbeat is 'Register or refresh a worker; returns its running jobs that were asked to cancel';

create function pgqueue.rescue(stale_after interval)
returns table (id bigint, state text)
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    r record;
    v_queues text[] := '{}';
begin
    -- A running job is orphaned when its owner has not heartbeated within
    -- stale_after, or its owner row is gone altogether.
    for r in
        with orphans as (
            select j.id from pgqueue.jobs j
             where j.state = 'running'
               and not exists (select 1 from pgqueue.workers w
                                where w.id = j.worker_id
                                  and w.heartbeat_at > now() - rescue.stale_after)
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
    delete from pgqueue.workers w where w.heartbeat_at < now() - rescue.stale_after * 10;
end $$;
comment on function pgqueue.rescue is 'Requeue (or discard, by attempts) running jobs whose worker is dead or gone; any live worker may call it';

create function pgqueue.release_unknown(worker_id uuid, known bigint[])
returns setof bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    -- After a lost claim connection: jobs this worker owns but never received.
    with back as (
    update pgqueue.jobs j
       set state = 'available', run_at = least(j.run_at, now()), attempt = j.attempt - 1,
           worker_id = null
     where j.worker_id = release_unknown.worker_id
       and j.state = 'running'
       and j.id <> all(release_unknown.known)
    returning j.id, j.queue
)
select b.id from back b
 where (select count(pg_notify('pgqueue_jobs', q.queue))
          from (select distinct queue from back) q) >= 0
$$;
comment on function pgqueue.release_unknown is 'Hand back running jobs owned by a worker that never received them (a claim whose reply was lost)';

create function pgqueue.cancel(job_id bigint)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_state text;
begin
    update pgqueue.jobs j
       set state = 'cancelled', finished_at = now()
     where j.id = cancel.job_id
       and j.state in ('pending', 'scheduled', 'available', 'retryable')
    returning j.state into v_state;
    if v_state is not null then
        perform pg_notify('pgqueue_done', cancel.job_id::text);
        return v_state;
    end if;
    update pgqueue.jobs j
       set cancel_requested_at = coalesce(j.cancel_requested_at, now())
     where j.id = cancel.job_id and j.state = 'running'
    returning j.state into v_state;
    if v_state is not null then
        perform pg_notify('pgqueue_cancel', cancel.job_id::text);
        return v_state;
    end if;
    select j.state into v_state from pgqueue.jobs j where j.id = cancel.job_id;
    return v_state;  -- terminal already (no-op), or null: no such job
end $$;
comment on function pgqueue.cancel is 'Cancel a job: queued jobs become cancelled at once; a running job is asked to stop (its outcome is decided by the worker''s fenced update). Returns the state after the call, null for an unknown id';

create function pgqueue.retry(job_id bigint)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_state text;
begin
    update pgqueue.jobs j
       set state = 'available', run_at = now(), finished_at = null,
           max_attempts = greatest(j.max_attempts, j.attempt + 1),
           cancel_requested_at = null
     where j.id = retry.job_id
       and j.state in ('discarded', 'cancelled', 'retryable', 'scheduled')
    returning j.state into v_state;
    if v_state is null then
        select j.state into v_state from pgqueue.jobs j where j.id = retry.job_id;
    else
        perform pg_notify('pgqueue_jobs', (select j.queue from pgqueue.jobs j where j.id = retry.job_id));
    end if;
    return v_state;
end $$;
comment on function pgqueue.retry is 'Make a discarded, cancelled, retryable or scheduled job available now (one more attempt if needed). Returns the state after the call';

create function pgqueue.prune(older_than interval, states text[] default array['completed', 'discarded', 'cancelled'])
returns bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    with gone as (
        delete from pgqueue.jobs j
         where j.finished_at < now() - prune.older_than
           and j.state = any(prune.states)
        returning 1
    )
    select count(*) from gone
$$;
comment on function pgqueue.prune is 'Delete finished jobs older than the given age; returns the number deleted';

------------------------------------------------------------------------------
-- views
------------------------------------------------------------------------------

create view pgqueue.queue_stats as
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
                                                                            as oldest_ready_seconds,
       coalesce(bool_or(q.paused), false)                                   as paused
  from pgqueue.jobs j
  left join pgqueue.queues q on q.name = j.queue
 group by j.queue;
comment on view pgqueue.queue_stats is 'Per queue: jobs by state, age of the oldest ready job, paused flag';

-- pgqueue migration 0002: workflows (chain, group, chord, DAG) with fan-in at commit.
--
-- A workflow is one row in pgqueue.workflows, one ordinary job per step (with
-- jobs.workflow_id set), and one row in pgqueue.job_dependencies per edge "this job
-- waits for that job". A waiting job is 'pending' and counts its unsatisfied edges in
-- jobs.deps_pending. The transaction that moves a job to a terminal state also, through
-- the trigger jobs_workflow_fan_in below:
--   * marks each outgoing edge satisfied, once (update ... where not satisfied);
--   * decrements each dependent's counter; the one that reaches zero becomes
--     'available' (or 'scheduled' if it has a delay) in that same commit, and a NOTIFY
--     on pgqueue_jobs wakes a worker;
--   * on a permanent failure (discarded, or cancelled) cancels the pending dependents
--     that need success, fails the workflow and releases its error callback once.
-- No leader, no polling resolver: the row locks of the counters serialize concurrent
-- finishers, and the conditional updates make each transition happen once.

------------------------------------------------------------------------------
-- workflows
------------------------------------------------------------------------------

create table pgqueue.workflows (
    id              bigint generated always as identity primary key,
    name            text,
    state           text not null default 'running',
    created_at      timestamptz not null default now(),
    finished_at     timestamptz,
    total           integer not null,
    remaining       integer not null,
    completed       integer not null default 0,
    discarded       integer not null default 0,
    cancelled       integer not null default 0,
    failed_job_ids  bigint[] not null default '{}',
    failures        jsonb not null default '[]',
    on_error_job_id bigint,
    result_job_ids  bigint[] not null default '{}',
    result_is_list  boolean not null default false,

    constraint workflows_state_valid check (state in ('running', 'completed', 'failed', 'cancelled')),
    constraint workflows_total_positive check (total >= 1),
    constraint workflows_remaining_range check (remaining >= 0 and remaining <= total),
    constraint workflows_counters_nonnegative check (completed >= 0 and discarded >= 0 and cancelled >= 0),
    constraint workflows_failures_is_array check (jsonb_typeof(failures) = 'array'),
    constraint workflows_completed_when_done check (state <> 'completed' or remaining = 0),
    constraint workflows_finished_iff_done check ((remaining = 0) = (finished_at is not null))
) with (fillfactor = 70);

comment on table pgqueue.workflows is 'One row per workflow (chain, group, chord or DAG); its steps are the jobs with this workflow_id';
comment on column pgqueue.workflows.id is 'Workflow id, assigned at enqueue';
comment on column pgqueue.workflows.name is 'Optional label given at enqueue';
comment on column pgqueue.workflows.state is 'running | completed (every step completed) | failed (a step was discarded or cancelled; set at the first such step) | cancelled (pgqueue.cancel_workflow)';
comment on column pgqueue.workflows.created_at is 'Enqueue time (database clock)';
comment on column pgqueue.workflows.finished_at is 'Time the last step reached a terminal state; null while any step is unfinished';
comment on column pgqueue.workflows.total is 'Number of steps, the error callback excluded';
comment on column pgqueue.workflows.remaining is 'Steps not yet in a terminal state (error callback excluded); decremented in the transaction that finishes a step';
comment on column pgqueue.workflows.completed is 'Steps that ended completed';
comment on column pgqueue.workflows.discarded is 'Steps that ended discarded';
comment on column pgqueue.workflows.cancelled is 'Steps that ended cancelled (by a user, or skipped because a dependency failed)';
comment on column pgqueue.workflows.failed_job_ids is 'Ids of the steps whose failure failed the workflow (discarded, or cancelled other than as a skipped dependent), in order';
comment on column pgqueue.workflows.failures is 'JSON array, one object per entry of failed_job_ids: job_id, task, step, state, at, error (the step''s last errors entry or null)';
comment on column pgqueue.workflows.on_error_job_id is 'The error callback job: pending until the first failure makes it available (once); cancelled when the workflow completes';
comment on column pgqueue.workflows.result_job_ids is 'Steps whose results form the workflow''s result, in order';
comment on column pgqueue.workflows.result_is_list is 'True when the workflow''s result is the list of result_job_ids'' results (it ends in a group), false for the single result of result_job_ids[1]';

------------------------------------------------------------------------------
-- new columns of jobs
------------------------------------------------------------------------------

alter table pgqueue.jobs
    add column workflow_id   bigint,
    add column workflow_step text,
    add column deps_pending  integer not null default 0,
    add column inputs        text not null default 'none',
    add column any_outcome   boolean not null default false,
    add constraint jobs_deps_pending_nonnegative check (deps_pending >= 0),
    add constraint jobs_inputs_valid check (inputs in ('none', 'previous', 'results', 'outcomes', 'error')),
    add constraint jobs_workflow_fields check (
        workflow_id is not null or (deps_pending = 0 and inputs = 'none' and not any_outcome
                                    and workflow_step is null));

comment on column pgqueue.jobs.workflow_id is 'The workflow this job is a step of (pgqueue.workflows.id); null for a plain job. Set only by pgqueue.enqueue_workflow; deleting the workflow row deletes its jobs (trigger workflows_deleted)';
comment on column pgqueue.jobs.workflow_step is 'Step name inside its workflow (DAG builder names; null when unnamed)';
comment on column pgqueue.jobs.deps_pending is 'Dependencies (pgqueue.job_dependencies edges) not yet satisfied; a pending job becomes available when it reaches 0. Never negative';
comment on column pgqueue.jobs.inputs is 'What the job receives first, before its own args, read when it starts: none | previous (its dependency''s result) | results (list of its dependencies'' results, by edge position) | outcomes (list of {job_id, state, result, error}) | error (the error callback: failed job id, failure object)';
comment on column pgqueue.jobs.any_outcome is 'Run once every dependency is terminal, whatever its outcome; false: cancelled as soon as a dependency is discarded or cancelled';

create index jobs_workflow_idx on pgqueue.jobs (workflow_id, id) where workflow_id is not null;

------------------------------------------------------------------------------
-- dependency edges
------------------------------------------------------------------------------

create table pgqueue.job_dependencies (
    job_id       bigint not null,
    depends_on   bigint not null,
    position     integer,
    satisfied    boolean not null default false,
    outcome      text,
    satisfied_at timestamptz,
    primary key (job_id, depends_on),
    constraint job_dependencies_not_self check (job_id <> depends_on),
    constraint job_dependencies_position_nonnegative check (position is null or position >= 0),
    constraint job_dependencies_outcome_valid check (
        outcome is null or outcome in ('completed', 'discarded', 'cancelled')),
    constraint job_dependencies_satisfied_has_outcome check (
        satisfied = (outcome is not null and satisfied_at is not null))
) with (fillfactor = 80);

comment on table pgqueue.job_dependencies is 'Workflow edges: job_id waits for depends_on. Each edge is satisfied exactly once, by the transaction that moves depends_on to a terminal state. Written only by pgqueue.enqueue_workflow, together with both jobs; deleting a job deletes its edges (trigger jobs_deleted_edges)';
comment on column pgqueue.job_dependencies.job_id is 'The waiting job (the dependent)';
comment on column pgqueue.job_dependencies.depends_on is 'The job it waits for';
comment on column pgqueue.job_dependencies.position is 'Place of depends_on''s result in the dependent''s inputs (0-based); null for an ordering-only edge whose result is not passed';
comment on column pgqueue.job_dependencies.satisfied is 'True once depends_on reached a terminal state and the dependent''s deps_pending was decremented for this edge';
comment on column pgqueue.job_dependencies.outcome is 'Terminal state of depends_on when the edge was satisfied';
comment on column pgqueue.job_dependencies.satisfied_at is 'When the edge was satisfied (database clock)';

create index job_dependencies_depends_on_idx on pgqueue.job_dependencies (depends_on);

-- No foreign keys on the edges or on jobs.workflow_id: enqueue_workflow writes a
-- workflow, its jobs and its edges together in one statement, so they always refer to
-- each other, and a foreign key would only cost a row trigger with a lookup per job and
-- two per edge (half the time of enqueueing a 10,000-member chord). What the keys'
-- "on delete cascade" did, two statement triggers do, once per delete statement.
create function pgqueue.workflow_rows_deleted() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
begin
    if tg_table_name = 'workflows' then
        delete from pgqueue.jobs j using gone g where j.workflow_id = g.id;
    elsif exists (select 1 from gone g where g.workflow_id is not null) then
        delete from pgqueue.job_dependencies d
         using (select g.id from gone g where g.workflow_id is not null) g
         where d.job_id = g.id or d.depends_on = g.id;
    end if;
    return null;
end $$;
comment on function pgqueue.workflow_rows_deleted is 'Statement trigger: deleting workflows deletes their jobs; deleting workflow steps deletes their edges (the cascade of foreign keys, without a row trigger per row)';

create trigger workflows_deleted
    after delete on pgqueue.workflows
    referencing old table as gone
    for each statement
    execute function pgqueue.workflow_rows_deleted();

create trigger jobs_deleted_edges
    after delete on pgqueue.jobs
    referencing old table as gone
    for each statement
    execute function pgqueue.workflow_rows_deleted();

------------------------------------------------------------------------------
-- fan-in: runs in the transaction that finishes a workflow step
------------------------------------------------------------------------------
--
-- Two triggers. The row trigger (with a WHEN clause, so a plain job never calls a
-- function) only notes the id of each workflow step that reached a terminal state in a
-- transaction-local setting. The statement trigger then handles every step the
-- statement finished at once: a batch of 400 completions of one chord updates the
-- callback's counter once, not 400 times, and every lock is taken in id order.

create function pgqueue.workflow_step_changed() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
begin
    if new.state in ('completed', 'discarded', 'cancelled') then
        -- 'id,' per finished step; '-id,' for discarded/cancelled, so that the fan-in
        -- looks for failures only when there may be one.
        perform set_config('pgqueue.finished_steps',
                           coalesce(current_setting('pgqueue.finished_steps', true), '')
                           || case when new.state = 'completed' then '' else '-' end
                           || new.id::text || ',', true);
        return null;
    end if;
    -- A terminal step was made runnable again (pgqueue.retry): count it as unfinished.
    -- Its edges stay satisfied, so its dependents are never decremented twice.
    update pgqueue.workflows w
       set remaining = w.remaining + 1,
           completed = w.completed - (old.state = 'completed')::integer,
           discarded = w.discarded - (old.state = 'discarded')::integer,
           cancelled = w.cancelled - (old.state = 'cancelled')::integer,
           finished_at = null
     where w.id = new.workflow_id;
    return null;
end $$;
comment on function pgqueue.workflow_step_changed is 'Row trigger: notes a workflow step that reached a terminal state for pgqueue.workflow_fan_in (or counts a step that left one as unfinished again)';

create function pgqueue.workflow_fan_in() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
declare
    v_list text := current_setting('pgqueue.finished_steps', true);
    v_ids bigint[];
    v_queues text[];
    v_failed bigint[];
    v_doomed bigint[];
    v_roots bigint[];
    v_maybe_failed boolean;
    w record;
    v_wf pgqueue.workflows%rowtype;
    v_state text;
    v_queue text;
    i integer;
begin
    if v_list is null or v_list = '' then
        return null;   -- no workflow step finished in this statement: the common case
    end if;
    perform set_config('pgqueue.finished_steps', '', true);
    v_maybe_failed := strpos(v_list, '-') > 0;
    v_ids := string_to_array(replace(left(v_list, -1), '-', ''), ',')::bigint[];

    -- 1. Satisfy each outgoing edge once (where not satisfied), then decrement each
    --    dependent by the number of its edges satisfied here and release the ready
    --    ones; one statement. The dependents are locked in id order first (lck), so
    --    concurrent finishers never deadlock; the update then works on the newest
    --    version of each counter.
    with sat as (
        update pgqueue.job_dependencies d
           set satisfied = true, outcome = j.state, satisfied_at = now()
          from pgqueue.jobs j
         where j.id = any(v_ids)
           and j.state in ('completed', 'discarded', 'cancelled')
           and d.depends_on = j.id
           and not d.satisfied
        returning d.job_id, d.outcome
    ), agg as (
        select sat.job_id as id, count(*)::integer as n, bool_or(sat.outcome <> 'completed') as bad
          from sat group by sat.job_id
    ), lck as (
        select j.id from pgqueue.jobs j
         where j.id in (select agg.id from agg)
         order by j.id
           for update
    ), dec as (
        update pgqueue.jobs j
           set deps_pending = j.deps_pending - a.n,
               state = case when j.state = 'pending' and j.deps_pending = a.n
                                 and (not a.bad or j.any_outcome)
                            then case when j.run_at > j.created_at then 'scheduled'
                                      else 'available' end
                            else j.state end,
               run_at = case when j.state = 'pending' and j.deps_pending = a.n
                                  and (not a.bad or j.any_outcome)
                             then now() + greatest(j.run_at - j.created_at, interval '0')
                             else j.run_at end
          from agg a join lck l on l.id = a.id
         where j.id = a.id
        returning j.queue, j.state
    )
    select array_agg(distinct dec.queue) filter (where dec.state in ('available', 'scheduled'))
      into v_queues from dec;
    if v_queues is not null then
        perform pg_notify('pgqueue_jobs', x) from unnest(v_queues) x;
    end if;

    -- 2. Permanent failures (discarded, or cancelled other than as a skipped dependent):
    --    every pending step downstream that needs success is skipped, i.e. cancelled
    --    with an errors entry naming the failed step, in one statement.
    if v_maybe_failed then
        select array_agg(j.id order by j.id) into v_failed
          from pgqueue.jobs j
         where j.id = any(v_ids)
           and j.state in ('discarded', 'cancelled')
           and not coalesce(j.errors -> -1 ->> 'type' = 'pgqueue.DependencyFailed', false);
    end if;
    if v_failed is not null then
        with recursive doomed(id, root) as (
            select d.job_id, d.depends_on
              from pgqueue.job_dependencies d
              join pgqueue.jobs j on j.id = d.job_id
             where d.depends_on = any(v_failed) and j.state = 'pending' and not j.any_outcome
            union
            select d.job_id, x.root
              from doomed x
              join pgqueue.job_dependencies d on d.depends_on = x.id
              join pgqueue.jobs j on j.id = d.job_id
             where j.state = 'pending' and not j.any_outcome
        )
        select array_agg(x.id order by x.id), array_agg(x.root order by x.id)
          into v_doomed, v_roots
          from (select doomed.id, min(doomed.root) as root from doomed group by doomed.id) x;
        if v_doomed is not null then
            perform 1 from pgqueue.jobs j where j.id = any(v_doomed) order by j.id for update;
            update pgqueue.jobs j
               set state = 'cancelled', finished_at = now(),
                   errors = j.errors || jsonb_build_array(jsonb_build_object(
                       'at', now(), 'attempt', j.attempt, 'worker', null,
                       'type', 'pgqueue.DependencyFailed', 'job_id', f.id,
                       'message', format('not run: workflow step %s (%s) ended %s',
                                         f.id, f.task, f.state),
                       'traceback', null))
              from unnest(v_doomed, v_roots) as r(id, root)
              join pgqueue.jobs f on f.id = r.root
             where j.id = r.id and j.state = 'pending';
            i := 1;
            while i <= cardinality(v_doomed) loop
                perform pg_notify('pgqueue_done', array_to_string(v_doomed[i:i + 399], ','));
                i := i + 400;
            end loop;
        end if;
    end if;

    -- 3. Each workflow's counters and state, once per workflow, in id order (the row lock
    --    serializes concurrent finishers: exactly one of them sees remaining reach 0).
    for w in
        select j.workflow_id as id, count(*)::integer as finished,
               count(*) filter (where j.state = 'completed')::integer as completed,
               count(*) filter (where j.state = 'discarded')::integer as discarded,
               count(*) filter (where j.state = 'cancelled')::integer as cancelled,
               array_agg(j.id order by j.id) filter (where j.id = any(v_failed)) as causes,
               jsonb_agg(jsonb_build_object(
                   'job_id', j.id, 'task', j.task, 'step', j.workflow_step, 'state', j.state,
                   'at', now(), 'error', j.errors -> -1) order by j.id)
                   filter (where j.id = any(v_failed)) as failures
          from pgqueue.jobs j
         where j.id = any(v_ids) and j.state in ('completed', 'discarded', 'cancelled')
         group by j.workflow_id
         order by j.workflow_id
    loop
        -- One statement: "old" locks the row and keeps its values before the update
        -- (v_wf); the update computes from the same, newest, version.
        with old as (
            select * from pgqueue.workflows x where x.id = w.id for update
        ), upd as (
            update pgqueue.workflows x
               set remaining = x.remaining - w.finished,
                   completed = x.completed + w.completed,
                   discarded = x.discarded + w.discarded,
                   cancelled = x.cancelled + w.cancelled,
                   state = case when x.state = 'running' and w.causes is not null then 'failed'
                                when x.state = 'running' and x.remaining = w.finished then 'completed'
                                else x.state end,
                   finished_at = case when x.remaining = w.finished then now() else x.finished_at end,
                   failed_job_ids = case when w.causes is not null and x.state <> 'cancelled'
                                         then x.failed_job_ids || w.causes
                                         else x.failed_job_ids end,
                   failures = case when w.causes is not null and x.state <> 'cancelled'
                                   then x.failures || w.failures else x.failures end
              from old o
             where x.id = o.id
            returning x.state
        )
        select o.id, o.state, o.remaining, o.on_error_job_id, u.state
          into v_wf.id, v_wf.state, v_wf.remaining, v_wf.on_error_job_id, v_state
          from old o, upd u;
        if not found then
            continue;
        end if;

        if v_wf.on_error_job_id is not null then
            if v_state = 'failed' and v_wf.state = 'running' then
                -- First failure: release the error callback, once (conditional on its state).
                v_queue := null;
                update pgqueue.jobs e set state = 'available', run_at = now()
                 where e.id = v_wf.on_error_job_id and e.state = 'pending'
                returning e.queue into v_queue;
                if v_queue is not null then
                    perform pg_notify('pgqueue_jobs', v_queue);
                end if;
            elsif v_wf.remaining = w.finished and v_state in ('completed', 'cancelled') then
                update pgqueue.jobs e
                   set state = 'cancelled', finished_at = now(),
                       errors = e.errors || jsonb_build_array(jsonb_build_object(
                           'at', now(), 'attempt', e.attempt, 'worker', null,
                           'type', 'pgqueue.NotNeeded',
                           'message', format('workflow %s ended %s: the error callback was not needed',
                                             v_wf.id, v_state),
                           'traceback', null))
                 where e.id = v_wf.on_error_job_id and e.state = 'pending';
                if found then
                    perform pg_notify('pgqueue_done', v_wf.on_error_job_id::text);
                end if;
            end if;
        end if;
        if v_state <> v_wf.state or v_wf.remaining = w.finished then
            perform pg_notify('pgqueue_workflows', v_wf.id::text);
        end if;
    end loop;
    return null;
end $$;
comment on function pgqueue.workflow_fan_in is 'Statement trigger: fan-in of the workflow steps the statement finished: edges satisfied once, dependents decremented and released (NOTIFY pgqueue_jobs), failures propagated, workflow counters and state updated, error callback released once; all in the finishing transaction';

-- Plain jobs (workflow_id null) and non-terminal moves never call the row function.
create trigger jobs_workflow_step_finished
    after update of state on pgqueue.jobs
    for each row
    when (new.workflow_id is not null and new.inputs <> 'error'
          and (old.state in ('completed', 'discarded', 'cancelled'))
              <> (new.state in ('completed', 'discarded', 'cancelled')))
    execute function pgqueue.workflow_step_changed();

-- Once per state-changing statement; returns at once unless a workflow step finished.
create trigger jobs_workflow_fan_in
    after update of state on pgqueue.jobs
    for each statement
    execute function pgqueue.workflow_fan_in();

------------------------------------------------------------------------------
-- the SQL API of workflows
------------------------------------------------------------------------------

create function pgqueue.enqueue_workflow(steps jsonb, name text default null,
                                         result_steps integer[] default null,
                                         result_is_list boolean default false)
returns table (workflow_id bigint, job_ids bigint[])
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_n integer;
    v_wf bigint;
    v_ids bigint[];
    v_bad text;
    v_error_ord integer;
    v_errors integer;
    v_e_ord integer[];
    v_e_dep integer[];
    v_e_pos integer[];
    v_deps integer[];
    v_seq regclass;
begin
    if steps is null or jsonb_typeof(steps) <> 'array' or jsonb_array_length(steps) = 0 then
        raise exception 'pgqueue.enqueue_workflow: steps must be a non-empty JSON array'
            using errcode = 'invalid_parameter_value';
    end if;
    v_n := jsonb_array_length(steps);
    select format('step %s: %s', x.ord - 1, case
               when jsonb_typeof(x.s) <> 'object' then 'not an object'
               when coalesce(x.s ->> 'task', '') = '' then 'no task'
               else 'depends_on and after must be arrays of step indexes' end)
      into v_bad
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where jsonb_typeof(x.s) <> 'object'
        or coalesce(x.s ->> 'task', '') = ''
        or jsonb_typeof(coalesce(x.s -> 'depends_on', '[]')) <> 'array'
        or jsonb_typeof(coalesce(x.s -> 'after', '[]')) <> 'array'
     limit 1;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;

    -- Every edge, flattened once: step ordinal (1-based), dependency index (0-based),
    -- position in the inputs (null for an ordering-only "after" edge).
    select coalesce(array_agg(e.ord), '{}'), coalesce(array_agg(e.dep), '{}'),
           coalesce(array_agg(e.pos), '{}')
      into v_e_ord, v_e_dep, v_e_pos
      from (select x.ord::integer as ord,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end as dep,
                   (d.n - 1)::integer as pos
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'depends_on', '[]')) with ordinality d(v, n)
            union all
            select x.ord::integer,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end,
                   null
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'after', '[]')) d(v)) e;
    -- Steps come in dependency order: a step may only wait for steps listed before it,
    -- which also rules out cycles.
    select format('step %s: %s', e.o - 1, case when e.d is null
                      then 'a dependency is not a step index (an integer)'
                      else format('dependency %s is not the index of an earlier step', e.d) end)
      into v_bad
      from unnest(v_e_ord, v_e_dep) e(o, d)
     where e.d is null or e.d >= e.o - 1
     limit 1;
    if v_bad is null then
        select format('step %s: dependency %s is listed twice', e.o - 1, e.d) into v_bad
          from unnest(v_e_ord, v_e_dep) e(o, d) group by e.o, e.d having count(*) > 1 limit 1;
    end if;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    select array_agg(coalesce(c.n, 0) order by g.i) into v_deps
      from generate_series(1, v_n) g(i)
      left join (select o, count(*)::integer as n from unnest(v_e_ord) o group by o) c on c.o = g.i;

    select count(*), min(x.ord) into v_errors, v_error_ord
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where coalesce((x.s ->> 'on_error')::boolean, false);
    if v_errors > 1 then
        raise exception 'pgqueue.enqueue_workflow: at most one step may be the error callback'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_errors = 1 and (v_deps[v_error_ord] > 0 or v_error_ord - 1 = any(v_e_dep)) then
        raise exception 'pgqueue.enqueue_workflow: the error callback has no dependencies and no dependents'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_n - v_errors < 1 then
        raise exception 'pgqueue.enqueue_workflow: a workflow needs a step besides its error callback'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into pgqueue.workflows as w (name, total, remaining, result_is_list)
    values (enqueue_workflow.name, v_n - v_errors, v_n - v_errors,
            coalesce(enqueue_workflow.result_is_list, false))
    returning w.id into v_wf;

    -- Ids first, so that step i gets v_ids[i] whatever order the insert runs in.
    v_seq := pg_get_serial_sequence('pgqueue.jobs', 'id')::regclass;
    select array_agg(nextval(v_seq)) into v_ids from generate_series(1, v_n);

    insert into pgqueue.jobs (id, task, args, kwargs, queue, priority, run_at, max_attempts,
                              state, workflow_id, workflow_step, deps_pending, inputs, any_outcome)
    overriding system value
    select v_ids[x.ord], x.s ->> 'task', coalesce(x.s -> 'args', '[]'), coalesce(x.s -> 'kwargs', '{}'),
           coalesce(x.s ->> 'queue', 'default'), coalesce((x.s ->> 'priority')::integer, 0),
           now() + make_interval(secs => greatest(coalesce((x.s ->> 'delay')::float8, 0), 0)),
           coalesce((x.s ->> 'max_attempts')::integer, 20),
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord then 'pending'
                when coalesce((x.s ->> 'delay')::float8, 0) > 0 then 'scheduled'
                else 'available' end,
           v_wf, x.s ->> 'step', v_deps[x.ord],
           case when x.ord = v_error_ord then 'error' else coalesce(x.s ->> 'inputs', 'none') end,
           coalesce((x.s ->> 'any_outcome')::boolean, false)
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     order by x.ord;

    insert into pgqueue.job_dependencies (job_id, depends_on, position)
    select v_ids[e.o], v_ids[e.d + 1], e.p
      from unnest(v_e_ord, v_e_dep, v_e_pos) e(o, d, p);

    update pgqueue.workflows w
       set on_error_job_id = case when v_error_ord is not null then v_ids[v_error_ord] end,
           result_job_ids = coalesce((select array_agg(v_ids[r.i + 1] order by r.n)
                                        from unnest(enqueue_workflow.result_steps)
                                             with ordinality r(i, n)
                                       where r.i between 0 and v_n - 1), '{}')
     where w.id = v_wf;

    workflow_id := v_wf;
    job_ids := v_ids;
    return next;
end $$;
comment on function pgqueue.enqueue_workflow is 'Enqueue a workflow in the caller''s transaction: steps is a JSON array of {task, args, kwargs, queue, priority, max_attempts, delay (s, counted from when the step becomes ready), step (name), inputs, any_outcome, depends_on (indexes of earlier steps whose results feed this one, in order), after (ordering-only indexes), on_error (the error callback)}; result_steps are the indexes whose results form the workflow result. Returns the workflow id and the job ids in step order';

create function pgqueue.job_inputs(job_id bigint)
returns jsonb
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
-- volatile on purpose: a fresh snapshot, so a claim that saw the job become available
-- also sees the results committed by the same transaction.
declare
    v_out jsonb;
begin
    select case j.inputs
        when 'none' then null
        when 'previous' then jsonb_build_array(
            (select p.result from pgqueue.job_dependencies d
               join pgqueue.jobs p on p.id = d.depends_on
              where d.job_id = j.id and d.position is not null
              order by d.position limit 1))
        when 'results' then jsonb_build_array(coalesce(
            (select jsonb_agg(p.result order by d.position)
               from pgqueue.job_dependencies d
               join pgqueue.jobs p on p.id = d.depends_on
              where d.job_id = j.id and d.position is not null), '[]'))
        when 'outcomes' then jsonb_build_array(coalesce(
            (select jsonb_agg(jsonb_build_object(
                        'job_id', p.id, 'state', p.state,
                        'result', case when p.state = 'completed' then p.result end,
                        'error', case when p.state <> 'completed' then p.errors -> -1 end)
                    order by d.position)
               from pgqueue.job_dependencies d
               join pgqueue.jobs p on p.id = d.depends_on
              where d.job_id = j.id and d.position is not null), '[]'))
        when 'error' then
            (select jsonb_build_array(w.failures -> 0 -> 'job_id', w.failures -> 0)
               from pgqueue.workflows w where w.id = j.workflow_id)
        end
      into v_out
      from pgqueue.jobs j
     where j.id = job_inputs.job_id;
    return v_out;
exception when others then
    -- e.g. results too large for one jsonb value: an error here would fail the whole
    -- claim of the queue, again at every attempt; the worker fails the step instead.
    return jsonb_build_object('pgqueue_inputs_error', sqlerrm);
end $$;
comment on function pgqueue.job_inputs is 'The values a workflow step receives before its own args, as a JSON array (null when it receives none): [result] for inputs=previous, [[results...]] for results, [[{job_id, state, result, error}...]] for outcomes, [failed_job_id, failure] for the error callback; {"pgqueue_inputs_error": message} when they cannot be read. Workers call it when the step starts';

create function pgqueue.cancel_workflow(workflow_id bigint)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_state text;
    v_ids bigint[];
    i integer;
begin
    -- Lock order as in the fan-in trigger: jobs (by id) first, then the workflow row.
    perform 1 from pgqueue.jobs j
     where j.workflow_id = cancel_workflow.workflow_id
       and j.state in ('pending', 'scheduled', 'available', 'retryable', 'running')
     order by j.id for update;
    update pgqueue.workflows w set state = 'cancelled'
     where w.id = cancel_workflow.workflow_id and w.state = 'running';
    if found then
        perform pg_notify('pgqueue_workflows', cancel_workflow.workflow_id::text);
    end if;
    with c as (
        update pgqueue.jobs j
           set state = 'cancelled', finished_at = now()
         where j.workflow_id = cancel_workflow.workflow_id
           and (j.state in ('scheduled', 'available', 'retryable')
                or (j.state = 'pending'))
           and not (j.inputs = 'error' and j.state <> 'pending')
        returning j.id
    )
    select array_agg(c.id) into v_ids from c;
    i := 1;
    while i <= coalesce(cardinality(v_ids), 0) loop
        perform pg_notify('pgqueue_done', array_to_string(v_ids[i:i + 399], ','));
        i := i + 400;
    end loop;
    with r as (
        update pgqueue.jobs j
           set cancel_requested_at = coalesce(j.cancel_requested_at, now())
         where j.workflow_id = cancel_workflow.workflow_id and j.state = 'running'
        returning j.id
    )
    select array_agg(r.id) into v_ids from r;
    if v_ids is not null then
        perform pg_notify('pgqueue_cancel', x::text) from unnest(v_ids) x;
    end if;
    select w.state into v_state from pgqueue.workflows w where w.id = cancel_workflow.workflow_id;
    return v_state;
end $$;
comment on function pgqueue.cancel_workflow is 'Cancel a workflow: steps not started become cancelled at once, running steps are asked to stop (the worker decides their outcome); the error callback does not run. Returns the workflow state after the call, null for an unknown id';

-- prune (0001) would delete the finished steps of a running workflow: their edges go
-- with them (trigger jobs_deleted_edges), so a dependent that has yet to start would
-- lose their results. A workflow's steps are pruned only once it is finished.
create or replace function pgqueue.prune(older_than interval, states text[] default array['completed', 'discarded', 'cancelled'])
returns bigint
language sql volatile set search_path = pg_catalog, pgqueue as $$
    with gone as (
        delete from pgqueue.jobs j
         where j.finished_at < now() - prune.older_than
           and j.state = any(prune.states)
           and (j.workflow_id is null
                or not exists (select 1 from pgqueue.workflows w
                                where w.id = j.workflow_id and w.finished_at is null))
        returning 1
    ), emptied as (
        -- finished workflows whose steps an earlier prune removed (this statement's
        -- snapshot still sees the steps it deletes: those go at the next prune)
        delete from pgqueue.workflows w
         where w.finished_at < now() - prune.older_than
           and not exists (select 1 from pgqueue.jobs j where j.workflow_id = w.id)
    )
    select count(*) from gone
$$;
comment on function pgqueue.prune is 'Delete finished jobs older than the given age, except the steps of a workflow that is not finished, and finished workflows left without steps; returns the number of jobs deleted';

------------------------------------------------------------------------------
-- where is my workflow
------------------------------------------------------------------------------

create view pgqueue.workflow_steps as
select j.workflow_id,
       w.name as workflow_name,
       w.state as workflow_state,
       j.id as job_id,
       j.workflow_step as step,
       j.task,
       j.queue,
       j.state,
       j.attempt,
       j.max_attempts,
       j.deps_pending,
       coalesce((select array_agg(d.depends_on order by d.position nulls last, d.depends_on)
                   from pgqueue.job_dependencies d where d.job_id = j.id), '{}') as depends_on,
       j.inputs,
       j.any_outcome,
       j.inputs = 'error' as is_error_callback,
       j.created_at,
       j.started_at,
       j.finished_at,
       extract(epoch from j.finished_at - j.started_at)::double precision as duration_seconds,
       j.errors -> -1 ->> 'message' as last_error
  from pgqueue.jobs j
  join pgqueue.workflows w on w.id = j.workflow_id;
comment on view pgqueue.workflow_steps is 'One row per workflow step: state, attempts, what it waits for (depends_on job ids), timings and last error. select * from pgqueue.workflow_steps where workflow_id = 42 order by job_id';

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

-- pgqueue migration 0007: a task's declared options are authoritative; delays count
-- from the enqueue statement.
--
-- Task options (DESIGN 5.2). A null jobs.max_attempts (as jobs.timeout already was)
-- means "the task's default": the SQL API, the Python API without an explicit
-- max_attempts, and workflows leave it null, and the worker that claims the job fills
-- in its own declaration. pgqueue.claim takes the claiming worker's declared
-- max_attempts and timeout per task (parallel to tasks) and writes the resolved values
-- into the row in the claiming statement, so everything after the claim (fail,
-- rescue by any worker, the views) reads them from the row, and a running job never
-- lacks them (constraint jobs_running_has_owner). A claim without declarations (a
-- worker in another language) resolves max_attempts to 20. The retry policy travels
-- with each failure (pgqueue.fail's backoff arguments), always the running worker's.
--
-- Delays. now() is the start of the enqueuing transaction: a delay added to it made a
-- job enqueued late in a long transaction due early, or at once. A delay now counts
-- from clock_timestamp() of the enqueue statement: pgqueue.enqueue gains a delay
-- argument (replacing the function keeps the privileges granted on the old one), and
-- workflow steps that can start at once count theirs the same way. An explicit run_at
-- is unchanged, and a job without delay is still due at now().

------------------------------------------------------------------------------
-- jobs.max_attempts: null means the task's default
------------------------------------------------------------------------------

alter table pgqueue.jobs alter column max_attempts drop not null,
                         alter column max_attempts drop default;
comment on column pgqueue.jobs.max_attempts is 'Attempts allowed before the job is discarded; null until the first claim means the task''s declared max_attempts, which the claim writes here';
comment on column pgqueue.jobs.timeout is 'Per-attempt run time limit; null until the first claim means the task''s declared timeout, which the claim writes here (null after it: no limit)';

alter table pgqueue.jobs drop constraint jobs_running_has_owner;
alter table pgqueue.jobs add constraint jobs_running_has_owner check (
    state <> 'running' or (worker_id is not null and started_at is not null and attempt >= 1
                           and max_attempts is not null));

------------------------------------------------------------------------------
-- enqueue: max_attempts stays null unless given; delay counts from the statement
------------------------------------------------------------------------------

create temporary table pgqueue_enqueue_acl as
select p.proacl from pg_catalog.pg_proc p
 where p.oid = 'pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text)'::regprocedure;

drop function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text);

create function pgqueue.enqueue(
    task text,
    args jsonb default '[]',
    kwargs jsonb default '{}',
    queue text default 'default',
    priority integer default 0,
    run_at timestamptz default null,
    max_attempts integer default null,
    unique_key text default null,
    delay interval default null
) returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_id bigint;
    v_clock timestamptz := clock_timestamp();
    v_run_at timestamptz;
begin
    if enqueue.task is null or enqueue.task = '' or length(enqueue.task) > 512 then
        raise exception 'pgqueue.enqueue: task must be a name of 1 to 512 characters, got %', quote_nullable(enqueue.task)
            using errcode = '22023';
    end if;
    if enqueue.queue = '' or length(enqueue.queue) > 128 then
        raise exception 'pgqueue.enqueue: queue must be a name of 1 to 128 characters, got %', quote_literal(enqueue.queue)
            using errcode = '22023';
    end if;
    if enqueue.delay is not null and enqueue.run_at is not null then
        raise exception 'pgqueue.enqueue: give run_at or delay, not both'
            using errcode = '22023';
    end if;
    if enqueue.delay < interval '0' then
        raise exception 'pgqueue.enqueue: delay must be >= 0, got %', enqueue.delay
            using errcode = '22023';
    end if;
    -- a delay counts from this statement, not from the transaction's start
    v_run_at := coalesce(enqueue.run_at, v_clock + enqueue.delay, now());
    if not (v_run_at >= '0001-01-02 00:00:00+00' and v_run_at < '9999-12-31 00:00:00+00') then
        raise exception 'pgqueue.enqueue: run_at must be a finite time between 0001-01-02 and 9999-12-31 UTC, got %', v_run_at
            using errcode = '22023',
                  hint = 'pass null (or omit run_at and delay) to run the job now';
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
                enqueue.max_attempts, enqueue.unique_key,
                case when v_run_at > v_clock then 'scheduled' else 'available' end)
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
comment on function pgqueue.enqueue is 'Enqueue one job in the caller''s transaction; returns its id (the existing id for a live unique_key). delay counts from this statement (clock_timestamp()), run_at is absolute, neither: due now; max_attempts null: the task''s default';

-- Whoever could call the old function can call the new one, and no one else.
do $acl$
declare
    v_acl aclitem[] := (select a.proacl from pg_temp.pgqueue_enqueue_acl a);
    r record;
begin
    if v_acl is null then
        return;     -- the default privileges, as the new function has
    end if;
    revoke all on function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval) from public;
    for r in select x.grantee, x.is_grantable from aclexplode(v_acl) x
              where x.privilege_type = 'EXECUTE'
    loop
        execute format('grant execute on function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval) to %s%s',
                       case when r.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(r.grantee)) end,
                       case when r.is_grantable then ' with grant option' else '' end);
    end loop;
end $acl$;

drop table pg_temp.pgqueue_enqueue_acl;

------------------------------------------------------------------------------
-- claim: the claiming worker's declarations fill what the row left null
------------------------------------------------------------------------------

drop function pgqueue.claim(uuid, text[], text[], integer, text[], smallint[], timestamptz[], bigint[]);

create function pgqueue.claim(worker_id uuid, queues text[], tasks text[], batch integer,
                              position_queues text[] default null,
                              position_priorities smallint[] default null,
                              position_run_ats timestamptz[] default null,
                              position_ids bigint[] default null,
                              task_max_attempts integer[] default null,
                              task_timeouts double precision[] default null)
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
                   cancel_requested_at = null,
                   -- what the enqueuer left null: the claiming worker's declaration
                   max_attempts = coalesce(j.max_attempts,
                       claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
                   timeout = coalesce(j.timeout, make_interval(
                       secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
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
               cancel_requested_at = null,
               -- what the enqueuer left null: the claiming worker's declaration
               max_attempts = coalesce(j.max_attempts,
                   claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
               timeout = coalesce(j.timeout, make_interval(
                   secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
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
           cancel_requested_at = null,
           -- what the enqueuer left null: the claiming worker's declaration
           max_attempts = coalesce(j.max_attempts,
               claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
           timeout = coalesce(j.timeout, make_interval(
               secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
     where j.id = any(array(select c.id from candidates c))
    returning j.*;
end $$;
comment on function pgqueue.claim is 'Claim up to batch due jobs (priority desc, run_at, id), marking them running with a new attempt token, committed by the caller''s statement; optional positions (parallel arrays: queue, priority, run_at, id of the first job last claimed at that level) let the read skip what earlier claims passed; task_max_attempts and task_timeouts (seconds), parallel to tasks, are the claiming worker''s declarations, written into rows that left max_attempts or timeout null (max_attempts 20 without one)';

------------------------------------------------------------------------------
-- retry: a job never claimed keeps the task's default
------------------------------------------------------------------------------

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
           -- one more attempt if needed; null (never claimed) stays the task's default
           max_attempts = case when j.max_attempts is not null
                               then greatest(j.max_attempts, j.attempt + 1) end,
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

------------------------------------------------------------------------------
-- enqueue_workflow: max_attempts stays null unless given; delays from the statement
------------------------------------------------------------------------------

create or replace function pgqueue.enqueue_workflow(steps jsonb, name text default null,
                                         result_steps integer[] default null,
                                         result_is_list boolean default false)
returns table (workflow_id bigint, job_ids bigint[])
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_n integer;
    v_wf bigint;
    v_ids bigint[];
    v_bad text;
    v_error_ord integer;
    v_errors integer;
    v_e_ord integer[];
    v_e_dep integer[];
    v_e_pos integer[];
    v_deps integer[];
    v_seq regclass;
    v_clock timestamptz := clock_timestamp();
begin
    if steps is null or jsonb_typeof(steps) <> 'array' or jsonb_array_length(steps) = 0 then
        raise exception 'pgqueue.enqueue_workflow: steps must be a non-empty JSON array'
            using errcode = 'invalid_parameter_value';
    end if;
    v_n := jsonb_array_length(steps);
    select format('step %s: %s', x.ord - 1, case
               when jsonb_typeof(x.s) <> 'object' then 'not an object'
               when coalesce(x.s ->> 'task', '') = '' then 'no task'
               else 'depends_on and after must be arrays of step indexes' end)
      into v_bad
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where jsonb_typeof(x.s) <> 'object'
        or coalesce(x.s ->> 'task', '') = ''
        or jsonb_typeof(coalesce(x.s -> 'depends_on', '[]')) <> 'array'
        or jsonb_typeof(coalesce(x.s -> 'after', '[]')) <> 'array'
     limit 1;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;

    -- Every edge, flattened once: step ordinal (1-based), dependency index (0-based),
    -- position in the inputs (null for an ordering-only "after" edge).
    select coalesce(array_agg(e.ord), '{}'), coalesce(array_agg(e.dep), '{}'),
           coalesce(array_agg(e.pos), '{}')
      into v_e_ord, v_e_dep, v_e_pos
      from (select x.ord::integer as ord,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end as dep,
                   (d.n - 1)::integer as pos
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'depends_on', '[]')) with ordinality d(v, n)
            union all
            select x.ord::integer,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end,
                   null
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'after', '[]')) d(v)) e;
    -- Steps come in dependency order: a step may only wait for steps listed before it,
    -- which also rules out cycles.
    select format('step %s: %s', e.o - 1, case when e.d is null
                      then 'a dependency is not a step index (an integer)'
                      else format('dependency %s is not the index of an earlier step', e.d) end)
      into v_bad
      from unnest(v_e_ord, v_e_dep) e(o, d)
     where e.d is null or e.d >= e.o - 1
     limit 1;
    if v_bad is null then
        select format('step %s: dependency %s is listed twice', e.o - 1, e.d) into v_bad
          from unnest(v_e_ord, v_e_dep) e(o, d) group by e.o, e.d having count(*) > 1 limit 1;
    end if;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    select array_agg(coalesce(c.n, 0) order by g.i) into v_deps
      from generate_series(1, v_n) g(i)
      left join (select o, count(*)::integer as n from unnest(v_e_ord) o group by o) c on c.o = g.i;

    select count(*), min(x.ord) into v_errors, v_error_ord
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where coalesce((x.s ->> 'on_error')::boolean, false);
    if v_errors > 1 then
        raise exception 'pgqueue.enqueue_workflow: at most one step may be the error callback'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_errors = 1 and (v_deps[v_error_ord] > 0 or v_error_ord - 1 = any(v_e_dep)) then
        raise exception 'pgqueue.enqueue_workflow: the error callback has no dependencies and no dependents'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_n - v_errors < 1 then
        raise exception 'pgqueue.enqueue_workflow: a workflow needs a step besides its error callback'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into pgqueue.workflows as w (name, total, remaining, result_is_list)
    values (enqueue_workflow.name, v_n - v_errors, v_n - v_errors,
            coalesce(enqueue_workflow.result_is_list, false))
    returning w.id into v_wf;

    -- Ids first, so that step i gets v_ids[i] whatever order the insert runs in.
    v_seq := pg_get_serial_sequence('pgqueue.jobs', 'id')::regclass;
    select array_agg(nextval(v_seq)) into v_ids from generate_series(1, v_n);

    insert into pgqueue.jobs (id, task, args, kwargs, queue, priority, run_at, max_attempts,
                              state, workflow_id, workflow_step, deps_pending, inputs, any_outcome)
    overriding system value
    select v_ids[x.ord], x.s ->> 'task', coalesce(x.s -> 'args', '[]'), coalesce(x.s -> 'kwargs', '{}'),
           coalesce(x.s ->> 'queue', 'default'), coalesce((x.s ->> 'priority')::integer, 0),
           -- a delay of a step that can start at once counts from this statement;
           -- a waiting step's from its readiness (fan-in adds run_at - created_at)
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord
                     or coalesce((x.s ->> 'delay')::float8, 0) <= 0 then now()
                else v_clock end
               + make_interval(secs => greatest(coalesce((x.s ->> 'delay')::float8, 0), 0)),
           (x.s ->> 'max_attempts')::integer,    -- null: the task's default
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord then 'pending'
                when coalesce((x.s ->> 'delay')::float8, 0) > 0 then 'scheduled'
                else 'available' end,
           v_wf, x.s ->> 'step', v_deps[x.ord],
           case when x.ord = v_error_ord then 'error' else coalesce(x.s ->> 'inputs', 'none') end,
           coalesce((x.s ->> 'any_outcome')::boolean, false)
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     order by x.ord;

    insert into pgqueue.job_dependencies (job_id, depends_on, position)
    select v_ids[e.o], v_ids[e.d + 1], e.p
      from unnest(v_e_ord, v_e_dep, v_e_pos) e(o, d, p);

    update pgqueue.workflows w
       set on_error_job_id = case when v_error_ord is not null then v_ids[v_error_ord] end,
           result_job_ids = coalesce((select array_agg(v_ids[r.i + 1] order by r.n)
                                        from unnest(enqueue_workflow.result_steps)
                                             with ordinality r(i, n)
                                       where r.i between 0 and v_n - 1), '{}')
     where w.id = v_wf;

    workflow_id := v_wf;
    job_ids := v_ids;
    return next;
end $$;
comment on function pgqueue.enqueue_workflow is 'Enqueue a workflow in the caller''s transaction: steps is a JSON array of {task, args, kwargs, queue, priority, max_attempts (null: the task''s default), delay (s, counted from this statement for a step that can start at once, else from when the step becomes ready), step (name), inputs, any_outcome, depends_on (indexes of earlier steps whose results feed this one, in order), after (ordering-only indexes), on_error (the error callback)}; result_steps are the indexes whose results form the workflow result. Returns the workflow id and the job ids in step order';

------------------------------------------------------------------------------
-- pgqueue migration 0008: periodic jobs.
--
-- A schedule is a row of pgqueue.schedules: a task with its arguments, a cron
-- expression (in an IANA time zone) or a fixed interval, and the next slot to fire, a
-- UTC instant. Any live worker fires a due slot with pgqueue.fire_schedule(): it moves
-- next_slot forward only if it still holds the slot the worker read (compare-and-set)
-- and enqueues the slot's job in the same transaction, so each slot is enqueued once
-- whichever worker gets there first, and due-ness is decided by the database clock.
-- Slots are computed by the worker's cron code (SQL cannot iterate cron expressions);
-- a schedule added from SQL with no next slot gets one from the next worker that sees it.
--
-- Every job records its origin: schedule_name and schedule_slot. A unique index on the
-- pair is the last line of defence against a slot enqueued twice.

create table pgqueue.schedules (
    name            text primary key,
    task            text not null,
    args            jsonb not null default '[]',
    kwargs          jsonb not null default '{}',
    cron            text,
    every           interval,
    tz              text not null default 'UTC',
    queue           text,
    priority        smallint,
    catch_up        text not null default 'latest',
    catch_up_limit  integer not null default 100,
    pass_slot       boolean not null default false,
    paused          boolean not null default false,
    declared        boolean not null default true,
    next_slot       timestamptz,
    last_slot       timestamptz,
    last_fired_at   timestamptz,
    last_job_id     bigint,
    declared_by     text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),

    constraint schedules_name_valid check (length(name) between 1 and 200),
    constraint schedules_task_valid check (length(task) between 1 and 512),
    constraint schedules_cron_or_every check ((cron is null) <> (every is null)),
    constraint schedules_every_positive check (every is null or every >= interval '1 second'),
    constraint schedules_catch_up_valid check (catch_up in ('latest', 'all', 'none')),
    constraint schedules_catch_up_limit_valid check (catch_up_limit between 1 and 10000),
    constraint schedules_args_shape check (jsonb_typeof(args) = 'array' and jsonb_typeof(kwargs) = 'object')
);
comment on table pgqueue.schedules is 'Periodic jobs: one row per schedule; any live worker enqueues each due slot once (README "Periodic jobs")';
comment on column pgqueue.schedules.name is 'Schedule name, unique; default the task name';
comment on column pgqueue.schedules.task is 'Task enqueued at each slot';
comment on column pgqueue.schedules.args is 'Positional arguments of each job, tagged JSON array';
comment on column pgqueue.schedules.kwargs is 'Keyword arguments of each job, tagged JSON object';
comment on column pgqueue.schedules.cron is 'Five-field cron expression in tz (null for an interval schedule)';
comment on column pgqueue.schedules.every is 'Fixed interval, slots aligned to the Unix epoch (null for a cron schedule)';
comment on column pgqueue.schedules.tz is 'IANA time zone of the cron expression';
comment on column pgqueue.schedules.queue is 'Queue of each job; null: the task''s own';
comment on column pgqueue.schedules.priority is 'Priority of each job; null: the task''s own';
comment on column pgqueue.schedules.catch_up is 'Missed slots: latest (the most recent once), all (up to catch_up_limit), none';
comment on column pgqueue.schedules.pass_slot is 'The task takes a schedule_slot parameter: each job gets the slot in kwargs';
comment on column pgqueue.schedules.paused is 'A paused schedule fires nothing; resuming applies catch_up to the slots missed';
comment on column pgqueue.schedules.declared is 'False once a worker whose app registers the task no longer declares the schedule; such a schedule is paused until an operator resumes it';
comment on column pgqueue.schedules.next_slot is 'Next slot to fire (UTC instant); null until a worker computes it';
comment on column pgqueue.schedules.last_slot is 'Most recent slot enqueued';
comment on column pgqueue.schedules.last_fired_at is 'When the most recent slot was enqueued (database clock)';
comment on column pgqueue.schedules.last_job_id is 'Job enqueued for the most recent slot or trigger';
comment on column pgqueue.schedules.declared_by is 'The worker that last wrote the declaration';

alter table pgqueue.jobs add column schedule_name text, add column schedule_slot timestamptz;
comment on column pgqueue.jobs.schedule_name is 'Schedule that enqueued the job (null for other jobs)';
comment on column pgqueue.jobs.schedule_slot is 'The slot (UTC instant) the job was enqueued for; null for a manual trigger';

create unique index jobs_schedule_slot_idx on pgqueue.jobs (schedule_name, schedule_slot)
    where schedule_slot is not null;

-- Wake the schedulers when a schedule changes (declared, paused, resumed, added).
create function pgqueue.notify_schedules() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
begin
    perform pg_notify('pgqueue_schedules', '');
    return null;
end $$;

create trigger schedules_notify
    after insert or update of next_slot, paused, declared, cron, every, tz on pgqueue.schedules
    for each statement execute function pgqueue.notify_schedules();

create function pgqueue.schedule_job(s pgqueue.schedules, slot timestamptz)
returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
declare
    v_id bigint;
begin
    v_id := pgqueue.enqueue(s.task, s.args,
                            case when s.pass_slot then s.kwargs || jsonb_build_object('schedule_slot',
                                case when slot is null then 'null'::jsonb
                                     else jsonb_build_object('$type', 'datetime', 'value',
                                          to_char(slot at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00')
                                end)
                                 else s.kwargs end,
                            queue => coalesce(s.queue, 'default'),
                            priority => coalesce(s.priority, 0));
    update pgqueue.jobs set schedule_name = s.name, schedule_slot = slot where id = v_id;
    return v_id;
end $$;
comment on function pgqueue.schedule_job is 'Internal: enqueue one job of schedule s for slot (null: a manual trigger)';

create function pgqueue.fire_schedule(name text, expected_slot timestamptz, slots timestamptz[],
                                      next_slot timestamptz)
returns bigint[]
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_variable
declare
    s pgqueue.schedules;
    v_slot timestamptz;
    v_ids bigint[] := '{}';
    v_id bigint;
begin
    -- Compare-and-set: only the caller that still sees expected_slot moves the schedule
    -- on, and only when that slot is due on the database clock.
    update pgqueue.schedules t
       set next_slot = fire_schedule.next_slot,
           last_slot = coalesce(slots[cardinality(slots)], t.last_slot),
           last_fired_at = case when cardinality(slots) > 0 then now() else t.last_fired_at end,
           updated_at = now()
     where t.name = fire_schedule.name
       and t.next_slot is not distinct from expected_slot
       and not t.paused and t.declared
       and (expected_slot is null or expected_slot <= now())
       and fire_schedule.next_slot > now()
    returning t.* into s;
    if not found then
        return null;
    end if;
    foreach v_slot in array coalesce(slots, '{}') loop
        continue when exists (select 1 from pgqueue.jobs j
                               where j.schedule_name = s.name and j.schedule_slot = v_slot);
        v_id := pgqueue.schedule_job(s, v_slot);
        v_ids := v_ids || v_id;
    end loop;
    if cardinality(v_ids) > 0 then
        update pgqueue.schedules t set last_job_id = v_ids[cardinality(v_ids)] where t.name = s.name;
    end if;
    return v_ids;
end $$;
comment on function pgqueue.fire_schedule is 'Enqueue the given slots of a due schedule and move its next slot on, if next_slot is still expected_slot; returns the new job ids, or null when another worker fired it first';

create function pgqueue.trigger_schedule(name text) returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
declare
    s pgqueue.schedules;
    v_id bigint;
begin
    select * into s from pgqueue.schedules t where t.name = trigger_schedule.name;
    if not found then
        raise exception 'pgqueue.trigger_schedule: no schedule named %', quote_literal(trigger_schedule.name)
            using errcode = 'P0002', hint = 'pgqueue schedules list shows the schedules';
    end if;
    v_id := pgqueue.schedule_job(s, null);
    update pgqueue.schedules t set last_job_id = v_id, updated_at = now() where t.name = s.name;
    return v_id;
end $$;
comment on function pgqueue.trigger_schedule is 'Enqueue one run of a schedule now, outside its slot series; returns the job id';

create function pgqueue.pause_schedule(name text, paused boolean default true) returns boolean
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
declare
    v_found boolean;
begin
    -- Resuming under catch_up 'none' forgets the slots missed while paused: a worker
    -- computes the next slot after now. Resuming also adopts an undeclared schedule.
    update pgqueue.schedules t
       set paused = pause_schedule.paused,
           declared = t.declared or not pause_schedule.paused,
           declared_by = case when not pause_schedule.paused and not t.declared
                              then 'operator' else t.declared_by end,
           next_slot = case when not pause_schedule.paused and t.paused and t.catch_up = 'none'
                            then null else t.next_slot end,
           updated_at = now()
     where t.name = pause_schedule.name
    returning true into v_found;
    if v_found is null then
        raise exception 'pgqueue.pause_schedule: no schedule named %', quote_literal(pause_schedule.name)
            using errcode = 'P0002', hint = 'pgqueue schedules list shows the schedules';
    end if;
    return true;
end $$;
comment on function pgqueue.pause_schedule is 'Pause (paused => true) or resume (false) a schedule';

create function pgqueue.add_schedule(name text, task text, args jsonb default '[]',
                                     kwargs jsonb default '{}', cron text default null,
                                     every interval default null, tz text default 'UTC',
                                     queue text default null, priority integer default null,
                                     catch_up text default 'latest',
                                     catch_up_limit integer default 100)
returns void
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
begin
    if tz is null or not exists (select 1 from pg_timezone_names where pg_timezone_names.name = add_schedule.tz) then
        raise exception 'pgqueue.add_schedule: unknown time zone %', quote_nullable(tz)
            using errcode = '22023', hint = 'use an IANA name such as UTC or Europe/Paris';
    end if;
    insert into pgqueue.schedules as t (name, task, args, kwargs, cron, every, tz, queue,
                                        priority, catch_up, catch_up_limit, declared_by)
    values (add_schedule.name, add_schedule.task, coalesce(add_schedule.args, '[]'),
            coalesce(add_schedule.kwargs, '{}'), add_schedule.cron, add_schedule.every,
            add_schedule.tz, add_schedule.queue, add_schedule.priority,
            add_schedule.catch_up, add_schedule.catch_up_limit, 'sql')
    on conflict on constraint schedules_pkey do update
       set task = excluded.task, args = excluded.args, kwargs = excluded.kwargs,
           cron = excluded.cron, every = excluded.every, tz = excluded.tz,
           queue = excluded.queue, priority = excluded.priority,
           catch_up = excluded.catch_up, catch_up_limit = excluded.catch_up_limit,
           declared = true, declared_by = 'sql', updated_at = now(),
           next_slot = case when (t.cron, t.every, t.tz) is distinct from
                                 (excluded.cron, excluded.every, excluded.tz)
                            then null else t.next_slot end;
end $$;
comment on function pgqueue.add_schedule is 'Add or replace a schedule from SQL; a worker computes its next slot';

------------------------------------------------------------------------------
-- pgqueue migration 0009: the role split (sql/roles.sql, `pgqueue roles`).
--
-- pgqueue.enqueue_workflow runs with its owner's rights (security definer), so that a
-- producer role enqueues workflows without any privilege on pgqueue.workflows or
-- pgqueue.job_dependencies: direct writes there could attach edges to other jobs or
-- rewrite other workflows. The function writes only the rows of the workflow it
-- creates (a step's dependencies are indexes of earlier steps of the same call),
-- builds no SQL from its arguments, names every table with its schema, and pins its
-- search_path with pg_temp last, so a caller's temporary objects cannot stand in for
-- pgqueue's. Only roles granted EXECUTE may call it.

alter function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean)
    security definer set search_path = pg_catalog, pgqueue, pg_temp;
revoke execute on function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean) from public;

------------------------------------------------------------------------------
-- pgqueue migration 0010: the dashboard's failure views stay fast on large tables.
--
-- An operator's first question in an incident is "what failed, and can I retry it?": the
-- dashboard lists and counts the discarded jobs of a queue (and bulk-retries them). No
-- index reached them, so counting them read the whole table (about 190 ms per million
-- finished jobs). This partial index holds only discarded jobs: inserting and claiming
-- jobs never touch it, a job enters it once, when it is discarded, and retrying it takes
-- it out.

create index jobs_discarded_idx on pgqueue.jobs (queue, id)
    where state = 'discarded';

------------------------------------------------------------------------------
-- pgqueue migration 0011: batches filled over time, and steps that replace themselves.
--
-- Both reuse the edges and counters of 0002; there is no new resolver and no polling.
--
-- A batch is a workflow left open. pgqueue.open_batch enqueues a workflow of two steps:
-- a *seal* step (task 'pgqueue.batch_seal', never claimed: it stays 'pending' until
-- pgqueue.seal_batch moves it to 'completed') and the callback, which waits for the
-- seal by an ordering-only edge. pgqueue.add_to_batch adds members: each member is a
-- job of the workflow, the callback gets one edge per member (position = order of
-- addition) and its deps_pending grows by as many. The callback's counter therefore
-- reaches zero in the one transaction that makes "sealed and every member terminal"
-- true: the seal's, or the last member's completion, whichever commits later. Adding
-- and sealing lock the seal step first, so an add and a seal are serialized, and the
-- locks are then taken in the fan-in's order (callback, then workflow row).
--
-- A running step replaces itself with pgqueue.replace_step, called by the worker in the
-- transaction that records the step's completion: the replacement's steps join the
-- workflow, every dependent of the step also waits (ordering-only edges) for the
-- replacement's final steps, and the step completes with jobs.replaced_by naming them.
-- Its result, wherever it is read (pgqueue.job_inputs, a workflow's result), is
-- pgqueue.step_result: the replacement's result (a list for a group), recursively.
--
-- workflows.max_steps bounds the steps one workflow can reach (default 1,000,000), so
-- a runaway recursion of replacements fails cleanly: the step that would cross it is
-- discarded (error type pgqueue.StepLimitExceeded) and the workflow fails as usual.

------------------------------------------------------------------------------
-- new columns
------------------------------------------------------------------------------

alter table pgqueue.workflows
    add column max_steps             integer not null default 1000000,
    add column batch_seal_job_id     bigint,
    add column batch_callback_job_id bigint,
    add column batch_members         integer,
    add column sealed_at             timestamptz,
    add constraint workflows_max_steps_bound check (max_steps >= 1 and total <= max_steps),
    add constraint workflows_batch_fields check (
        (batch_seal_job_id is null) = (batch_members is null)
        and (batch_members is null or batch_members >= 0)
        and (sealed_at is null or batch_seal_job_id is not null));

comment on column pgqueue.workflows.max_steps is 'Most steps the workflow may reach (total), batch members and replacements included; default 1,000,000';
comment on column pgqueue.workflows.batch_seal_job_id is 'For a batch: its seal step (task pgqueue.batch_seal), pending while the batch is open, completed by pgqueue.seal_batch; null for other workflows';
comment on column pgqueue.workflows.batch_callback_job_id is 'For a batch: its callback step, which waits for the seal and for every member; null without a callback';
comment on column pgqueue.workflows.batch_members is 'For a batch: members added so far (pgqueue.add_to_batch); null for other workflows';
comment on column pgqueue.workflows.sealed_at is 'For a batch: when pgqueue.seal_batch sealed it; null while open';

alter table pgqueue.jobs
    add column replaced_by      bigint[],
    add column replaced_by_list boolean;

comment on column pgqueue.jobs.replaced_by is 'For a workflow step that replaced itself (ctx.replace): the final steps of its replacement, whose results make its result (pgqueue.step_result); null otherwise';
comment on column pgqueue.jobs.replaced_by_list is 'True when the replacement''s result is the list of replaced_by''s results (it ends in a group), false for the single result of replaced_by[1]';

------------------------------------------------------------------------------
-- results of replaced steps
------------------------------------------------------------------------------

create function pgqueue.step_result(job_id bigint)
returns jsonb
language plpgsql stable set search_path = pg_catalog, pgqueue as $$
declare
    v_result jsonb;
    v_by bigint[];
    v_list boolean;
begin
    select j.result, j.replaced_by, j.replaced_by_list into v_result, v_by, v_list
      from pgqueue.jobs j where j.id = step_result.job_id;
    if v_by is null then
        return v_result;
    elsif v_list then
        return coalesce((select jsonb_agg(pgqueue.step_result(r.id) order by r.n)
                           from unnest(v_by) with ordinality r(id, n)), '[]');
    else
        return pgqueue.step_result(v_by[1]);
    end if;
end $$;
comment on function pgqueue.step_result is 'A step''s result: jobs.result, or for a step that replaced itself the result of its replacement (the list of results of a group), followed through nested replacements';

create or replace function pgqueue.job_inputs(job_id bigint)
returns jsonb
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
-- volatile on purpose: a fresh snapshot, so a claim that saw the job become available
-- also sees the results committed by the same transaction.
declare
    v_out jsonb;
begin
    select case j.inputs
        when 'none' then null
        when 'previous' then jsonb_build_array(
            (select case when p.replaced_by is null then p.result
                         else pgqueue.step_result(p.id) end
               from pgqueue.job_dependencies d
               join pgqueue.jobs p on p.id = d.depends_on
              where d.job_id = j.id and d.position is not null
              order by d.position limit 1))
        when 'results' then jsonb_build_array(coalesce(
            (select jsonb_agg(case when p.replaced_by is null then p.result
                                   else pgqueue.step_result(p.id) end order by d.position)
               from pgqueue.job_dependencies d
               join pgqueue.jobs p on p.id = d.depends_on
              where d.job_id = j.id and d.position is not null), '[]'))
        when 'outcomes' then jsonb_build_array(coalesce(
            (select jsonb_agg(jsonb_build_object(
                        'job_id', p.id, 'state', p.state,
                        'result', case when p.state <> 'completed' then null
                                       when p.replaced_by is null then p.result
                                       else pgqueue.step_result(p.id) end,
                        'error', case when p.state <> 'completed' then p.errors -> -1 end)
                    order by d.position)
               from pgqueue.job_dependencies d
               join pgqueue.jobs p on p.id = d.depends_on
              where d.job_id = j.id and d.position is not null), '[]'))
        when 'error' then
            (select jsonb_build_array(w.failures -> 0 -> 'job_id', w.failures -> 0)
               from pgqueue.workflows w where w.id = j.workflow_id)
        end
      into v_out
      from pgqueue.jobs j
     where j.id = job_inputs.job_id;
    return v_out;
exception when others then
    -- e.g. results too large for one jsonb value: an error here would fail the whole
    -- claim of the queue, again at every attempt; the worker fails the step instead.
    return jsonb_build_object('pgqueue_inputs_error', sqlerrm);
end $$;
comment on function pgqueue.job_inputs is 'The values a workflow step receives before its own args, as a JSON array (null when it receives none): [result] for inputs=previous, [[results...]] for results, [[{job_id, state, result, error}...]] for outcomes, [failed_job_id, failure] for the error callback; a replaced step''s result is its replacement''s (pgqueue.step_result); {"pgqueue_inputs_error": message} when they cannot be read. Workers call it when the step starts';

------------------------------------------------------------------------------
-- batches
------------------------------------------------------------------------------

create function pgqueue.open_batch(callback jsonb default null, on_error jsonb default null,
                                   name text default null, max_steps integer default null)
returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_steps jsonb;
    v_wf bigint;
    v_ids bigint[];
begin
    if callback is not null and (jsonb_typeof(callback) <> 'object'
                                 or coalesce(callback ->> 'task', '') = '') then
        raise exception 'pgqueue.open_batch: callback must be a step object with a task'
            using errcode = 'invalid_parameter_value';
    end if;
    if on_error is not null and (jsonb_typeof(on_error) <> 'object'
                                 or coalesce(on_error ->> 'task', '') = '') then
        raise exception 'pgqueue.open_batch: on_error must be a step object with a task'
            using errcode = 'invalid_parameter_value';
    end if;
    if max_steps is not null and max_steps < 2 then
        raise exception 'pgqueue.open_batch: max_steps must be at least 2, got %', max_steps
            using errcode = 'invalid_parameter_value';
    end if;
    v_steps := jsonb_build_array(jsonb_build_object(
        'task', 'pgqueue.batch_seal', 'step', 'seal',
        'queue', coalesce(callback ->> 'queue', 'default')));
    if callback is not null then
        v_steps := v_steps || jsonb_build_array(
            (callback - 'depends_on' - 'after' - 'on_error' - 'any_outcome')
            || jsonb_build_object('after', jsonb_build_array(0),
                                  'inputs', case when callback ->> 'inputs' = 'none' then 'none'
                                                 else 'results' end));
    end if;
    if on_error is not null then
        v_steps := v_steps || jsonb_build_array(
            (on_error - 'depends_on' - 'after') || jsonb_build_object('on_error', true));
    end if;
    select e.workflow_id, e.job_ids into v_wf, v_ids
      from pgqueue.enqueue_workflow(v_steps, open_batch.name,
                                    case when callback is not null then array[1] end,
                                    callback is null) e;
    -- The seal step is never claimed: it waits for pgqueue.seal_batch.
    update pgqueue.jobs j set state = 'pending' where j.id = v_ids[1];
    update pgqueue.workflows w
       set batch_seal_job_id = v_ids[1],
           batch_callback_job_id = case when callback is not null then v_ids[2] end,
           batch_members = 0,
           max_steps = coalesce(open_batch.max_steps, w.max_steps)
     where w.id = v_wf;
    return v_wf;
end $$;
comment on function pgqueue.open_batch is 'Open a batch in the caller''s transaction: callback and on_error are step objects as in pgqueue.enqueue_workflow ({task, args, kwargs, queue, priority, max_attempts, delay, step}); the callback receives the list of the members'' results in the order they were added (inputs "none": nothing). Returns the batch''s workflow id';

create function pgqueue.add_to_batch(batch_id bigint, members jsonb)
returns bigint[]
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_seal bigint;
    v_seal_state text;
    v_wf record;
    v_n integer;
    v_ids bigint[];
    v_bad text;
    v_seq regclass;
    v_clock timestamptz := clock_timestamp();
begin
    if members is null or jsonb_typeof(members) <> 'array' then
        raise exception 'pgqueue.add_to_batch: members must be a JSON array of step objects'
            using errcode = 'invalid_parameter_value';
    end if;
    select w.batch_seal_job_id into v_seal from pgqueue.workflows w where w.id = add_to_batch.batch_id;
    if v_seal is null then
        raise exception 'pgqueue.add_to_batch: no batch with id %', add_to_batch.batch_id
            using errcode = 'invalid_parameter_value';
    end if;
    -- The seal step's lock serializes adds with each other and with the seal.
    select j.state into v_seal_state from pgqueue.jobs j where j.id = v_seal for update;
    if v_seal_state is distinct from 'pending' then
        raise exception 'pgqueue.add_to_batch: batch % is %: nothing can be added',
                        add_to_batch.batch_id,
                        case when v_seal_state = 'completed' then 'sealed' else 'cancelled' end
            using errcode = 'object_not_in_prerequisite_state';
    end if;
    v_n := jsonb_array_length(members);
    if v_n = 0 then
        return '{}';
    end if;
    select format('member %s: %s', x.ord - 1, case
               when jsonb_typeof(x.s) <> 'object' then 'not an object'
               when coalesce(x.s ->> 'task', '') = '' then 'no task'
               else 'a member has no dependencies (depends_on, after, on_error)' end)
      into v_bad
      from jsonb_array_elements(members) with ordinality x(s, ord)
     where jsonb_typeof(x.s) <> 'object' or coalesce(x.s ->> 'task', '') = ''
        or x.s ? 'depends_on' or x.s ? 'after' or x.s ? 'on_error'
     limit 1;
    if v_bad is not null then
        raise exception 'pgqueue.add_to_batch: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    select w.total, w.max_steps, w.batch_members, w.batch_callback_job_id into v_wf
      from pgqueue.workflows w where w.id = add_to_batch.batch_id;
    if v_wf.total + v_n > v_wf.max_steps then
        raise exception 'pgqueue.add_to_batch: batch % would have % steps, more than its bound of %',
                        add_to_batch.batch_id, v_wf.total + v_n, v_wf.max_steps
            using errcode = 'program_limit_exceeded';
    end if;

    -- Lock order as in the fan-in: the callback, then the workflow row.
    if v_wf.batch_callback_job_id is not null then
        update pgqueue.jobs j set deps_pending = j.deps_pending + v_n
         where j.id = v_wf.batch_callback_job_id;
    end if;
    v_seq := pg_get_serial_sequence('pgqueue.jobs', 'id')::regclass;
    select array_agg(nextval(v_seq)) into v_ids from generate_series(1, v_n);
    insert into pgqueue.jobs (id, task, args, kwargs, queue, priority, run_at, max_attempts,
                              state, workflow_id, workflow_step, deps_pending, inputs, any_outcome)
    overriding system value
    select v_ids[x.ord], x.s ->> 'task', coalesce(x.s -> 'args', '[]'), coalesce(x.s -> 'kwargs', '{}'),
           coalesce(x.s ->> 'queue', 'default'), coalesce((x.s ->> 'priority')::integer, 0),
           case when coalesce((x.s ->> 'delay')::float8, 0) <= 0 then now() else v_clock end
               + make_interval(secs => greatest(coalesce((x.s ->> 'delay')::float8, 0), 0)),
           (x.s ->> 'max_attempts')::integer,
           case when coalesce((x.s ->> 'delay')::float8, 0) > 0 then 'scheduled' else 'available' end,
           add_to_batch.batch_id, x.s ->> 'step', 0, 'none', false
      from jsonb_array_elements(members) with ordinality x(s, ord)
     order by x.ord;
    if v_wf.batch_callback_job_id is not null then
        insert into pgqueue.job_dependencies (job_id, depends_on, position)
        select v_wf.batch_callback_job_id, m.id, v_wf.batch_members + (m.n - 1)::integer
          from unnest(v_ids) with ordinality m(id, n);
    end if;
    update pgqueue.workflows w
       set total = w.total + v_n,
           remaining = w.remaining + v_n,
           batch_members = w.batch_members + v_n,
           result_job_ids = case when w.batch_callback_job_id is null
                                 then w.result_job_ids || v_ids else w.result_job_ids end
     where w.id = add_to_batch.batch_id;
    return v_ids;
end $$;
comment on function pgqueue.add_to_batch is 'Add members to an open batch in the caller''s transaction: members is a JSON array of step objects ({task, args, kwargs, queue, priority, max_attempts, delay, step}); returns their job ids. Raises object_not_in_prerequisite_state once the batch is sealed (or cancelled). Holds the batch''s lock until the caller commits: keep the transaction short';

create function pgqueue.seal_batch(batch_id bigint)
returns boolean
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_seal bigint;
begin
    select w.batch_seal_job_id into v_seal from pgqueue.workflows w where w.id = seal_batch.batch_id;
    if v_seal is null then
        raise exception 'pgqueue.seal_batch: no batch with id %', seal_batch.batch_id
            using errcode = 'invalid_parameter_value';
    end if;
    -- Completing the seal step satisfies the callback's edge to it (fan-in trigger):
    -- if every member is already terminal, the callback becomes available here.
    update pgqueue.jobs j set state = 'completed', finished_at = now()
     where j.id = v_seal and j.state = 'pending';
    if not found then
        return false;    -- sealed (or cancelled) before
    end if;
    update pgqueue.workflows w set sealed_at = now() where w.id = seal_batch.batch_id;
    return true;
end $$;
comment on function pgqueue.seal_batch is 'Seal a batch in the caller''s transaction: nothing can be added afterwards, and the callback runs once every member is terminal (at once if they all are). Returns true, or false if it was already sealed or cancelled';

------------------------------------------------------------------------------
-- a running step replaces itself
------------------------------------------------------------------------------

create function pgqueue.replace_step(worker_id uuid, job_id bigint, job_attempt integer,
                                     steps jsonb, result_steps integer[],
                                     result_is_list boolean)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_job record;
    v_wf record;
    v_n integer := coalesce(jsonb_array_length(steps), 0);
    v_tmp bigint;
    v_ids bigint[] := '{}';
    v_tails bigint[];
begin
    -- Fenced like pgqueue.complete: only the attempt that runs the step replaces it.
    select j.id, j.workflow_id, j.inputs into v_job
      from pgqueue.jobs j
     where j.id = replace_step.job_id and j.state = 'running'
       and j.attempt = replace_step.job_attempt and j.worker_id = replace_step.worker_id
       for update;
    if not found then
        return null;
    end if;
    if v_job.workflow_id is null or v_job.inputs = 'error' then
        raise exception 'pgqueue.replace_step: job % is not a workflow step (or is an error callback)',
                        replace_step.job_id using errcode = 'invalid_parameter_value';
    end if;
    if exists (select 1 from jsonb_array_elements(coalesce(steps, '[]')) s
                where coalesce((s ->> 'on_error')::boolean, false)) then
        raise exception 'pgqueue.replace_step: a replacement has no error callback of its own'
            using errcode = 'invalid_parameter_value';
    end if;
    select w.state, w.total, w.max_steps into v_wf
      from pgqueue.workflows w where w.id = v_job.workflow_id;
    if v_wf.state = 'cancelled' then
        v_n := 0;     -- nothing more runs in a cancelled workflow
    elsif v_wf.total + v_n > v_wf.max_steps then
        update pgqueue.jobs j
           set state = 'discarded', finished_at = now(),
               errors = j.errors || jsonb_build_array(jsonb_build_object(
                   'at', now(), 'attempt', j.attempt, 'worker', replace_step.worker_id,
                   'type', 'pgqueue.StepLimitExceeded',
                   'message', format('replacing the step would bring workflow %s to %s steps, '
                                     'more than its bound of %s', v_job.workflow_id,
                                     v_wf.total + v_n, v_wf.max_steps),
                   'traceback', null))
         where j.id = replace_step.job_id;
        perform pg_notify('pgqueue_done', replace_step.job_id::text);
        return 'discarded';
    end if;

    if v_n > 0 then
        -- The replacement is validated and written by enqueue_workflow, as a workflow of
        -- its own that then joins this one.
        select e.workflow_id, e.job_ids into v_tmp, v_ids
          from pgqueue.enqueue_workflow(steps) e;
        update pgqueue.jobs j set workflow_id = v_job.workflow_id where j.workflow_id = v_tmp;
        delete from pgqueue.workflows w where w.id = v_tmp;
    end if;
    select coalesce(array_agg(v_ids[r.i + 1] order by r.n), '{}') into v_tails
      from unnest(coalesce(replace_step.result_steps, '{}')) with ordinality r(i, n)
     where r.i between 0 and v_n - 1;

    if cardinality(v_tails) > 0 then
        -- Every dependent still waiting for this step waits for the replacement too.
        -- Lock order as in the fan-in: dependents by id, then the workflow row.
        perform 1 from pgqueue.jobs j
         where j.id in (select d.job_id from pgqueue.job_dependencies d
                         where d.depends_on = replace_step.job_id and not d.satisfied)
         order by j.id for update;
        insert into pgqueue.job_dependencies (job_id, depends_on, position)
        select d.job_id, t.id, null
          from pgqueue.job_dependencies d, unnest(v_tails) t(id)
         where d.depends_on = replace_step.job_id and not d.satisfied;
        update pgqueue.jobs j set deps_pending = j.deps_pending + cardinality(v_tails)
         where j.id in (select d.job_id from pgqueue.job_dependencies d
                         where d.depends_on = replace_step.job_id and not d.satisfied);
    end if;
    if v_n > 0 then
        update pgqueue.workflows w
           set total = w.total + v_n, remaining = w.remaining + v_n
         where w.id = v_job.workflow_id;
    end if;
    -- The completion: the fan-in trigger satisfies this step's edges at its end.
    update pgqueue.jobs j
       set state = 'completed', result = null, finished_at = now(),
           replaced_by = v_tails, replaced_by_list = coalesce(replace_step.result_is_list, false)
     where j.id = replace_step.job_id;
    perform pg_notify('pgqueue_done', replace_step.job_id::text);
    return 'completed';
end $$;
comment on function pgqueue.replace_step is 'Complete a running workflow step (fenced by worker and attempt) by replacing it: steps (as in pgqueue.enqueue_workflow, without an error callback) join its workflow, its dependents wait for the steps listed in result_steps and receive their result (a list when result_is_list). Returns the step''s new state: completed; discarded when the workflow would exceed max_steps; null when the attempt no longer owns the step';

------------------------------------------------------------------------------
-- where is my batch
------------------------------------------------------------------------------

create or replace view pgqueue.workflow_steps as
select j.workflow_id,
       w.name as workflow_name,
       w.state as workflow_state,
       j.id as job_id,
       j.workflow_step as step,
       j.task,
       j.queue,
       j.state,
       j.attempt,
       j.max_attempts,
       j.deps_pending,
       coalesce((select array_agg(d.depends_on order by d.position nulls last, d.depends_on)
                   from pgqueue.job_dependencies d where d.job_id = j.id), '{}') as depends_on,
       j.inputs,
       j.any_outcome,
       j.inputs = 'error' as is_error_callback,
       j.created_at,
       j.started_at,
       j.finished_at,
       extract(epoch from j.finished_at - j.started_at)::double precision as duration_seconds,
       j.errors -> -1 ->> 'message' as last_error,
       case when w.batch_seal_job_id is null then null
            when w.finished_at is not null then 'finished'
            when w.sealed_at is not null then 'sealed'
            else 'open' end as batch_state,
       case when w.batch_seal_job_id is null then null
            when j.id = w.batch_seal_job_id then 'seal'
            when j.id = w.batch_callback_job_id then 'callback'
            when j.inputs = 'error' then 'on_error'
            else 'member' end as batch_role,
       j.replaced_by
  from pgqueue.jobs j
  join pgqueue.workflows w on w.id = j.workflow_id;
comment on view pgqueue.workflow_steps is 'One row per workflow step: state, attempts, what it waits for (depends_on job ids), timings and last error; for a batch its state (open, sealed, finished) and each step''s role (seal, callback, on_error, member); replaced_by for a step that replaced itself. select * from pgqueue.workflow_steps where workflow_id = 42 order by job_id';

create view pgqueue.batches as
select w.id as batch_id,
       w.name,
       case when w.finished_at is not null then 'finished'
            when w.sealed_at is not null then 'sealed'
            else 'open' end as state,
       w.state as workflow_state,
       w.batch_members as members,
       m.completed, m.discarded, m.cancelled, m.unfinished,
       w.batch_callback_job_id as callback_job_id,
       c.task as callback_task,
       c.state as callback_state,
       w.on_error_job_id,
       w.created_at,
       w.sealed_at,
       w.finished_at
  from pgqueue.workflows w
  left join pgqueue.jobs c on c.id = w.batch_callback_job_id
  cross join lateral (
      -- members, and the steps that replaced members
      select count(*) filter (where j.state = 'completed')::integer as completed,
             count(*) filter (where j.state = 'discarded')::integer as discarded,
             count(*) filter (where j.state = 'cancelled')::integer as cancelled,
             count(*) filter (where j.finished_at is null)::integer as unfinished
        from pgqueue.jobs j
       where j.workflow_id = w.id and j.id <> w.batch_seal_job_id
         and j.id is distinct from w.batch_callback_job_id and j.inputs <> 'error') m
 where w.batch_seal_job_id is not null;
comment on view pgqueue.batches is 'One row per batch: state (open, sealed, finished), members added, how many of its member steps (members and their replacements) ended completed, discarded, cancelled or are unfinished, and its callback. select * from pgqueue.batches where batch_id = 42';

-- Producers open, fill and seal batches without any write access to pgqueue.workflows
-- or pgqueue.job_dependencies (the role split): like enqueue_workflow, these run with
-- their owner's rights, build no SQL from their arguments, write only the rows of the
-- batch they are given, and pin their search_path with pg_temp last.
alter function pgqueue.open_batch(jsonb, jsonb, text, integer)
    security definer set search_path = pg_catalog, pgqueue, pg_temp;
alter function pgqueue.add_to_batch(bigint, jsonb)
    security definer set search_path = pg_catalog, pgqueue, pg_temp;
alter function pgqueue.seal_batch(bigint)
    security definer set search_path = pg_catalog, pgqueue, pg_temp;
revoke execute on function pgqueue.open_batch(jsonb, jsonb, text, integer),
    pgqueue.add_to_batch(bigint, jsonb), pgqueue.seal_batch(bigint) from public;

------------------------------------------------------------------------------
-- pgqueue migration 0012: job metadata.
--
-- Every job carries meta, a small JSON object of string values set at enqueue and never
-- changed by pgqueue itself: the W3C trace context of the enqueuing request (keys
-- traceparent and tracestate, see README "Tracing"), a tenant, a request id. Tasks read
-- it as ctx.meta; SQL reads pgqueue.jobs.meta. The bound (4096 bytes of JSON text, string
-- values only) is a named constraint, so a direct insert cannot break it either.
--
-- pgqueue.enqueue and pgqueue.enqueue_workflow gain a meta argument (replacing each
-- function keeps the privileges granted on the old one); a workflow step's own meta
-- replaces the workflow's, which every other step inherits.

------------------------------------------------------------------------------
-- jobs.meta
------------------------------------------------------------------------------

alter table pgqueue.jobs add column meta jsonb not null default '{}';
alter table pgqueue.jobs add constraint jobs_meta_valid check (
    jsonb_typeof(meta) = 'object'
    and octet_length(meta::text) <= 4096
    and not jsonb_path_exists(meta, '$.* ? (@.type() != "string")'));
comment on column pgqueue.jobs.meta is 'Job metadata: a JSON object of string values (at most 4096 bytes as text), set at enqueue: W3C trace context (traceparent, tracestate), tenant, request id';

create function pgqueue.check_meta(meta jsonb, what text) returns void
language plpgsql immutable set search_path = pg_catalog, pgqueue as $$
begin
    if meta is null then
        return;
    end if;
    if jsonb_typeof(meta) <> 'object'
       or jsonb_path_exists(meta, '$.* ? (@.type() != "string")') then
        raise exception '%: meta must be a JSON object of string values, got %', what, left(meta::text, 200)
            using errcode = '22023';
    end if;
    if octet_length(meta::text) > 4096 then
        raise exception '%: meta must be at most 4096 bytes as JSON text, got %', what, octet_length(meta::text)
            using errcode = '22023';
    end if;
end $$;
comment on function pgqueue.check_meta is 'Raise invalid_parameter_value unless meta is null or a JSON object of string values of at most 4096 bytes (the jobs_meta_valid constraint, with a message)';

------------------------------------------------------------------------------
-- enqueue: meta
------------------------------------------------------------------------------

create temporary table pgqueue_enqueue_acl as
select p.proacl from pg_catalog.pg_proc p where p.oid = 'pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval)'::regprocedure;

drop function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval);

create function pgqueue.enqueue(
    task text,
    args jsonb default '[]',
    kwargs jsonb default '{}',
    queue text default 'default',
    priority integer default 0,
    run_at timestamptz default null,
    max_attempts integer default null,
    unique_key text default null,
    delay interval default null,
    meta jsonb default null
) returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_id bigint;
    v_clock timestamptz := clock_timestamp();
    v_run_at timestamptz;
begin
    if enqueue.task is null or enqueue.task = '' or length(enqueue.task) > 512 then
        raise exception 'pgqueue.enqueue: task must be a name of 1 to 512 characters, got %', quote_nullable(enqueue.task)
            using errcode = '22023';
    end if;
    if enqueue.queue = '' or length(enqueue.queue) > 128 then
        raise exception 'pgqueue.enqueue: queue must be a name of 1 to 128 characters, got %', quote_literal(enqueue.queue)
            using errcode = '22023';
    end if;
    if enqueue.delay is not null and enqueue.run_at is not null then
        raise exception 'pgqueue.enqueue: give run_at or delay, not both'
            using errcode = '22023';
    end if;
    if enqueue.delay < interval '0' then
        raise exception 'pgqueue.enqueue: delay must be >= 0, got %', enqueue.delay
            using errcode = '22023';
    end if;
    -- a delay counts from this statement, not from the transaction's start
    v_run_at := coalesce(enqueue.run_at, v_clock + enqueue.delay, now());
    if not (v_run_at >= '0001-01-02 00:00:00+00' and v_run_at < '9999-12-31 00:00:00+00') then
        raise exception 'pgqueue.enqueue: run_at must be a finite time between 0001-01-02 and 9999-12-31 UTC, got %', v_run_at
            using errcode = '22023',
                  hint = 'pass null (or omit run_at and delay) to run the job now';
    end if;
    if jsonb_typeof(coalesce(enqueue.args, '[]')) <> 'array'
       or jsonb_typeof(coalesce(enqueue.kwargs, '{}')) <> 'object' then
        raise exception 'pgqueue.enqueue: args must be a JSON array and kwargs a JSON object'
            using errcode = '22023';
    end if;
    perform pgqueue.check_meta(enqueue.meta, 'pgqueue.enqueue');
    loop
        insert into pgqueue.jobs as j (task, args, kwargs, queue, priority, run_at,
                                       max_attempts, unique_key, state, meta)
        values (enqueue.task, coalesce(enqueue.args, '[]'), coalesce(enqueue.kwargs, '{}'),
                coalesce(enqueue.queue, 'default'), coalesce(enqueue.priority, 0), v_run_at,
                enqueue.max_attempts, enqueue.unique_key,
                case when v_run_at > v_clock then 'scheduled' else 'available' end,
                coalesce(enqueue.meta, '{}'))
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
comment on function pgqueue.enqueue is 'Enqueue one job in the caller''s transaction; returns its id (the existing id for a live unique_key). delay counts from this statement (clock_timestamp()), run_at is absolute, neither: due now; max_attempts null: the task''s default; meta: a JSON object of string values (trace context, tenant, request id), at most 4096 bytes';

-- Whoever could call the old function can call the new one, and no one else.
do $acl$
declare
    v_acl aclitem[] := (select a.proacl from pg_temp.pgqueue_enqueue_acl a);
    r record;
begin
    if v_acl is null then
        return;     -- the default privileges, as the new function has
    end if;
    revoke all on function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval, jsonb) from public;
    for r in select x.grantee, x.is_grantable from aclexplode(v_acl) x
              where x.privilege_type = 'EXECUTE'
    loop
        execute format('grant execute on function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval, jsonb) to %s%s',
                       case when r.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(r.grantee)) end,
                       case when r.is_grantable then ' with grant option' else '' end);
    end loop;
end $acl$;

drop table pg_temp.pgqueue_enqueue_acl;

------------------------------------------------------------------------------
-- enqueue_workflow: meta for the workflow, and per step
------------------------------------------------------------------------------

create temporary table pgqueue_workflow_acl as
select p.proacl from pg_catalog.pg_proc p where p.oid = 'pgqueue.enqueue_workflow(jsonb, text, integer[], boolean)'::regprocedure;

drop function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean);

create function pgqueue.enqueue_workflow(steps jsonb, name text default null,
                                         result_steps integer[] default null,
                                         result_is_list boolean default false,
                                         meta jsonb default null)
returns table (workflow_id bigint, job_ids bigint[])
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_n integer;
    v_wf bigint;
    v_ids bigint[];
    v_bad text;
    v_error_ord integer;
    v_errors integer;
    v_e_ord integer[];
    v_e_dep integer[];
    v_e_pos integer[];
    v_deps integer[];
    v_seq regclass;
    v_clock timestamptz := clock_timestamp();
begin
    if steps is null or jsonb_typeof(steps) <> 'array' or jsonb_array_length(steps) = 0 then
        raise exception 'pgqueue.enqueue_workflow: steps must be a non-empty JSON array'
            using errcode = 'invalid_parameter_value';
    end if;
    v_n := jsonb_array_length(steps);
    select format('step %s: %s', x.ord - 1, case
               when jsonb_typeof(x.s) <> 'object' then 'not an object'
               when coalesce(x.s ->> 'task', '') = '' then 'no task'
               else 'depends_on and after must be arrays of step indexes' end)
      into v_bad
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where jsonb_typeof(x.s) <> 'object'
        or coalesce(x.s ->> 'task', '') = ''
        or jsonb_typeof(coalesce(x.s -> 'depends_on', '[]')) <> 'array'
        or jsonb_typeof(coalesce(x.s -> 'after', '[]')) <> 'array'
     limit 1;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    perform pgqueue.check_meta(enqueue_workflow.meta, 'pgqueue.enqueue_workflow');
    perform pgqueue.check_meta(x.s -> 'meta', format('pgqueue.enqueue_workflow: step %s', x.ord - 1))
       from jsonb_array_elements(steps) with ordinality x(s, ord)
      where x.s ? 'meta' and jsonb_typeof(x.s -> 'meta') <> 'null';

    -- Every edge, flattened once: step ordinal (1-based), dependency index (0-based),
    -- position in the inputs (null for an ordering-only "after" edge).
    select coalesce(array_agg(e.ord), '{}'), coalesce(array_agg(e.dep), '{}'),
           coalesce(array_agg(e.pos), '{}')
      into v_e_ord, v_e_dep, v_e_pos
      from (select x.ord::integer as ord,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end as dep,
                   (d.n - 1)::integer as pos
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'depends_on', '[]')) with ordinality d(v, n)
            union all
            select x.ord::integer,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end,
                   null
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'after', '[]')) d(v)) e;
    -- Steps come in dependency order: a step may only wait for steps listed before it,
    -- which also rules out cycles.
    select format('step %s: %s', e.o - 1, case when e.d is null
                      then 'a dependency is not a step index (an integer)'
                      else format('dependency %s is not the index of an earlier step', e.d) end)
      into v_bad
      from unnest(v_e_ord, v_e_dep) e(o, d)
     where e.d is null or e.d >= e.o - 1
     limit 1;
    if v_bad is null then
        select format('step %s: dependency %s is listed twice', e.o - 1, e.d) into v_bad
          from unnest(v_e_ord, v_e_dep) e(o, d) group by e.o, e.d having count(*) > 1 limit 1;
    end if;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    select array_agg(coalesce(c.n, 0) order by g.i) into v_deps
      from generate_series(1, v_n) g(i)
      left join (select o, count(*)::integer as n from unnest(v_e_ord) o group by o) c on c.o = g.i;

    select count(*), min(x.ord) into v_errors, v_error_ord
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where coalesce((x.s ->> 'on_error')::boolean, false);
    if v_errors > 1 then
        raise exception 'pgqueue.enqueue_workflow: at most one step may be the error callback'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_errors = 1 and (v_deps[v_error_ord] > 0 or v_error_ord - 1 = any(v_e_dep)) then
        raise exception 'pgqueue.enqueue_workflow: the error callback has no dependencies and no dependents'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_n - v_errors < 1 then
        raise exception 'pgqueue.enqueue_workflow: a workflow needs a step besides its error callback'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into pgqueue.workflows as w (name, total, remaining, result_is_list)
    values (enqueue_workflow.name, v_n - v_errors, v_n - v_errors,
            coalesce(enqueue_workflow.result_is_list, false))
    returning w.id into v_wf;

    -- Ids first, so that step i gets v_ids[i] whatever order the insert runs in.
    v_seq := pg_get_serial_sequence('pgqueue.jobs', 'id')::regclass;
    select array_agg(nextval(v_seq)) into v_ids from generate_series(1, v_n);

    insert into pgqueue.jobs (id, task, args, kwargs, queue, priority, run_at, max_attempts,
                              state, workflow_id, workflow_step, deps_pending, inputs, any_outcome,
                              meta)
    overriding system value
    select v_ids[x.ord], x.s ->> 'task', coalesce(x.s -> 'args', '[]'), coalesce(x.s -> 'kwargs', '{}'),
           coalesce(x.s ->> 'queue', 'default'), coalesce((x.s ->> 'priority')::integer, 0),
           -- a delay of a step that can start at once counts from this statement;
           -- a waiting step's from its readiness (fan-in adds run_at - created_at)
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord
                     or coalesce((x.s ->> 'delay')::float8, 0) <= 0 then now()
                else v_clock end
               + make_interval(secs => greatest(coalesce((x.s ->> 'delay')::float8, 0), 0)),
           (x.s ->> 'max_attempts')::integer,    -- null: the task's default
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord then 'pending'
                when coalesce((x.s ->> 'delay')::float8, 0) > 0 then 'scheduled'
                else 'available' end,
           v_wf, x.s ->> 'step', v_deps[x.ord],
           case when x.ord = v_error_ord then 'error' else coalesce(x.s ->> 'inputs', 'none') end,
           coalesce((x.s ->> 'any_outcome')::boolean, false),
           -- a step's own meta, else the workflow's
           coalesce(nullif(x.s -> 'meta', 'null'::jsonb), enqueue_workflow.meta, '{}')
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     order by x.ord;

    insert into pgqueue.job_dependencies (job_id, depends_on, position)
    select v_ids[e.o], v_ids[e.d + 1], e.p
      from unnest(v_e_ord, v_e_dep, v_e_pos) e(o, d, p);

    update pgqueue.workflows w
       set on_error_job_id = case when v_error_ord is not null then v_ids[v_error_ord] end,
           result_job_ids = coalesce((select array_agg(v_ids[r.i + 1] order by r.n)
                                        from unnest(enqueue_workflow.result_steps)
                                             with ordinality r(i, n)
                                       where r.i between 0 and v_n - 1), '{}')
     where w.id = v_wf;

    workflow_id := v_wf;
    job_ids := v_ids;
    return next;
end $$;
comment on function pgqueue.enqueue_workflow is 'Enqueue a workflow in the caller''s transaction: steps is a JSON array of {task, args, kwargs, queue, priority, max_attempts (null: the task''s default), delay (s, counted from this statement for a step that can start at once, else from when the step becomes ready), step (name), inputs, any_outcome, depends_on (indexes of earlier steps whose results feed this one, in order), after (ordering-only indexes), on_error (the error callback), meta (the step''s own; default the workflow''s meta)}; result_steps are the indexes whose results form the workflow result. Returns the workflow id and the job ids in step order';

-- Whoever could call the old function can call the new one, and no one else.
do $acl$
declare
    v_acl aclitem[] := (select a.proacl from pg_temp.pgqueue_workflow_acl a);
    r record;
begin
    if v_acl is null then
        return;     -- the default privileges, as the new function has
    end if;
    revoke all on function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean, jsonb) from public;
    for r in select x.grantee, x.is_grantable from aclexplode(v_acl) x
              where x.privilege_type = 'EXECUTE'
    loop
        execute format('grant execute on function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean, jsonb) to %s%s',
                       case when r.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(r.grantee)) end,
                       case when r.is_grantable then ' with grant option' else '' end);
    end loop;
end $acl$;

drop table pg_temp.pgqueue_workflow_acl;

-- The role split (0009): enqueue_workflow keeps running with its owner's rights, with
-- its search_path pinned, and stays closed to PUBLIC.
alter function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean, jsonb)
    security definer set search_path = pg_catalog, pgqueue, pg_temp;
revoke execute on function pgqueue.enqueue_workflow(jsonb, text, integer[], boolean, jsonb)
    from public;

------------------------------------------------------------------------------
-- pgqueue migration 0013: flow control -- concurrency and rate limits per queue, per
-- partition key and per task, fair sharing between partition keys, debounce.
--
-- Limits live in pgqueue.queues (set with pgqueue.set_queue_limits) and are enforced by
-- pgqueue.claim at claim time, so they hold for any number of workers on any hosts.
-- They are derived from rows, never from a counter that could leak:
--   * concurrency: the jobs of the queue (of the key, of the task) in state 'running'.
--     A slot is taken by the claim and given back by whatever moves the row out of
--     'running' (completion, failure, retry, hand-back, rescue of a dead worker's job),
--     so a crashed worker's jobs count until they are rescued (stale_after);
--   * rate: pgqueue.job_starts, one row per start of a job of a rate-limited queue,
--     written by the claim that starts it and deleted once older than the longest
--     period. jobs.started_at is not enough: a retry overwrites it, and prune deletes
--     finished jobs that still count in the window.
--
-- Concurrent claimers must not overshoot. The claim of a limited queue first locks the
-- queue's row in pgqueue.queues (select ... for update, transaction-scoped) and a
-- per-task concurrency takes a transaction-scoped advisory lock per limited task, so
-- the claims of one limited queue (or task) run one after the other: each counts the
-- running rows and the window's starts that the previous one committed. A conditional
-- insert would need a counter row; a serializable claim would abort and retry under
-- contention; SKIP LOCKED alone cannot see jobs claimed by a transaction that has not
-- committed yet. The lock is held for one claim statement (about a millisecond), and
-- only claims of limited queues take it: an unlimited queue keeps the plain claim path,
-- which reads one row of pgqueue.queues more to learn that it is unlimited. Locks are
-- taken in a fixed order (tasks, then queues, each sorted by name), so claims of
-- several limited queues cannot deadlock. All starts of one claim are stamped with one
-- clock reading taken after the locks, so successive claims of a queue stamp
-- increasing times and "at most N starts in any window of the period" holds exactly.
--
-- Fair sharing: a queue with a partition limit is claimed key by key in turn, one job
-- per key per turn, from a cursor (pgqueue.queues.partition_cursor, the last key
-- served; a hint, not a limit) round the keys in order, so a key with a large backlog
-- cannot delay another key's jobs by more than a few claim rounds. Within a key, jobs
-- go by priority, then run_at, then id. Jobs without a partition key in such a queue
-- are not limited per key and are taken when the keys leave room.
--
-- Debounce: pgqueue.enqueue(debounce => ..., debounce_key => ...) replaces the waiting
-- job that holds the key (not started yet) instead of adding one: new arguments, run_at
-- moved to now + debounce, never later than its first enqueue + debounce_max. A unique
-- partial index makes the replacement an upsert, so concurrent calls never add two.

------------------------------------------------------------------------------
-- jobs: partition key and debounce key
------------------------------------------------------------------------------

alter table pgqueue.jobs add column partition_key text, add column debounce_key text;
comment on column pgqueue.jobs.partition_key is 'Partition key (tenant, customer, account...): partition limits of the queue apply per key, and a partitioned backlog is served key by key in turn';
comment on column pgqueue.jobs.debounce_key is 'Debounce key: while this job waits to start, enqueueing the key again with debounce replaces it';

-- The claim of a partitioned queue reads keys in turn: only rows with a key enter.
create index jobs_partition_claim_idx on pgqueue.jobs (queue, partition_key, priority desc, run_at, id)
    where state in ('available', 'scheduled', 'retryable') and partition_key is not null;
create unique index jobs_debounce_key_idx on pgqueue.jobs (debounce_key)
    where debounce_key is not null and state in ('scheduled', 'available') and attempt = 0;

------------------------------------------------------------------------------
-- queues: limits
------------------------------------------------------------------------------

alter table pgqueue.queues
    add column concurrency integer,
    add column rate_limit integer,
    add column rate_period interval,
    add column partition_concurrency integer,
    add column partition_rate_limit integer,
    add column partition_rate_period interval,
    add column limits_set_by text,
    add column partition_cursor text,
    add constraint queues_concurrency_positive check (concurrency >= 1),
    add constraint queues_partition_concurrency_positive check (partition_concurrency >= 1),
    add constraint queues_rate_complete check (
        (rate_limit is null) = (rate_period is null)
        and rate_limit >= 1 and rate_period > interval '0'),
    add constraint queues_partition_rate_complete check (
        (partition_rate_limit is null) = (partition_rate_period is null)
        and partition_rate_limit >= 1 and partition_rate_period > interval '0'),
    add constraint queues_limits_set_by_valid check (limits_set_by in ('app', 'operator'));
comment on column pgqueue.queues.concurrency is 'At most this many jobs of the queue running at once, across all workers; null: no limit';
comment on column pgqueue.queues.rate_limit is 'At most this many jobs of the queue started in any window of rate_period (database clock); null: no limit';
comment on column pgqueue.queues.rate_period is 'Window of rate_limit';
comment on column pgqueue.queues.partition_concurrency is 'At most this many running jobs per partition key; null: no limit';
comment on column pgqueue.queues.partition_rate_limit is 'At most this many starts per partition key in any window of partition_rate_period; null: no limit';
comment on column pgqueue.queues.partition_rate_period is 'Window of partition_rate_limit';
comment on column pgqueue.queues.limits_set_by is 'Who set the limits last: app (a worker applying app.queue declarations) or operator (set_queue_limits, pgqueue queues set); an app does not override an operator';
comment on column pgqueue.queues.partition_cursor is 'Last partition key served by a claim (fair sharing resumes after it); a hint, not a limit';

-- starts of rate-limited queues, pruned by the claims themselves
create table pgqueue.job_starts (
    queue          text not null,
    partition_key  text,
    started_at     timestamptz not null
);
comment on table pgqueue.job_starts is 'One row per start of a job of a rate-limited queue (queue or partition rate): the sliding windows count these; rows older than the period are deleted by the claims';
create index job_starts_queue_idx on pgqueue.job_starts (queue, started_at);
create index job_starts_partition_idx on pgqueue.job_starts (queue, partition_key, started_at)
    where partition_key is not null;

------------------------------------------------------------------------------
-- setting limits
------------------------------------------------------------------------------

create function pgqueue.set_queue_limits(queue text, concurrency integer default null,
                                         rate_limit integer default null,
                                         rate_period interval default null,
                                         partition_concurrency integer default null,
                                         partition_rate_limit integer default null,
                                         partition_rate_period interval default null,
                                         set_by text default 'operator')
returns boolean
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_done boolean;
begin
    if set_queue_limits.queue is null or set_queue_limits.queue = ''
       or length(set_queue_limits.queue) > 128 then
        raise exception 'pgqueue.set_queue_limits: queue must be a name of 1 to 128 characters'
            using errcode = '22023';
    end if;
    if (set_queue_limits.rate_limit is null) <> (set_queue_limits.rate_period is null)
       or (set_queue_limits.partition_rate_limit is null) <> (set_queue_limits.partition_rate_period is null) then
        raise exception 'pgqueue.set_queue_limits: a rate needs both a count and a period'
            using errcode = '22023';
    end if;
    if set_queue_limits.set_by is not null and set_queue_limits.set_by not in ('app', 'operator') then
        raise exception 'pgqueue.set_queue_limits: set_by must be app, operator or null'
            using errcode = '22023';
    end if;
    insert into pgqueue.queues as q (name, concurrency, rate_limit, rate_period,
                                     partition_concurrency, partition_rate_limit,
                                     partition_rate_period, limits_set_by)
    values (set_queue_limits.queue, set_queue_limits.concurrency, set_queue_limits.rate_limit,
            set_queue_limits.rate_period, set_queue_limits.partition_concurrency,
            set_queue_limits.partition_rate_limit, set_queue_limits.partition_rate_period,
            set_queue_limits.set_by)
    on conflict (name) do update
       set concurrency = excluded.concurrency, rate_limit = excluded.rate_limit,
           rate_period = excluded.rate_period,
           partition_concurrency = excluded.partition_concurrency,
           partition_rate_limit = excluded.partition_rate_limit,
           partition_rate_period = excluded.partition_rate_period,
           limits_set_by = excluded.limits_set_by, updated_at = now()
     -- an app's declaration never overrides an operator's setting
     where excluded.limits_set_by is distinct from 'app' or q.limits_set_by is distinct from 'operator'
    returning true into v_done;
    if v_done and set_queue_limits.rate_limit is null and set_queue_limits.partition_rate_limit is null then
        delete from pgqueue.job_starts s where s.queue = set_queue_limits.queue;
    end if;
    -- wake the workers: a raised or removed limit lets jobs start now
    perform pg_notify('pgqueue_jobs', set_queue_limits.queue);
    return coalesce(v_done, false);
end $$;
comment on function pgqueue.set_queue_limits is 'Set every limit of a queue at once (null: no limit; a rate needs count and period); set_by app (a worker applying declarations: ignored when an operator set the limits last), operator (default) or null (clear the mark so the next app declaration applies); true if the row was written';

------------------------------------------------------------------------------
-- claim of limited queues and tasks
------------------------------------------------------------------------------

-- Candidates of one queue, locked, in claim order: every key (mode 0), one key (1) or
-- the jobs without a key (2); jobs of the tasks in `full` left out.
create function pgqueue.flow_candidates(queue text, mode integer, key text, tasks text[],
                                        full_tasks text[], n integer)
returns table (id bigint, task text, partition_key text)
language plpgsql volatile set search_path = pg_catalog, pgqueue
    set enable_seqscan = off as $$
#variable_conflict use_column
begin
    if flow_candidates.mode = 1 then
        return query
        select j.id, j.task, j.partition_key
          from pgqueue.jobs j
         where j.queue = flow_candidates.queue
           and j.partition_key = flow_candidates.key
           and j.state in ('available', 'scheduled', 'retryable')
           and j.run_at <= now()
           and (flow_candidates.tasks is null or j.task = any(flow_candidates.tasks))
           and not (j.task = any(flow_candidates.full_tasks))
         order by j.priority desc, j.run_at, j.id
         limit flow_candidates.n
           for update skip locked;
    elsif flow_candidates.mode = 2 then
        return query
        select j.id, j.task, j.partition_key
          from pgqueue.jobs j
         where j.queue = flow_candidates.queue
           and j.partition_key is null
           and j.state in ('available', 'scheduled', 'retryable')
           and j.run_at <= now()
           and (flow_candidates.tasks is null or j.task = any(flow_candidates.tasks))
           and not (j.task = any(flow_candidates.full_tasks))
         order by j.priority desc, j.run_at, j.id
         limit flow_candidates.n
           for update skip locked;
    else
        return query
        select j.id, j.task, j.partition_key
          from pgqueue.jobs j
         where j.queue = flow_candidates.queue
           and j.state in ('available', 'scheduled', 'retryable')
           and j.run_at <= now()
           and (flow_candidates.tasks is null or j.task = any(flow_candidates.tasks))
           and not (j.task = any(flow_candidates.full_tasks))
         order by j.priority desc, j.run_at, j.id
         limit flow_candidates.n
           for update skip locked;
    end if;
end $$;
comment on function pgqueue.flow_candidates is 'Lock up to n claimable, due jobs of one queue in claim order: any key (mode 0), partition key `key` (1) or without a key (2), leaving out the tasks in full_tasks; used by claim_limited';

create function pgqueue.claim_limited(worker_id uuid, queues text[], tasks text[], batch integer,
                                      task_max_attempts integer[] default null,
                                      task_timeouts double precision[] default null,
                                      task_concurrency integer[] default null)
returns setof pgqueue.jobs
language plpgsql volatile set search_path = pg_catalog, pgqueue
    set enable_seqscan = off as $$
#variable_conflict use_column
declare
    v_left integer := claim_limited.batch;
    v_ltasks text[] := '{}';        -- tasks with a concurrency limit
    v_lallow integer[] := '{}';     -- slots left per limited task
    v_full text[];                  -- limited tasks without a slot left
    v_qnames text[];
    v_qrows pgqueue.queues[] := '{}';
    q pgqueue.queues;
    v_now timestamptz;
    v_allow integer;
    v_kallow integer;
    v_ids bigint[] := '{}';
    v_start_queues text[] := '{}';
    v_start_keys text[] := '{}';
    v_running jsonb;
    v_taken jsonb;
    v_key text;
    v_next text;
    v_visits integer;
    v_max_visits integer;
    v_wraps integer;
    v_took_pass boolean;
    v_got boolean;
    v_pos integer;
    r record;
    i integer;
begin
    -- Locks, in a fixed order: limited tasks, then limited queues, by name.
    for r in select t.name, t.c
               from unnest(claim_limited.tasks, claim_limited.task_concurrency) as t(name, c)
              where t.c is not null and t.name is not null
              order by t.name loop
        perform pg_advisory_xact_lock(1885696116, hashtext(r.name));
        v_ltasks := v_ltasks || r.name;
        v_lallow := v_lallow || greatest(r.c - (select count(*) from pgqueue.jobs j
                                                 where j.state = 'running' and j.task = r.name)::integer, 0);
    end loop;
    select array_agg(distinct x order by x) into v_qnames
      from unnest(claim_limited.queues) x where x is not null;
    for i in 1 .. coalesce(cardinality(v_qnames), 0) loop
        q := null;
        select * into q from pgqueue.queues qq where qq.name = v_qnames[i];
        if q.concurrency is not null or q.rate_limit is not null
           or q.partition_concurrency is not null or q.partition_rate_limit is not null then
            -- the lock that serializes the claims of this queue; the row as it is now
            select * into q from pgqueue.queues qq where qq.name = v_qnames[i] for update;
        end if;
        if q.name is null then
            q.name := v_qnames[i];
        end if;
        v_qrows := v_qrows || q;
    end loop;
    -- One clock reading after the locks: every start of this claim is stamped with it.
    v_now := clock_timestamp();

    for i in 1 .. coalesce(cardinality(v_qrows), 0) loop
        exit when v_left <= 0;
        q := v_qrows[i];
        continue when q.paused;
        v_allow := v_left;
        if q.concurrency is not null then
            v_allow := least(v_allow, q.concurrency - (select count(*) from pgqueue.jobs j
                                                        where j.state = 'running'
                                                          and j.queue = q.name)::integer);
        end if;
        if q.rate_limit is not null or q.partition_rate_limit is not null then
            delete from pgqueue.job_starts s
             where s.queue = q.name
               and s.started_at < v_now - greatest(q.rate_period, q.partition_rate_period);
        end if;
        if q.rate_limit is not null then
            v_allow := least(v_allow, q.rate_limit - (select count(*) from pgqueue.job_starts s
                                                       where s.queue = q.name
                                                         and s.started_at >= v_now - q.rate_period)::integer);
        end if;
        continue when v_allow <= 0;
        select coalesce(array_agg(t), '{}') into v_full
          from unnest(v_ltasks, v_lallow) as x(t, a) where x.a <= 0;

        if q.partition_concurrency is null and q.partition_rate_limit is null then
            for r in select c.id, c.task, c.partition_key
                       from pgqueue.flow_candidates(q.name, 0, null, claim_limited.tasks,
                                                    v_full, v_allow) c loop
                v_pos := array_position(v_ltasks, r.task);
                if v_pos is not null then
                    continue when v_lallow[v_pos] <= 0;
                    v_lallow[v_pos] := v_lallow[v_pos] - 1;
                end if;
                v_ids := v_ids || r.id;
                v_start_queues := v_start_queues || q.name;
                v_start_keys := v_start_keys || r.partition_key;
                v_allow := v_allow - 1;
                v_left := v_left - 1;
            end loop;
            continue;
        end if;

        -- Partitioned: the keys in turn, one job per key per turn, from the cursor.
        select coalesce(jsonb_object_agg(x.k, x.n), '{}') into v_running
          from (select j.partition_key as k, count(*) as n from pgqueue.jobs j
                 where j.state = 'running' and j.queue = q.name and j.partition_key is not null
                 group by j.partition_key) x;
        v_taken := '{}';
        v_key := q.partition_cursor;
        v_visits := 0;
        v_max_visits := greatest(4 * claim_limited.batch, 64);
        v_wraps := 0;
        v_took_pass := false;
        loop
            exit when v_allow <= 0 or v_visits >= v_max_visits;
            v_next := null;
            select j.partition_key into v_next
              from pgqueue.jobs j
             where j.queue = q.name
               and j.state in ('available', 'scheduled', 'retryable')
               and j.partition_key is not null
               and (v_key is null or j.partition_key > v_key)
             order by j.partition_key
             limit 1;
            if v_next is null then
                -- end of the keys: round again from the first, unless a whole pass
                -- (or the part after the cursor and a whole pass) took nothing
                v_wraps := v_wraps + 1;
                exit when v_key is null or (v_wraps >= 2 and not v_took_pass);
                v_took_pass := false;
                v_key := null;
                continue;
            end if;
            v_key := v_next;
            v_visits := v_visits + 1;
            v_kallow := 1;
            if q.partition_concurrency is not null then
                v_kallow := least(v_kallow, q.partition_concurrency
                                  - coalesce((v_running ->> v_key)::integer, 0)
                                  - coalesce((v_taken ->> v_key)::integer, 0));
            end if;
            if v_kallow > 0 and q.partition_rate_limit is not null then
                v_kallow := least(v_kallow, q.partition_rate_limit
                                  - (select count(*) from pgqueue.job_starts s
                                      where s.queue = q.name and s.partition_key = v_key
                                        and s.started_at >= v_now - q.partition_rate_period)::integer
                                  - coalesce((v_taken ->> v_key)::integer, 0));
            end if;
            continue when v_kallow <= 0;
            v_got := false;
            for r in select c.id, c.task, c.partition_key
                       from pgqueue.flow_candidates(q.name, 1, v_key, claim_limited.tasks,
                                                    v_full, 1) c loop
                v_pos := array_position(v_ltasks, r.task);
                if v_pos is not null then
                    continue when v_lallow[v_pos] <= 0;
                    v_lallow[v_pos] := v_lallow[v_pos] - 1;
                    if v_lallow[v_pos] <= 0 then
                        v_full := v_full || r.task;
                    end if;
                end if;
                v_ids := v_ids || r.id;
                v_start_queues := v_start_queues || q.name;
                v_start_keys := v_start_keys || r.partition_key;
                v_got := true;
            end loop;
            if v_got then
                v_taken := jsonb_set(v_taken, array[v_key],
                                     to_jsonb(coalesce((v_taken ->> v_key)::integer, 0) + 1));
                v_allow := v_allow - 1;
                v_left := v_left - 1;
                v_took_pass := true;
            end if;
        end loop;
        if v_key is distinct from q.partition_cursor then
            update pgqueue.queues qq set partition_cursor = v_key where qq.name = q.name;
        end if;
        -- Jobs without a key: not limited per key, served when the keys leave room.
        if v_allow > 0 then
            for r in select c.id, c.task, c.partition_key
                       from pgqueue.flow_candidates(q.name, 2, null, claim_limited.tasks,
                                                    v_full, v_allow) c loop
                v_pos := array_position(v_ltasks, r.task);
                if v_pos is not null then
                    continue when v_lallow[v_pos] <= 0;
                    v_lallow[v_pos] := v_lallow[v_pos] - 1;
                end if;
                v_ids := v_ids || r.id;
                v_start_queues := v_start_queues || q.name;
                v_start_keys := v_start_keys || null::text;
                v_allow := v_allow - 1;
                v_left := v_left - 1;
            end loop;
        end if;
    end loop;

    if cardinality(v_ids) = 0 then
        return;
    end if;
    -- the starts that rate limits count
    insert into pgqueue.job_starts (queue, partition_key, started_at)
    select s.queue, case when qq.partition_rate_limit is not null then s.key end, v_now
      from unnest(v_start_queues, v_start_keys) as s(queue, key)
      join pgqueue.queues qq on qq.name = s.queue
     where qq.rate_limit is not null or qq.partition_rate_limit is not null;
    return query
    update pgqueue.jobs j
       set state = 'running',
           attempt = j.attempt + 1,
           started_at = v_now,
           worker_id = claim_limited.worker_id,
           cancel_requested_at = null,
           max_attempts = coalesce(j.max_attempts,
               claim_limited.task_max_attempts[array_position(claim_limited.tasks, j.task)], 20),
           timeout = coalesce(j.timeout, make_interval(
               secs => claim_limited.task_timeouts[array_position(claim_limited.tasks, j.task)]))
     where j.id = any(v_ids)
    returning j.*;
end $$;
comment on function pgqueue.claim_limited is 'The claim of queues with limits or of tasks with a concurrency (called by pgqueue.claim): serialized per limited queue (row lock on pgqueue.queues) and per limited task (advisory lock), counts running rows and the window''s starts, serves partition keys in turn; stamps every start with one clock reading';

------------------------------------------------------------------------------
-- claim: limited queues and tasks go through claim_limited
------------------------------------------------------------------------------

drop function pgqueue.claim(uuid, text[], text[], integer, text[], smallint[], timestamptz[],
                            bigint[], integer[], double precision[]);

create function pgqueue.claim(worker_id uuid, queues text[], tasks text[], batch integer,
                              position_queues text[] default null,
                              position_priorities smallint[] default null,
                              position_run_ats timestamptz[] default null,
                              position_ids bigint[] default null,
                              task_max_attempts integer[] default null,
                              task_timeouts double precision[] default null,
                              task_concurrency integer[] default null)
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
    -- Flow control: a queue with a limit, or a task with a concurrency, claims through
    -- claim_limited; every other claim keeps the plain path below.
    if (claim.task_concurrency is not null
        and exists (select 1 from unnest(claim.task_concurrency) c where c is not null))
       or exists (select 1 from pgqueue.queues q
                   where q.name = any(v_queues)
                     and (q.concurrency is not null or q.rate_limit is not null
                          or q.partition_concurrency is not null
                          or q.partition_rate_limit is not null)) then
        return query
        select * from pgqueue.claim_limited(claim.worker_id, v_queues, claim.tasks, claim.batch,
                                            claim.task_max_attempts, claim.task_timeouts,
                                            claim.task_concurrency);
        return;
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
                   cancel_requested_at = null,
                   -- what the enqueuer left null: the claiming worker's declaration
                   max_attempts = coalesce(j.max_attempts,
                       claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
                   timeout = coalesce(j.timeout, make_interval(
                       secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
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
               cancel_requested_at = null,
               -- what the enqueuer left null: the claiming worker's declaration
               max_attempts = coalesce(j.max_attempts,
                   claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
               timeout = coalesce(j.timeout, make_interval(
                   secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
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
           cancel_requested_at = null,
           -- what the enqueuer left null: the claiming worker's declaration
           max_attempts = coalesce(j.max_attempts,
               claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
           timeout = coalesce(j.timeout, make_interval(
               secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
     where j.id = any(array(select c.id from candidates c))
    returning j.*;
end $$;
comment on function pgqueue.claim is 'Claim up to batch due jobs (priority desc, run_at, id), marking them running with a new attempt token, committed by the caller''s statement; optional positions (parallel arrays: queue, priority, run_at, id of the first job last claimed at that level) let the read skip what earlier claims passed; task_max_attempts and task_timeouts (seconds), parallel to tasks, are the claiming worker''s declarations, written into rows that left max_attempts or timeout null (max_attempts 20 without one); task_concurrency (parallel to tasks, null: no limit) caps running jobs per task across all workers; queues with limits and limited tasks are claimed by claim_limited';

------------------------------------------------------------------------------
-- next_due: jobs held back by a limit
------------------------------------------------------------------------------

drop function pgqueue.next_due(text[], text[]);

create function pgqueue.next_due(queues text[], tasks text[], task_concurrency integer[] default null)
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
                             where q.name = j.queue
                               and (q.paused or q.concurrency is not null
                                    or q.rate_limit is not null
                                    or q.partition_concurrency is not null
                                    or q.partition_rate_limit is not null))),
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
                                            where q.name = j.queue and q.paused))),
        -- a limited queue with due jobs: at its rate limit, when the oldest start of
        -- the window leaves it; otherwise (a concurrency slot frees when a job ends,
        -- unannounced) look again in 0.1 s
        (select min(case
                    when q.rate_limit is not null
                         and (select count(*) from pgqueue.job_starts s
                               where s.queue = q.name
                                 and s.started_at >= clock_timestamp() - q.rate_period) >= q.rate_limit
                    then greatest(0.02, extract(epoch from
                             (select min(s.started_at) from pgqueue.job_starts s
                               where s.queue = q.name
                                 and s.started_at >= clock_timestamp() - q.rate_period)
                             + q.rate_period - clock_timestamp())::double precision)
                    else 0.1 end)
           from pgqueue.queues q
          where not q.paused
            and (q.concurrency is not null or q.rate_limit is not null
                 or q.partition_concurrency is not null or q.partition_rate_limit is not null)
            and (next_due.queues is null or q.name = any(next_due.queues))
            and exists (select 1 from pgqueue.jobs j
                         where j.queue = q.name
                           and j.state in ('available', 'scheduled', 'retryable')
                           and j.run_at <= now()
                           and (next_due.tasks is null or j.task = any(next_due.tasks)))),
        -- a task at its concurrency with due jobs: look again in 0.1 s
        (select 0.1::double precision
          where exists (select 1 from pgqueue.jobs j
                          join unnest(next_due.tasks, next_due.task_concurrency) as t(name, c)
                            on t.name = j.task and t.c is not null
                         where j.state in ('available', 'scheduled', 'retryable')
                           and j.run_at <= now()
                           and (next_due.queues is null or j.queue = any(next_due.queues)))))
$$;
comment on function pgqueue.next_due is 'Seconds until the earliest scheduled or retryable job becomes due; negative for one that became due within the last 2 s and still waits (claim again now); at most 1 while one due for 2 to 60 s still waits (its row was held by another transaction); for due jobs held back by a limit, when the rate window frees a start, else 0.1; null if none';

------------------------------------------------------------------------------
-- enqueue: partition key and debounce
------------------------------------------------------------------------------

create temporary table pgqueue_enqueue_acl as
select p.proacl from pg_catalog.pg_proc p
 where p.oid = 'pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval, jsonb)'::regprocedure;

drop function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval, jsonb);

create function pgqueue.enqueue(
    task text,
    args jsonb default '[]',
    kwargs jsonb default '{}',
    queue text default 'default',
    priority integer default 0,
    run_at timestamptz default null,
    max_attempts integer default null,
    unique_key text default null,
    delay interval default null,
    meta jsonb default null,
    partition_key text default null,
    debounce interval default null,
    debounce_key text default null,
    debounce_max interval default null
) returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_id bigint;
    v_clock timestamptz := clock_timestamp();
    v_run_at timestamptz;
    v_max interval;
begin
    if enqueue.task is null or enqueue.task = '' or length(enqueue.task) > 512 then
        raise exception 'pgqueue.enqueue: task must be a name of 1 to 512 characters, got %', quote_nullable(enqueue.task)
            using errcode = '22023';
    end if;
    if enqueue.queue = '' or length(enqueue.queue) > 128 then
        raise exception 'pgqueue.enqueue: queue must be a name of 1 to 128 characters, got %', quote_literal(enqueue.queue)
            using errcode = '22023';
    end if;
    if enqueue.partition_key = '' or length(enqueue.partition_key) > 512 then
        raise exception 'pgqueue.enqueue: partition_key must have 1 to 512 characters, got %', quote_literal(enqueue.partition_key)
            using errcode = '22023';
    end if;
    if enqueue.delay is not null and enqueue.run_at is not null then
        raise exception 'pgqueue.enqueue: give run_at or delay, not both'
            using errcode = '22023';
    end if;
    if enqueue.delay < interval '0' then
        raise exception 'pgqueue.enqueue: delay must be >= 0, got %', enqueue.delay
            using errcode = '22023';
    end if;
    if enqueue.debounce is not null or enqueue.debounce_key is not null or enqueue.debounce_max is not null then
        if enqueue.debounce is null or enqueue.debounce_key is null or enqueue.debounce_key = ''
           or length(enqueue.debounce_key) > 512 then
            raise exception 'pgqueue.enqueue: debounce needs both a delay (debounce) and a debounce_key of 1 to 512 characters'
                using errcode = '22023';
        end if;
        if enqueue.debounce < interval '0' or enqueue.debounce_max < interval '0' then
            raise exception 'pgqueue.enqueue: debounce and debounce_max must be >= 0'
                using errcode = '22023';
        end if;
        if enqueue.delay is not null or enqueue.run_at is not null or enqueue.unique_key is not null then
            raise exception 'pgqueue.enqueue: debounce sets the due time and the key itself: give no run_at, delay or unique_key with it'
                using errcode = '22023';
        end if;
    end if;
    -- a delay counts from this statement, not from the transaction's start
    v_run_at := coalesce(enqueue.run_at, v_clock + enqueue.delay, v_clock + enqueue.debounce, now());
    if not (v_run_at >= '0001-01-02 00:00:00+00' and v_run_at < '9999-12-31 00:00:00+00') then
        raise exception 'pgqueue.enqueue: run_at must be a finite time between 0001-01-02 and 9999-12-31 UTC, got %', v_run_at
            using errcode = '22023',
                  hint = 'pass null (or omit run_at and delay) to run the job now';
    end if;
    if jsonb_typeof(coalesce(enqueue.args, '[]')) <> 'array'
       or jsonb_typeof(coalesce(enqueue.kwargs, '{}')) <> 'object' then
        raise exception 'pgqueue.enqueue: args must be a JSON array and kwargs a JSON object'
            using errcode = '22023';
    end if;
    perform pgqueue.check_meta(enqueue.meta, 'pgqueue.enqueue');
    if enqueue.debounce is not null then
        -- Replace the waiting job that holds the key, or add one. A job claimed
        -- meanwhile leaves the index's predicate: the insert then adds a new job.
        v_max := coalesce(enqueue.debounce_max, enqueue.debounce * 10);
        insert into pgqueue.jobs as j (task, args, kwargs, queue, priority, run_at,
                                       max_attempts, partition_key, debounce_key, state, meta)
        values (enqueue.task, coalesce(enqueue.args, '[]'), coalesce(enqueue.kwargs, '{}'),
                coalesce(enqueue.queue, 'default'), coalesce(enqueue.priority, 0), v_run_at,
                enqueue.max_attempts, enqueue.partition_key, enqueue.debounce_key,
                case when v_run_at > v_clock then 'scheduled' else 'available' end,
                coalesce(enqueue.meta, '{}'))
        on conflict (debounce_key) where debounce_key is not null
            and state in ('scheduled', 'available') and attempt = 0
        do update
           set args = excluded.args, kwargs = excluded.kwargs, meta = excluded.meta,
               run_at = least(excluded.run_at, greatest(j.created_at + v_max, v_clock)),
               state = case when least(excluded.run_at, greatest(j.created_at + v_max, v_clock)) > v_clock
                            then 'scheduled' else 'available' end
        returning j.id into v_id;
        return v_id;
    end if;
    loop
        insert into pgqueue.jobs as j (task, args, kwargs, queue, priority, run_at,
                                       max_attempts, unique_key, partition_key, state, meta)
        values (enqueue.task, coalesce(enqueue.args, '[]'), coalesce(enqueue.kwargs, '{}'),
                coalesce(enqueue.queue, 'default'), coalesce(enqueue.priority, 0), v_run_at,
                enqueue.max_attempts, enqueue.unique_key, enqueue.partition_key,
                case when v_run_at > v_clock then 'scheduled' else 'available' end,
                coalesce(enqueue.meta, '{}'))
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
comment on function pgqueue.enqueue is 'Enqueue one job in the caller''s transaction; returns its id (the existing id for a live unique_key). delay counts from this statement (clock_timestamp()), run_at is absolute, neither: due now; max_attempts null: the task''s default; meta: a JSON object of string values (trace context, tenant, request id), at most 4096 bytes; partition_key: the key partition limits and fair sharing use; debounce with debounce_key: replace the waiting job holding the key (new arguments, due debounce from now, at most debounce_max, default 10 x debounce, after its first enqueue) and return its id';

-- Whoever could call the old function can call the new one, and no one else.
do $acl$
declare
    v_acl aclitem[] := (select a.proacl from pg_temp.pgqueue_enqueue_acl a);
    r record;
begin
    if v_acl is null then
        return;     -- the default privileges, as the new function has
    end if;
    revoke all on function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval, jsonb, text, interval, text, interval) from public;
    for r in select x.grantee, x.is_grantable from aclexplode(v_acl) x
              where x.privilege_type = 'EXECUTE'
    loop
        execute format('grant execute on function pgqueue.enqueue(text, jsonb, jsonb, text, integer, timestamptz, integer, text, interval, jsonb, text, interval, text, interval) to %s%s',
                       case when r.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(r.grantee)) end,
                       case when r.is_grantable then ' with grant option' else '' end);
    end loop;
end $acl$;

drop table pg_temp.pgqueue_enqueue_acl;

------------------------------------------------------------------------------
-- queue_stats: limits, running, held back
------------------------------------------------------------------------------

-- Ready jobs of a queue that its limits keep from starting now (task concurrency,
-- declared by workers, is not counted).
create function pgqueue.queue_held_back(queue text)
returns bigint
language sql stable set search_path = pg_catalog, pgqueue as $$
    with q as (
        select * from pgqueue.queues q where q.name = queue_held_back.queue
    ), ready as (
        select j.partition_key from pgqueue.jobs j, q
         where j.queue = q.name
           and j.state in ('available', 'scheduled', 'retryable') and j.run_at <= now()
    ), per_key as (
        select r.partition_key as k, count(*) as n from ready r group by r.partition_key
    ), key_room as (
        select p.k, p.n,
               case when p.k is null then p.n else least(p.n,
                   coalesce(q.partition_concurrency - (select count(*) from pgqueue.jobs j
                                                         where j.state = 'running' and j.queue = q.name
                                                           and j.partition_key = p.k), p.n),
                   coalesce(q.partition_rate_limit - (select count(*) from pgqueue.job_starts s
                                                        where s.queue = q.name and s.partition_key = p.k
                                                          and s.started_at >= now() - q.partition_rate_period), p.n))
               end as room
          from per_key p, q
    ), room as (
        select least(coalesce(sum(greatest(k.room, 0)), 0),
                     coalesce(q.concurrency - (select count(*) from pgqueue.jobs j
                                                where j.state = 'running' and j.queue = q.name), 2147483647),
                     coalesce(q.rate_limit - (select count(*) from pgqueue.job_starts s
                                               where s.queue = q.name
                                                 and s.started_at >= now() - q.rate_period), 2147483647)) as room,
               coalesce(sum(k.n), 0) as ready
          from key_room k, q
         group by q.concurrency, q.rate_limit, q.name, q.rate_period
    )
    select coalesce((select greatest(r.ready - greatest(r.room, 0), 0)::bigint from room r), 0)
$$;
comment on function pgqueue.queue_held_back is 'Due jobs of a queue that its own limits (concurrency, rate, per partition key) keep from starting now';

create function pgqueue.queue_rate_limited(queue text)
returns boolean
language sql stable set search_path = pg_catalog, pgqueue as $$
    select exists (select 1 from pgqueue.queues q
                    where q.name = queue_rate_limited.queue
                      and ((q.rate_limit is not null
                            and (select count(*) from pgqueue.job_starts s
                                  where s.queue = q.name
                                    and s.started_at >= now() - q.rate_period) >= q.rate_limit)
                           or q.partition_rate_limit is not null))
$$;
comment on function pgqueue.queue_rate_limited is 'Whether a queue has a partition rate limit or has used its rate limit''s window';

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
       coalesce(q.paused, false)       as paused,
       q.concurrency,
       q.rate_limit,
       q.rate_period,
       q.partition_concurrency,
       q.partition_rate_limit,
       q.partition_rate_period,
       case when q.concurrency is null and q.rate_limit is null
                 and q.partition_concurrency is null and q.partition_rate_limit is null
                 or coalesce(s.ready, 0) = 0
            then 0 else pgqueue.queue_held_back(q.name) end as held_back,
       coalesce(q.rate_limit is not null or q.partition_rate_limit is not null, false)
           and coalesce(s.ready, 0) > 0 and pgqueue.queue_rate_limited(q.name) as rate_limited
  from per_queue s
  full join pgqueue.queues q on q.name = s.queue;
comment on view pgqueue.queue_stats is 'Per queue (every queue with jobs or a pgqueue.queues row): jobs by state, seconds since the oldest ready job became due, paused flag, limits, ready jobs held back by a limit, whether a rate limit holds jobs back';

------------------------------------------------------------------------------
-- pgqueue migration 0014: the dashboard's job list filtered by partition key or schedule
-- stays fast on large tables.
--
-- "What happened to tenant acme's jobs?" and "what did the nightly schedule run?" list
-- jobs of one partition key or one schedule, newest first. Without an index the list
-- walks the primary key backwards through every finished job until it has a page, which
-- for a rare key is the whole table. Both indexes are partial: a job without a partition
-- key or a schedule (most jobs) never enters them, so only enqueues that set one pay
-- for an index entry.

create index jobs_partition_key_idx on pgqueue.jobs (partition_key, id)
    where partition_key is not null;

create index jobs_schedule_idx on pgqueue.jobs (schedule_name, id)
    where schedule_name is not null;

------------------------------------------------------------------------------
-- pgqueue migration 0015: a single enqueue costs the server less.
--
-- The statement trigger that wakes workers grouped the inserted rows by queue before
-- calling pg_notify. PostgreSQL already folds identical notifications of a transaction
-- into one (with a hash table once there are more than a few), so the grouping bought
-- nothing, and for the common one-row insert the aggregate was most of the trigger's
-- cost: about 20 to 30 microseconds of each enqueue statement here. The trigger now
-- notifies straight from the transition table; a bulk insert still wakes each queue
-- once, at commit.

create or replace function pgqueue.notify_inserted() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
declare
    v_floor timestamptz := clock_timestamp() - interval '1 second';
begin
    -- One call per row; PostgreSQL delivers one notification per distinct
    -- (channel, payload) of the transaction, at commit.
    perform pg_notify('pgqueue_jobs', i.queue),
            case when i.run_at < v_floor then pg_notify('pgqueue_requeued', i.queue) end
       from inserted i
      where i.state <> 'pending';
    return null;
end $$;


-- pgqueue migration 0016: retried workflow steps wait for their dependencies; limits
-- and states that no claim can serve are refused.
--
-- 1. pgqueue.retry (and retry_discarded) made every retried job available at once. A
--    chord callback that a cancelled member had cancelled, retried after that member
--    but while other members still ran, started at once with null inputs. A retried
--    workflow step now waits ('pending') for those of its dependencies that have not
--    completed: the edges from them are armed again (deps_pending counts them), so
--    each one's finishing releases it through the fan-in as before. A dependency that
--    ended discarded or cancelled, for a step that needs success, refuses the retry
--    and is named: retry it first. A dependent that still waits (an any_outcome
--    callback) is armed again when one of its finished dependencies is retried, so it
--    waits for that one's new outcome. An error callback is retried only while its
--    workflow is failed (it runs for a failure), and a batch's seal step is never
--    retried (a batch cancelled before its seal cannot be reopened). Bulk retries
--    (pgqueue.retry_many, the dashboard's "Retry all") take steps in passes, so a
--    step retried before its dependency in id order waits for it instead of being
--    refused. A failed workflow whose every step then completed is completed.
-- 2. A rate period too long for the claim's window arithmetic (set from SQL: only the
--    Python side bounded it) made every claim of a worker serving that queue fail
--    with "timestamp out of range", its other queues' jobs included. Periods are now
--    at most 366 days, as in Python: set_queue_limits says so, and a constraint holds
--    it; a longer period already stored becomes 366 days.
-- 3. Fair sharing walked the partition keys of every claimable job, due or not, and
--    spent each claim's visits on keys whose jobs are all later: thousands of tenants
--    in backoff delayed a due job of another tenant by seconds. The walk now visits
--    only keys with a due job.
-- 4. A plain job (no workflow) inserted as 'pending' waited for nothing, so it never
--    ran or ended. That state is now refused outside a workflow; rows already in it
--    are cancelled, with an errors entry saying why.

------------------------------------------------------------------------------
-- 1. retried workflow steps
------------------------------------------------------------------------------

create function pgqueue.rearm_step(job_id bigint)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_any boolean;
    v_failed text;
    j record;
begin
    select x.any_outcome, x.inputs, x.task, x.workflow_id,
           (select w.state from pgqueue.workflows w where w.id = x.workflow_id) as wf_state
      into j
      from pgqueue.jobs x where x.id = rearm_step.job_id;
    if j.workflow_id is null then
        return 'available';    -- a plain job
    end if;
    if j.inputs = 'error' then
        -- the error callback runs for a failure: only while its workflow is failed
        if j.wf_state is distinct from 'failed' then
            raise exception 'job % cannot be retried: it is the error callback of workflow %, which is %, and it runs only after a step fails',
                    rearm_step.job_id, j.workflow_id, coalesce(j.wf_state, 'gone')
                using errcode = '55000';
        end if;
        return 'available';
    end if;
    if j.task = 'pgqueue.batch_seal' then
        raise exception 'job % cannot be retried: it is the seal step of batch %, and a batch cancelled before it was sealed cannot be reopened',
                rearm_step.job_id, j.workflow_id
            using errcode = '55000',
                  hint = 'retry its members on their own, or open a new batch';
    end if;
    v_any := j.any_outcome;
    -- Lock the dependencies first, in id order, as their finishing does before it locks
    -- this step: none can finish between being read unfinished here and its edge armed.
    perform 1 from pgqueue.jobs d
     where d.id in (select e.depends_on from pgqueue.job_dependencies e
                     where e.job_id = rearm_step.job_id)
     order by d.id
       for share;
    if not v_any then
        select string_agg(format('#%s %s %s', d.id, d.task, d.state), ', ' order by d.id)
          into v_failed
          from pgqueue.job_dependencies e join pgqueue.jobs d on d.id = e.depends_on
         where e.job_id = rearm_step.job_id and d.state in ('discarded', 'cancelled');
        if v_failed is not null then
            raise exception 'job % cannot be retried: it needs the results of workflow steps that did not complete (%)',
                    rearm_step.job_id, v_failed
                using errcode = '55000',
                      hint = 'retry those steps first: this one then waits for them and runs once they have completed';
        end if;
    end if;
    -- A dependency retried since its edge was satisfied is unfinished again: its edge is
    -- armed again, and satisfied once more when it finishes.
    update pgqueue.job_dependencies e
       set satisfied = false, outcome = null, satisfied_at = null
      from pgqueue.jobs d
     where e.job_id = rearm_step.job_id and d.id = e.depends_on and e.satisfied
       and d.state not in ('completed', 'discarded', 'cancelled');
    return case when exists (select 1 from pgqueue.job_dependencies e
                              where e.job_id = rearm_step.job_id and not e.satisfied)
                then 'pending' else 'available' end;
end $$;
comment on function pgqueue.rearm_step is 'For pgqueue.retry: the state a retried job takes, available, or pending for a workflow step with unfinished dependencies (their edges armed again, dependencies locked); raises object_not_in_prerequisite_state naming the dependencies that ended discarded or cancelled when the step needs success, for an error callback of a workflow that is not failed, and for a batch''s seal step';

create function pgqueue.rearm_dependents(job_id bigint)
returns void
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
begin
    -- job_id was finished and is retried: a dependent still waiting (an any_outcome
    -- step: the others were cancelled by the failure) counted its edge as satisfied;
    -- it waits for the new outcome instead. Called after job_id's row is locked, so the
    -- dependents are locked after it, as its finishing locks them.
    perform 1 from pgqueue.jobs d
     where d.id in (select e.job_id from pgqueue.job_dependencies e
                     where e.depends_on = rearm_dependents.job_id and e.satisfied)
       and d.state = 'pending'
     order by d.id
       for update;
    with armed as (
        update pgqueue.job_dependencies e
           set satisfied = false, outcome = null, satisfied_at = null
          from pgqueue.jobs d
         where e.depends_on = rearm_dependents.job_id and e.satisfied
           and d.id = e.job_id and d.state = 'pending'
        returning e.job_id
    )
    update pgqueue.jobs d set deps_pending = d.deps_pending + 1
      from armed a where d.id = a.job_id;
end $$;
comment on function pgqueue.rearm_dependents is 'For pgqueue.retry: a retried job''s dependents that still wait (pending) wait for its new outcome: their edges from it are armed again and counted in deps_pending';

create function pgqueue.retry_many(ids bigint[])
returns table (id bigint, state text, refused text)
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_todo bigint[];
    v_left bigint[];
    v_why text[];
    v_progress boolean;
    x bigint;
    i integer;
begin
    -- In passes: a step refused because a dependency it needs is still failed is tried
    -- again after the others, which may retry that dependency (a batch's callback and a
    -- replaced step's dependents have smaller ids than what they wait for).
    select array_agg(distinct u order by u) into v_todo from unnest(retry_many.ids) u
     where u is not null;
    loop
        exit when v_todo is null or cardinality(v_todo) = 0;
        v_left := '{}';
        v_why := '{}';
        v_progress := false;
        foreach x in array v_todo loop
            begin
                state := pgqueue.retry(x);
                id := x;
                refused := null;
                return next;
                v_progress := true;
            exception when object_not_in_prerequisite_state then
                v_left := v_left || x;
                v_why := v_why || sqlerrm;
            end;
        end loop;
        exit when not v_progress;
        v_todo := v_left;
    end loop;
    for i in 1 .. coalesce(cardinality(v_left), 0) loop
        id := v_left[i];
        select j.state into state from pgqueue.jobs j where j.id = v_left[i];
        refused := v_why[i];
        return next;
    end loop;
end $$;
comment on function pgqueue.retry_many is 'pgqueue.retry of each id, in passes so that steps wait for the dependencies retried with them; returns each id with its state after the call, and for a step refused (a dependency it needs stays failed, an error callback not needed, a seal step) the reason; a unique_key held by another job fails the whole call';

comment on table pgqueue.job_dependencies is 'Workflow edges: job_id waits for depends_on. An edge is satisfied once each time depends_on reaches a terminal state, by that transaction; a retry of job_id arms it again when depends_on was retried too (pgqueue.rearm_step). Written by pgqueue.enqueue_workflow, together with both jobs; deleting a job deletes its edges (trigger jobs_deleted_edges)';

create or replace function pgqueue.retry(job_id bigint)
returns text
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_state text;
    v_key text;
    v_holder bigint;
    v_target text := 'available';
begin
    if exists (select 1 from pgqueue.jobs j where j.id = retry.job_id
                  and j.state in ('discarded', 'cancelled', 'retryable', 'scheduled')) then
        v_target := pgqueue.rearm_step(retry.job_id);
    end if;
    update pgqueue.jobs j
       set state = v_target,
           -- a pending step: run_at - created_at is the delay its release adds (none)
           run_at = case when v_target = 'pending' then j.created_at else now() end,
           deps_pending = case when v_target = 'pending'
                               then (select count(*) from pgqueue.job_dependencies e
                                      where e.job_id = j.id and not e.satisfied)::integer
                               else j.deps_pending end,
           finished_at = null,
           -- one more attempt if needed; null (never claimed) stays the task's default
           max_attempts = case when j.max_attempts is not null
                               then greatest(j.max_attempts, j.attempt + 1) end,
           cancel_requested_at = null
     where j.id = retry.job_id
       and j.state in ('discarded', 'cancelled', 'retryable', 'scheduled')
    returning j.state into v_state;
    if v_state is not null then
        perform pgqueue.rearm_dependents(retry.job_id);
    end if;
    if v_state = 'available' then
        perform pg_notify('pgqueue_jobs', (select j.queue from pgqueue.jobs j where j.id = retry.job_id));
    end if;
    if v_state is not null then
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
comment on function pgqueue.retry is 'Make a discarded, cancelled, retryable or scheduled job available now (one more attempt if needed); a workflow step whose dependencies have not all completed becomes pending and runs once they have. Returns the state after the call; raises unique_violation (naming the holder) when another unfinished job holds its unique_key, and object_not_in_prerequisite_state (naming them) when a dependency the step needs ended discarded or cancelled';

create or replace function pgqueue.retry_discarded(queue text default null, task text default null)
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
            state := pgqueue.rearm_step(r.id);
            update pgqueue.jobs j
               set state = retry_discarded.state,
                   run_at = case when retry_discarded.state = 'pending' then j.created_at
                                 else now() end,
                   deps_pending = case when retry_discarded.state = 'pending'
                                       then (select count(*) from pgqueue.job_dependencies e
                                              where e.job_id = j.id and not e.satisfied)::integer
                                       else j.deps_pending end,
                   finished_at = null,
                   max_attempts = greatest(j.max_attempts, j.attempt + 1),
                   cancel_requested_at = null
             where j.id = r.id;
            perform pgqueue.rearm_dependents(r.id);
            if state = 'available' and not (r.queue = any(v_queues)) then
                v_queues := v_queues || r.queue;
            end if;
        else
            state := 'discarded';
        end if;
        return next;
    end loop;
    perform pg_notify('pgqueue_jobs', x) from unnest(v_queues) x;
end $$;
comment on function pgqueue.retry_discarded is 'Retry every discarded job (of one queue and/or task when given), in id order (a workflow step whose dependencies have not all completed becomes pending, see pgqueue.retry); a job whose unique_key another unfinished job holds is skipped: returned with state discarded and held_by set';

------------------------------------------------------------------------------
-- 2. rate periods the claim can subtract from now()
------------------------------------------------------------------------------

update pgqueue.queues q set rate_period = interval '366 days'
 where q.rate_period > interval '366 days';
update pgqueue.queues q set partition_rate_period = interval '366 days'
 where q.partition_rate_period > interval '366 days';
alter table pgqueue.queues
    add constraint queues_rate_period_at_most_366_days
        check (rate_period <= interval '366 days'),
    add constraint queues_partition_rate_period_at_most_366_days
        check (partition_rate_period <= interval '366 days');

create or replace function pgqueue.set_queue_limits(queue text, concurrency integer default null,
                                         rate_limit integer default null,
                                         rate_period interval default null,
                                         partition_concurrency integer default null,
                                         partition_rate_limit integer default null,
                                         partition_rate_period interval default null,
                                         set_by text default 'operator')
returns boolean
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_done boolean;
begin
    if set_queue_limits.queue is null or set_queue_limits.queue = ''
       or length(set_queue_limits.queue) > 128 then
        raise exception 'pgqueue.set_queue_limits: queue must be a name of 1 to 128 characters'
            using errcode = '22023';
    end if;
    if (set_queue_limits.rate_limit is null) <> (set_queue_limits.rate_period is null)
       or (set_queue_limits.partition_rate_limit is null) <> (set_queue_limits.partition_rate_period is null) then
        raise exception 'pgqueue.set_queue_limits: a rate needs both a count and a period'
            using errcode = '22023';
    end if;
    if not (set_queue_limits.rate_period > interval '0'
            and set_queue_limits.rate_period <= interval '366 days')
       or not (set_queue_limits.partition_rate_period > interval '0'
               and set_queue_limits.partition_rate_period <= interval '366 days') then
        raise exception 'pgqueue.set_queue_limits: a rate period must be more than 0 and at most 366 days, got %',
                coalesce(set_queue_limits.rate_period, set_queue_limits.partition_rate_period)
            using errcode = '22023',
                  hint = 'a limit over a longer window is a quota: keep it in your own table';
    end if;
    if set_queue_limits.set_by is not null and set_queue_limits.set_by not in ('app', 'operator') then
        raise exception 'pgqueue.set_queue_limits: set_by must be app, operator or null'
            using errcode = '22023';
    end if;
    insert into pgqueue.queues as q (name, concurrency, rate_limit, rate_period,
                                     partition_concurrency, partition_rate_limit,
                                     partition_rate_period, limits_set_by)
    values (set_queue_limits.queue, set_queue_limits.concurrency, set_queue_limits.rate_limit,
            set_queue_limits.rate_period, set_queue_limits.partition_concurrency,
            set_queue_limits.partition_rate_limit, set_queue_limits.partition_rate_period,
            set_queue_limits.set_by)
    on conflict (name) do update
       set concurrency = excluded.concurrency, rate_limit = excluded.rate_limit,
           rate_period = excluded.rate_period,
           partition_concurrency = excluded.partition_concurrency,
           partition_rate_limit = excluded.partition_rate_limit,
           partition_rate_period = excluded.partition_rate_period,
           limits_set_by = excluded.limits_set_by, updated_at = now()
     -- an app's declaration never overrides an operator's setting
     where excluded.limits_set_by is distinct from 'app' or q.limits_set_by is distinct from 'operator'
    returning true into v_done;
    if v_done and set_queue_limits.rate_limit is null and set_queue_limits.partition_rate_limit is null then
        delete from pgqueue.job_starts s where s.queue = set_queue_limits.queue;
    end if;
    -- wake the workers: a raised or removed limit lets jobs start now
    perform pg_notify('pgqueue_jobs', set_queue_limits.queue);
    return coalesce(v_done, false);
end $$;
comment on function pgqueue.set_queue_limits is 'Set every limit of a queue at once (null: no limit; a rate needs count and period); set_by app (a worker applying declarations: ignored when an operator set the limits last), operator (default) or null (clear the mark so the next app declaration applies); true if the row was written';

------------------------------------------------------------------------------
-- 3. fair sharing visits keys with a due job
------------------------------------------------------------------------------

create or replace function pgqueue.claim_limited(worker_id uuid, queues text[], tasks text[], batch integer,
                                      task_max_attempts integer[] default null,
                                      task_timeouts double precision[] default null,
                                      task_concurrency integer[] default null)
returns setof pgqueue.jobs
language plpgsql volatile set search_path = pg_catalog, pgqueue
    set enable_seqscan = off as $$
#variable_conflict use_column
declare
    v_left integer := claim_limited.batch;
    v_ltasks text[] := '{}';        -- tasks with a concurrency limit
    v_lallow integer[] := '{}';     -- slots left per limited task
    v_full text[];                  -- limited tasks without a slot left
    v_qnames text[];
    v_qrows pgqueue.queues[] := '{}';
    q pgqueue.queues;
    v_now timestamptz;
    v_allow integer;
    v_kallow integer;
    v_ids bigint[] := '{}';
    v_start_queues text[] := '{}';
    v_start_keys text[] := '{}';
    v_running jsonb;
    v_taken jsonb;
    v_key text;
    v_next text;
    v_visits integer;
    v_max_visits integer;
    v_wraps integer;
    v_took_pass boolean;
    v_got boolean;
    v_pos integer;
    r record;
    i integer;
begin
    -- Locks, in a fixed order: limited tasks, then limited queues, by name.
    for r in select t.name, t.c
               from unnest(claim_limited.tasks, claim_limited.task_concurrency) as t(name, c)
              where t.c is not null and t.name is not null
              order by t.name loop
        perform pg_advisory_xact_lock(1885696116, hashtext(r.name));
        v_ltasks := v_ltasks || r.name;
        v_lallow := v_lallow || greatest(r.c - (select count(*) from pgqueue.jobs j
                                                 where j.state = 'running' and j.task = r.name)::integer, 0);
    end loop;
    select array_agg(distinct x order by x) into v_qnames
      from unnest(claim_limited.queues) x where x is not null;
    for i in 1 .. coalesce(cardinality(v_qnames), 0) loop
        q := null;
        select * into q from pgqueue.queues qq where qq.name = v_qnames[i];
        if q.concurrency is not null or q.rate_limit is not null
           or q.partition_concurrency is not null or q.partition_rate_limit is not null then
            -- the lock that serializes the claims of this queue; the row as it is now
            select * into q from pgqueue.queues qq where qq.name = v_qnames[i] for update;
        end if;
        if q.name is null then
            q.name := v_qnames[i];
        end if;
        v_qrows := v_qrows || q;
    end loop;
    -- One clock reading after the locks: every start of this claim is stamped with it.
    v_now := clock_timestamp();

    for i in 1 .. coalesce(cardinality(v_qrows), 0) loop
        exit when v_left <= 0;
        q := v_qrows[i];
        continue when q.paused;
        v_allow := v_left;
        if q.concurrency is not null then
            v_allow := least(v_allow, q.concurrency - (select count(*) from pgqueue.jobs j
                                                        where j.state = 'running'
                                                          and j.queue = q.name)::integer);
        end if;
        if q.rate_limit is not null or q.partition_rate_limit is not null then
            delete from pgqueue.job_starts s
             where s.queue = q.name
               and s.started_at < v_now - greatest(q.rate_period, q.partition_rate_period);
        end if;
        if q.rate_limit is not null then
            v_allow := least(v_allow, q.rate_limit - (select count(*) from pgqueue.job_starts s
                                                       where s.queue = q.name
                                                         and s.started_at >= v_now - q.rate_period)::integer);
        end if;
        continue when v_allow <= 0;
        select coalesce(array_agg(t), '{}') into v_full
          from unnest(v_ltasks, v_lallow) as x(t, a) where x.a <= 0;

        if q.partition_concurrency is null and q.partition_rate_limit is null then
            for r in select c.id, c.task, c.partition_key
                       from pgqueue.flow_candidates(q.name, 0, null, claim_limited.tasks,
                                                    v_full, v_allow) c loop
                v_pos := array_position(v_ltasks, r.task);
                if v_pos is not null then
                    continue when v_lallow[v_pos] <= 0;
                    v_lallow[v_pos] := v_lallow[v_pos] - 1;
                end if;
                v_ids := v_ids || r.id;
                v_start_queues := v_start_queues || q.name;
                v_start_keys := v_start_keys || r.partition_key;
                v_allow := v_allow - 1;
                v_left := v_left - 1;
            end loop;
            continue;
        end if;

        -- Partitioned: the keys in turn, one job per key per turn, from the cursor.
        select coalesce(jsonb_object_agg(x.k, x.n), '{}') into v_running
          from (select j.partition_key as k, count(*) as n from pgqueue.jobs j
                 where j.state = 'running' and j.queue = q.name and j.partition_key is not null
                 group by j.partition_key) x;
        v_taken := '{}';
        v_key := q.partition_cursor;
        v_visits := 0;
        v_max_visits := greatest(4 * claim_limited.batch, 64);
        v_wraps := 0;
        v_took_pass := false;
        loop
            exit when v_allow <= 0 or v_visits >= v_max_visits;
            v_next := null;
            select j.partition_key into v_next
              from pgqueue.jobs j
             where j.queue = q.name
               and j.state in ('available', 'scheduled', 'retryable')
               and j.partition_key is not null
               and (v_key is null or j.partition_key > v_key)
               and j.run_at <= now()      -- a key whose jobs are all later is no visit
             order by j.partition_key
             limit 1;
            if v_next is null then
                -- end of the keys: round again from the first, unless a whole pass
                -- (or the part after the cursor and a whole pass) took nothing
                v_wraps := v_wraps + 1;
                exit when v_key is null or (v_wraps >= 2 and not v_took_pass);
                v_took_pass := false;
                v_key := null;
                continue;
            end if;
            v_key := v_next;
            v_visits := v_visits + 1;
            v_kallow := 1;
            if q.partition_concurrency is not null then
                v_kallow := least(v_kallow, q.partition_concurrency
                                  - coalesce((v_running ->> v_key)::integer, 0)
                                  - coalesce((v_taken ->> v_key)::integer, 0));
            end if;
            if v_kallow > 0 and q.partition_rate_limit is not null then
                v_kallow := least(v_kallow, q.partition_rate_limit
                                  - (select count(*) from pgqueue.job_starts s
                                      where s.queue = q.name and s.partition_key = v_key
                                        and s.started_at >= v_now - q.partition_rate_period)::integer
                                  - coalesce((v_taken ->> v_key)::integer, 0));
            end if;
            continue when v_kallow <= 0;
            v_got := false;
            for r in select c.id, c.task, c.partition_key
                       from pgqueue.flow_candidates(q.name, 1, v_key, claim_limited.tasks,
                                                    v_full, 1) c loop
                v_pos := array_position(v_ltasks, r.task);
                if v_pos is not null then
                    continue when v_lallow[v_pos] <= 0;
                    v_lallow[v_pos] := v_lallow[v_pos] - 1;
                    if v_lallow[v_pos] <= 0 then
                        v_full := v_full || r.task;
                    end if;
                end if;
                v_ids := v_ids || r.id;
                v_start_queues := v_start_queues || q.name;
                v_start_keys := v_start_keys || r.partition_key;
                v_got := true;
            end loop;
            if v_got then
                v_taken := jsonb_set(v_taken, array[v_key],
                                     to_jsonb(coalesce((v_taken ->> v_key)::integer, 0) + 1));
                v_allow := v_allow - 1;
                v_left := v_left - 1;
                v_took_pass := true;
            end if;
        end loop;
        if v_key is distinct from q.partition_cursor then
            update pgqueue.queues qq set partition_cursor = v_key where qq.name = q.name;
        end if;
        -- Jobs without a key: not limited per key, served when the keys leave room.
        if v_allow > 0 then
            for r in select c.id, c.task, c.partition_key
                       from pgqueue.flow_candidates(q.name, 2, null, claim_limited.tasks,
                                                    v_full, v_allow) c loop
                v_pos := array_position(v_ltasks, r.task);
                if v_pos is not null then
                    continue when v_lallow[v_pos] <= 0;
                    v_lallow[v_pos] := v_lallow[v_pos] - 1;
                end if;
                v_ids := v_ids || r.id;
                v_start_queues := v_start_queues || q.name;
                v_start_keys := v_start_keys || null::text;
                v_allow := v_allow - 1;
                v_left := v_left - 1;
            end loop;
        end if;
    end loop;

    if cardinality(v_ids) = 0 then
        return;
    end if;
    -- the starts that rate limits count
    insert into pgqueue.job_starts (queue, partition_key, started_at)
    select s.queue, case when qq.partition_rate_limit is not null then s.key end, v_now
      from unnest(v_start_queues, v_start_keys) as s(queue, key)
      join pgqueue.queues qq on qq.name = s.queue
     where qq.rate_limit is not null or qq.partition_rate_limit is not null;
    return query
    update pgqueue.jobs j
       set state = 'running',
           attempt = j.attempt + 1,
           started_at = v_now,
           worker_id = claim_limited.worker_id,
           cancel_requested_at = null,
           max_attempts = coalesce(j.max_attempts,
               claim_limited.task_max_attempts[array_position(claim_limited.tasks, j.task)], 20),
           timeout = coalesce(j.timeout, make_interval(
               secs => claim_limited.task_timeouts[array_position(claim_limited.tasks, j.task)]))
     where j.id = any(v_ids)
    returning j.*;
end $$;
comment on function pgqueue.claim_limited is 'The claim of queues with limits or of tasks with a concurrency (called by pgqueue.claim): serialized per limited queue (row lock on pgqueue.queues) and per limited task (advisory lock), counts running rows and the window''s starts, serves partition keys in turn; stamps every start with one clock reading';

------------------------------------------------------------------------------
-- 4. pending only inside a workflow
------------------------------------------------------------------------------

update pgqueue.jobs j
   set state = 'cancelled', finished_at = now(),
       errors = j.errors || jsonb_build_array(jsonb_build_object(
           'at', now(), 'attempt', j.attempt, 'worker', null,
           'type', 'pgqueue.NotRunnable',
           'message', 'a plain job inserted as pending waits for nothing and could never run; cancelled by migration 0016',
           'traceback', null))
 where j.state = 'pending' and j.workflow_id is null;
alter table pgqueue.jobs add constraint jobs_pending_only_in_workflows
    check (state <> 'pending' or workflow_id is not null);

------------------------------------------------------------------------------
-- 5. a failed workflow repaired by retries is completed
------------------------------------------------------------------------------

create or replace function pgqueue.workflow_fan_in() returns trigger
language plpgsql set search_path = pg_catalog, pgqueue as $$
declare
    v_list text := current_setting('pgqueue.finished_steps', true);
    v_ids bigint[];
    v_queues text[];
    v_failed bigint[];
    v_doomed bigint[];
    v_roots bigint[];
    v_maybe_failed boolean;
    w record;
    v_wf pgqueue.workflows%rowtype;
    v_state text;
    v_queue text;
    i integer;
begin
    if v_list is null or v_list = '' then
        return null;   -- no workflow step finished in this statement: the common case
    end if;
    perform set_config('pgqueue.finished_steps', '', true);
    v_maybe_failed := strpos(v_list, '-') > 0;
    v_ids := string_to_array(replace(left(v_list, -1), '-', ''), ',')::bigint[];

    -- 1. Satisfy each outgoing edge once (where not satisfied), then decrement each
    --    dependent by the number of its edges satisfied here and release the ready
    --    ones; one statement. The dependents are locked in id order first (lck), so
    --    concurrent finishers never deadlock; the update then works on the newest
    --    version of each counter.
    with sat as (
        update pgqueue.job_dependencies d
           set satisfied = true, outcome = j.state, satisfied_at = now()
          from pgqueue.jobs j
         where j.id = any(v_ids)
           and j.state in ('completed', 'discarded', 'cancelled')
           and d.depends_on = j.id
           and not d.satisfied
        returning d.job_id, d.outcome
    ), agg as (
        select sat.job_id as id, count(*)::integer as n, bool_or(sat.outcome <> 'completed') as bad
          from sat group by sat.job_id
    ), lck as (
        select j.id from pgqueue.jobs j
         where j.id in (select agg.id from agg)
         order by j.id
           for update
    ), dec as (
        update pgqueue.jobs j
           set deps_pending = j.deps_pending - a.n,
               state = case when j.state = 'pending' and j.deps_pending = a.n
                                 and (not a.bad or j.any_outcome)
                            then case when j.run_at > j.created_at then 'scheduled'
                                      else 'available' end
                            else j.state end,
               run_at = case when j.state = 'pending' and j.deps_pending = a.n
                                  and (not a.bad or j.any_outcome)
                             then now() + greatest(j.run_at - j.created_at, interval '0')
                             else j.run_at end
          from agg a join lck l on l.id = a.id
         where j.id = a.id
        returning j.queue, j.state
    )
    select array_agg(distinct dec.queue) filter (where dec.state in ('available', 'scheduled'))
      into v_queues from dec;
    if v_queues is not null then
        perform pg_notify('pgqueue_jobs', x) from unnest(v_queues) x;
    end if;

    -- 2. Permanent failures (discarded, or cancelled other than as a skipped dependent):
    --    every pending step downstream that needs success is skipped, i.e. cancelled
    --    with an errors entry naming the failed step, in one statement.
    if v_maybe_failed then
        select array_agg(j.id order by j.id) into v_failed
          from pgqueue.jobs j
         where j.id = any(v_ids)
           and j.state in ('discarded', 'cancelled')
           and not coalesce(j.errors -> -1 ->> 'type' = 'pgqueue.DependencyFailed', false);
    end if;
    if v_failed is not null then
        with recursive doomed(id, root) as (
            select d.job_id, d.depends_on
              from pgqueue.job_dependencies d
              join pgqueue.jobs j on j.id = d.job_id
             where d.depends_on = any(v_failed) and j.state = 'pending' and not j.any_outcome
            union
            select d.job_id, x.root
              from doomed x
              join pgqueue.job_dependencies d on d.depends_on = x.id
              join pgqueue.jobs j on j.id = d.job_id
             where j.state = 'pending' and not j.any_outcome
        )
        select array_agg(x.id order by x.id), array_agg(x.root order by x.id)
          into v_doomed, v_roots
          from (select doomed.id, min(doomed.root) as root from doomed group by doomed.id) x;
        if v_doomed is not null then
            perform 1 from pgqueue.jobs j where j.id = any(v_doomed) order by j.id for update;
            update pgqueue.jobs j
               set state = 'cancelled', finished_at = now(),
                   errors = j.errors || jsonb_build_array(jsonb_build_object(
                       'at', now(), 'attempt', j.attempt, 'worker', null,
                       'type', 'pgqueue.DependencyFailed', 'job_id', f.id,
                       'message', format('not run: workflow step %s (%s) ended %s',
                                         f.id, f.task, f.state),
                       'traceback', null))
              from unnest(v_doomed, v_roots) as r(id, root)
              join pgqueue.jobs f on f.id = r.root
             where j.id = r.id and j.state = 'pending';
            i := 1;
            while i <= cardinality(v_doomed) loop
                perform pg_notify('pgqueue_done', array_to_string(v_doomed[i:i + 399], ','));
                i := i + 400;
            end loop;
        end if;
    end if;

    -- 3. Each workflow's counters and state, once per workflow, in id order (the row lock
    --    serializes concurrent finishers: exactly one of them sees remaining reach 0).
    for w in
        select j.workflow_id as id, count(*)::integer as finished,
               count(*) filter (where j.state = 'completed')::integer as completed,
               count(*) filter (where j.state = 'discarded')::integer as discarded,
               count(*) filter (where j.state = 'cancelled')::integer as cancelled,
               array_agg(j.id order by j.id) filter (where j.id = any(v_failed)) as causes,
               jsonb_agg(jsonb_build_object(
                   'job_id', j.id, 'task', j.task, 'step', j.workflow_step, 'state', j.state,
                   'at', now(), 'error', j.errors -> -1) order by j.id)
                   filter (where j.id = any(v_failed)) as failures
          from pgqueue.jobs j
         where j.id = any(v_ids) and j.state in ('completed', 'discarded', 'cancelled')
         group by j.workflow_id
         order by j.workflow_id
    loop
        -- One statement: "old" locks the row and keeps its values before the update
        -- (v_wf); the update computes from the same, newest, version.
        with old as (
            select * from pgqueue.workflows x where x.id = w.id for update
        ), upd as (
            update pgqueue.workflows x
               set remaining = x.remaining - w.finished,
                   completed = x.completed + w.completed,
                   discarded = x.discarded + w.discarded,
                   cancelled = x.cancelled + w.cancelled,
                   state = case when x.state = 'running' and w.causes is not null then 'failed'
                                when x.state = 'running' and x.remaining = w.finished then 'completed'
                                -- failed, then repaired by retries: every step completed
                                when x.state = 'failed' and w.causes is null
                                     and x.remaining = w.finished
                                     and x.completed + w.completed = x.total then 'completed'
                                else x.state end,
                   finished_at = case when x.remaining = w.finished then now() else x.finished_at end,
                   failed_job_ids = case when w.causes is not null and x.state <> 'cancelled'
                                         then x.failed_job_ids || w.causes
                                         else x.failed_job_ids end,
                   failures = case when w.causes is not null and x.state <> 'cancelled'
                                   then x.failures || w.failures else x.failures end
              from old o
             where x.id = o.id
            returning x.state
        )
        select o.id, o.state, o.remaining, o.on_error_job_id, u.state
          into v_wf.id, v_wf.state, v_wf.remaining, v_wf.on_error_job_id, v_state
          from old o, upd u;
        if not found then
            continue;
        end if;

        if v_wf.on_error_job_id is not null then
            if v_state = 'failed' and v_wf.state = 'running' then
                -- First failure: release the error callback, once (conditional on its state).
                v_queue := null;
                update pgqueue.jobs e set state = 'available', run_at = now()
                 where e.id = v_wf.on_error_job_id and e.state = 'pending'
                returning e.queue into v_queue;
                if v_queue is not null then
                    perform pg_notify('pgqueue_jobs', v_queue);
                end if;
            elsif v_wf.remaining = w.finished and v_state in ('completed', 'cancelled') then
                update pgqueue.jobs e
                   set state = 'cancelled', finished_at = now(),
                       errors = e.errors || jsonb_build_array(jsonb_build_object(
                           'at', now(), 'attempt', e.attempt, 'worker', null,
                           'type', 'pgqueue.NotNeeded',
                           'message', format('workflow %s ended %s: the error callback was not needed',
                                             v_wf.id, v_state),
                           'traceback', null))
                 where e.id = v_wf.on_error_job_id and e.state = 'pending';
                if found then
                    perform pg_notify('pgqueue_done', v_wf.on_error_job_id::text);
                end if;
            end if;
        end if;
        if v_state <> v_wf.state or v_wf.remaining = w.finished then
            perform pg_notify('pgqueue_workflows', v_wf.id::text);
        end if;
    end loop;
    return null;
end $$;
comment on function pgqueue.workflow_fan_in is 'Statement trigger: fan-in of the workflow steps the statement finished: edges satisfied once, dependents decremented and released (NOTIFY pgqueue_jobs), failures propagated, workflow counters and state updated, error callback released once; all in the finishing transaction';

create or replace function pgqueue.enqueue(
    task text,
    args jsonb default '[]',
    kwargs jsonb default '{}',
    queue text default 'default',
    priority integer default 0,
    run_at timestamptz default null,
    max_attempts integer default null,
    unique_key text default null,
    delay interval default null,
    meta jsonb default null,
    partition_key text default null,
    debounce interval default null,
    debounce_key text default null,
    debounce_max interval default null
) returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
#variable_conflict use_column
declare
    v_id bigint;
    v_clock timestamptz := clock_timestamp();
    v_run_at timestamptz;
    v_max interval;
begin
    if enqueue.task is null or enqueue.task = '' or length(enqueue.task) > 512 then
        raise exception 'pgqueue.enqueue: task must be a name of 1 to 512 characters, got %', quote_nullable(enqueue.task)
            using errcode = '22023';
    end if;
    if enqueue.queue = '' or length(enqueue.queue) > 128 then
        raise exception 'pgqueue.enqueue: queue must be a name of 1 to 128 characters, got %', quote_literal(enqueue.queue)
            using errcode = '22023';
    end if;
    if enqueue.partition_key = '' or length(enqueue.partition_key) > 512 then
        raise exception 'pgqueue.enqueue: partition_key must have 1 to 512 characters, got %', quote_literal(enqueue.partition_key)
            using errcode = '22023';
    end if;
    if enqueue.delay is not null and enqueue.run_at is not null then
        raise exception 'pgqueue.enqueue: give run_at or delay, not both'
            using errcode = '22023';
    end if;
    if enqueue.delay < interval '0' then
        raise exception 'pgqueue.enqueue: delay must be >= 0, got %', enqueue.delay
            using errcode = '22023';
    end if;
    if extract(epoch from enqueue.delay) > 3155760000 then
        raise exception 'pgqueue.enqueue: delay must be at most 100 years (36525 days), got %', enqueue.delay
            using errcode = '22023',
                  hint = 'pass run_at for an absolute time';
    end if;
    if enqueue.priority not between -32768 and 32767 then
        raise exception 'pgqueue.enqueue: priority must be in -32768..32767 (higher runs first), got %', enqueue.priority
            using errcode = '22023';
    end if;
    if enqueue.max_attempts < 1 then
        raise exception 'pgqueue.enqueue: max_attempts must be >= 1 (null: the task''s default), got %', enqueue.max_attempts
            using errcode = '22023';
    end if;
    if enqueue.unique_key = '' or octet_length(enqueue.unique_key) > 1000 then
        raise exception 'pgqueue.enqueue: unique_key must have 1 to 1000 bytes, got % bytes', octet_length(enqueue.unique_key)
            using errcode = '22023',
                  hint = 'hash a longer key (md5 or sha256 of it)';
    end if;
    if enqueue.debounce is not null or enqueue.debounce_key is not null or enqueue.debounce_max is not null then
        if enqueue.debounce is null or enqueue.debounce_key is null or enqueue.debounce_key = ''
           or length(enqueue.debounce_key) > 512 then
            raise exception 'pgqueue.enqueue: debounce needs both a delay (debounce) and a debounce_key of 1 to 512 characters'
                using errcode = '22023';
        end if;
        if enqueue.debounce < interval '0' or enqueue.debounce_max < interval '0' then
            raise exception 'pgqueue.enqueue: debounce and debounce_max must be >= 0'
                using errcode = '22023';
        end if;
        if enqueue.delay is not null or enqueue.run_at is not null or enqueue.unique_key is not null then
            raise exception 'pgqueue.enqueue: debounce sets the due time and the key itself: give no run_at, delay or unique_key with it'
                using errcode = '22023';
        end if;
    end if;
    -- a delay counts from this statement, not from the transaction's start
    v_run_at := coalesce(enqueue.run_at, v_clock + enqueue.delay, v_clock + enqueue.debounce, now());
    if not (v_run_at >= '0001-01-02 00:00:00+00' and v_run_at < '9999-12-31 00:00:00+00') then
        raise exception 'pgqueue.enqueue: run_at must be a finite time between 0001-01-02 and 9999-12-31 UTC, got %', v_run_at
            using errcode = '22023',
                  hint = 'pass null (or omit run_at and delay) to run the job now';
    end if;
    if jsonb_typeof(coalesce(enqueue.args, '[]')) <> 'array'
       or jsonb_typeof(coalesce(enqueue.kwargs, '{}')) <> 'object' then
        raise exception 'pgqueue.enqueue: args must be a JSON array and kwargs a JSON object'
            using errcode = '22023';
    end if;
    perform pgqueue.check_meta(enqueue.meta, 'pgqueue.enqueue');
    if enqueue.debounce is not null then
        -- Replace the waiting job that holds the key, or add one. A job claimed
        -- meanwhile leaves the index's predicate: the insert then adds a new job.
        v_max := coalesce(enqueue.debounce_max, enqueue.debounce * 10);
        insert into pgqueue.jobs as j (task, args, kwargs, queue, priority, run_at,
                                       max_attempts, partition_key, debounce_key, state, meta)
        values (enqueue.task, coalesce(enqueue.args, '[]'), coalesce(enqueue.kwargs, '{}'),
                coalesce(enqueue.queue, 'default'), coalesce(enqueue.priority, 0), v_run_at,
                enqueue.max_attempts, enqueue.partition_key, enqueue.debounce_key,
                case when v_run_at > v_clock then 'scheduled' else 'available' end,
                coalesce(enqueue.meta, '{}'))
        on conflict (debounce_key) where debounce_key is not null
            and state in ('scheduled', 'available') and attempt = 0
        do update
           set args = excluded.args, kwargs = excluded.kwargs, meta = excluded.meta,
               run_at = least(excluded.run_at, greatest(j.created_at + v_max, v_clock)),
               state = case when least(excluded.run_at, greatest(j.created_at + v_max, v_clock)) > v_clock
                            then 'scheduled' else 'available' end
        returning j.id into v_id;
        return v_id;
    end if;
    loop
        insert into pgqueue.jobs as j (task, args, kwargs, queue, priority, run_at,
                                       max_attempts, unique_key, partition_key, state, meta)
        values (enqueue.task, coalesce(enqueue.args, '[]'), coalesce(enqueue.kwargs, '{}'),
                coalesce(enqueue.queue, 'default'), coalesce(enqueue.priority, 0), v_run_at,
                enqueue.max_attempts, enqueue.unique_key, enqueue.partition_key,
                case when v_run_at > v_clock then 'scheduled' else 'available' end,
                coalesce(enqueue.meta, '{}'))
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

create or replace function pgqueue.enqueue_workflow(steps jsonb, name text default null,
                                         result_steps integer[] default null,
                                         result_is_list boolean default false,
                                         meta jsonb default null)
returns table (workflow_id bigint, job_ids bigint[])
-- with its owner's rights (the role split, 0009), its search_path pinned
language plpgsql volatile security definer set search_path = pg_catalog, pgqueue, pg_temp as $$
#variable_conflict use_column
declare
    v_n integer;
    v_wf bigint;
    v_ids bigint[];
    v_bad text;
    v_error_ord integer;
    v_errors integer;
    v_e_ord integer[];
    v_e_dep integer[];
    v_e_pos integer[];
    v_deps integer[];
    v_seq regclass;
    v_clock timestamptz := clock_timestamp();
begin
    if steps is null or jsonb_typeof(steps) <> 'array' or jsonb_array_length(steps) = 0 then
        raise exception 'pgqueue.enqueue_workflow: steps must be a non-empty JSON array'
            using errcode = 'invalid_parameter_value';
    end if;
    v_n := jsonb_array_length(steps);
    -- Each step's own problem, the first one found (a step is an object here on: the
    -- keys and types below are looked at only for objects).
    select format('step %s: %s', x.ord - 1, case
               when jsonb_typeof(x.s) <> 'object' then 'not an object'
               when coalesce(x.s ->> 'task', '') = '' then 'no task'
               when x.unknown <> '{}'
                    then format('unknown key %s (a step takes task, args, kwargs, queue, '
                                'priority, max_attempts, delay, step, inputs, any_outcome, '
                                'depends_on, after, on_error, meta)',
                                (select quote_literal(min(k)) from jsonb_object_keys(x.unknown) k))
               when jsonb_typeof(coalesce(x.s -> 'args', '[]')) <> 'array'
                    then 'args must be a JSON array'
               when jsonb_typeof(coalesce(x.s -> 'kwargs', '{}')) <> 'object'
                    then 'kwargs must be a JSON object'
               when x.bad_delay
                    then 'delay must be 0 or a number of seconds from 0.000001 to 3155760000 (100 years)'
               when x.bad_field is not null then x.bad_field
               else 'depends_on and after must be arrays of step indexes' end)
      into v_bad
      from (select y.s, y.ord,
                   -- the keys a step does not take ('{}' for none): one operator a step
                   case when jsonb_typeof(y.s) = 'object'
                        then y.s - '{task,args,kwargs,queue,priority,max_attempts,delay,step,inputs,any_outcome,depends_on,after,on_error,meta}'::text[] end as unknown,
                   case when jsonb_typeof(y.s) <> 'object' then false
                        when jsonb_typeof(y.s -> 'delay') is null
                             or jsonb_typeof(y.s -> 'delay') = 'null' then false
                        when jsonb_typeof(y.s -> 'delay') <> 'number' then true
                        else (y.s ->> 'delay')::numeric not between 0 and 3155760000
                             or ((y.s ->> 'delay')::numeric > 0
                                 and (y.s ->> 'delay')::numeric < 0.000001) end
                       as bad_delay,
                   -- each field as pgqueue.enqueue and the jobs table take it
                   case when jsonb_typeof(y.s) <> 'object' then null
                        when jsonb_typeof(y.s -> 'task') <> 'string'
                             or length(y.s ->> 'task') > 512
                             then 'task must be a name of 1 to 512 characters'
                        when jsonb_typeof(y.s -> 'queue') not in ('string', 'null')
                             or y.s ->> 'queue' = '' or length(y.s ->> 'queue') > 128
                             then 'queue must be a name of 1 to 128 characters'
                        when jsonb_typeof(y.s -> 'step') not in ('string', 'null')
                             or length(y.s ->> 'step') > 512
                             then 'step must be a name of at most 512 characters'
                        when jsonb_typeof(y.s -> 'priority') not in ('number', 'null')
                             or (jsonb_typeof(y.s -> 'priority') = 'number'
                                 and ((y.s ->> 'priority')::numeric not between -32768 and 32767
                                      or (y.s ->> 'priority')::numeric % 1 <> 0))
                             then 'priority must be an integer in -32768..32767'
                        when jsonb_typeof(y.s -> 'max_attempts') not in ('number', 'null')
                             or (jsonb_typeof(y.s -> 'max_attempts') = 'number'
                                 and ((y.s ->> 'max_attempts')::numeric not between 1 and 2147483646
                                      or (y.s ->> 'max_attempts')::numeric % 1 <> 0))
                             then 'max_attempts must be an integer >= 1 (or null: the task''s default)'
                        when jsonb_typeof(y.s -> 'inputs') not in ('string', 'null')
                             or (y.s ->> 'inputs') not in ('none', 'previous', 'results', 'outcomes',
                                                           'error')
                             then 'inputs must be none, previous, results, outcomes or error'
                        when jsonb_typeof(y.s -> 'any_outcome') not in ('boolean', 'null')
                             or jsonb_typeof(y.s -> 'on_error') not in ('boolean', 'null')
                             then 'any_outcome and on_error must be true or false'
                   end as bad_field
              from jsonb_array_elements(steps) with ordinality y(s, ord)) x
     where jsonb_typeof(x.s) <> 'object'
        or coalesce(x.s ->> 'task', '') = ''
        or x.unknown <> '{}'
        or jsonb_typeof(coalesce(x.s -> 'args', '[]')) <> 'array'
        or jsonb_typeof(coalesce(x.s -> 'kwargs', '{}')) <> 'object'
        or x.bad_delay
        or x.bad_field is not null
        or jsonb_typeof(coalesce(x.s -> 'depends_on', '[]')) <> 'array'
        or jsonb_typeof(coalesce(x.s -> 'after', '[]')) <> 'array'
     order by x.ord
     limit 1;
    if v_bad is null and exists (select 1 from unnest(enqueue_workflow.result_steps) r
                                  where r is null or r not between 0 and v_n - 1) then
        v_bad := format('result_steps must be indexes of steps (0 to %s), got %s',
                        v_n - 1, enqueue_workflow.result_steps);
    end if;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    perform pgqueue.check_meta(enqueue_workflow.meta, 'pgqueue.enqueue_workflow');
    perform pgqueue.check_meta(x.s -> 'meta', format('pgqueue.enqueue_workflow: step %s', x.ord - 1))
       from jsonb_array_elements(steps) with ordinality x(s, ord)
      where x.s ? 'meta' and jsonb_typeof(x.s -> 'meta') <> 'null';

    -- Every edge, flattened once: step ordinal (1-based), dependency index (0-based),
    -- position in the inputs (null for an ordering-only "after" edge).
    select coalesce(array_agg(e.ord), '{}'), coalesce(array_agg(e.dep), '{}'),
           coalesce(array_agg(e.pos), '{}')
      into v_e_ord, v_e_dep, v_e_pos
      from (select x.ord::integer as ord,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end as dep,
                   (d.n - 1)::integer as pos
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'depends_on', '[]')) with ordinality d(v, n)
            union all
            select x.ord::integer,
                   case when jsonb_typeof(d.v) = 'number' and d.v::text ~ '^[0-9]{1,9}$'
                        then d.v::text::integer end,
                   null
              from jsonb_array_elements(steps) with ordinality x(s, ord),
                   jsonb_array_elements(coalesce(x.s -> 'after', '[]')) d(v)) e;
    -- Steps come in dependency order: a step may only wait for steps listed before it,
    -- which also rules out cycles.
    select format('step %s: %s', e.o - 1, case when e.d is null
                      then 'a dependency is not a step index (an integer)'
                      else format('dependency %s is not the index of an earlier step', e.d) end)
      into v_bad
      from unnest(v_e_ord, v_e_dep) e(o, d)
     where e.d is null or e.d >= e.o - 1
     limit 1;
    if v_bad is null then
        select format('step %s: dependency %s is listed twice', e.o - 1, e.d) into v_bad
          from unnest(v_e_ord, v_e_dep) e(o, d) group by e.o, e.d having count(*) > 1 limit 1;
    end if;
    if v_bad is not null then
        raise exception 'pgqueue.enqueue_workflow: %', v_bad using errcode = 'invalid_parameter_value';
    end if;
    select array_agg(coalesce(c.n, 0) order by g.i) into v_deps
      from generate_series(1, v_n) g(i)
      left join (select o, count(*)::integer as n from unnest(v_e_ord) o group by o) c on c.o = g.i;

    select count(*), min(x.ord) into v_errors, v_error_ord
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     where coalesce((x.s ->> 'on_error')::boolean, false);
    if v_errors > 1 then
        raise exception 'pgqueue.enqueue_workflow: at most one step may be the error callback'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_errors = 1 and (v_deps[v_error_ord] > 0 or v_error_ord - 1 = any(v_e_dep)) then
        raise exception 'pgqueue.enqueue_workflow: the error callback has no dependencies and no dependents'
            using errcode = 'invalid_parameter_value';
    end if;
    if v_n - v_errors < 1 then
        raise exception 'pgqueue.enqueue_workflow: a workflow needs a step besides its error callback'
            using errcode = 'invalid_parameter_value';
    end if;

    insert into pgqueue.workflows as w (name, total, remaining, result_is_list)
    values (enqueue_workflow.name, v_n - v_errors, v_n - v_errors,
            coalesce(enqueue_workflow.result_is_list, false))
    returning w.id into v_wf;

    -- Ids first, so that step i gets v_ids[i] whatever order the insert runs in.
    v_seq := pg_get_serial_sequence('pgqueue.jobs', 'id')::regclass;
    select array_agg(nextval(v_seq)) into v_ids from generate_series(1, v_n);

    insert into pgqueue.jobs (id, task, args, kwargs, queue, priority, run_at, max_attempts,
                              state, workflow_id, workflow_step, deps_pending, inputs, any_outcome,
                              meta)
    overriding system value
    select v_ids[x.ord], x.s ->> 'task', coalesce(x.s -> 'args', '[]'), coalesce(x.s -> 'kwargs', '{}'),
           coalesce(x.s ->> 'queue', 'default'), coalesce((x.s ->> 'priority')::integer, 0),
           -- a delay of a step that can start at once counts from this statement;
           -- a waiting step's from its readiness (fan-in adds run_at - created_at)
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord
                     or coalesce((x.s ->> 'delay')::float8, 0) <= 0 then now()
                else v_clock end
               + make_interval(secs => greatest(coalesce((x.s ->> 'delay')::float8, 0), 0)),
           (x.s ->> 'max_attempts')::integer,    -- null: the task's default
           case when v_deps[x.ord] > 0 or x.ord = v_error_ord then 'pending'
                when coalesce((x.s ->> 'delay')::float8, 0) > 0 then 'scheduled'
                else 'available' end,
           v_wf, x.s ->> 'step', v_deps[x.ord],
           case when x.ord = v_error_ord then 'error' else coalesce(x.s ->> 'inputs', 'none') end,
           coalesce((x.s ->> 'any_outcome')::boolean, false),
           -- a step's own meta, else the workflow's
           coalesce(nullif(x.s -> 'meta', 'null'::jsonb), enqueue_workflow.meta, '{}')
      from jsonb_array_elements(steps) with ordinality x(s, ord)
     order by x.ord;

    insert into pgqueue.job_dependencies (job_id, depends_on, position)
    select v_ids[e.o], v_ids[e.d + 1], e.p
      from unnest(v_e_ord, v_e_dep, v_e_pos) e(o, d, p);

    update pgqueue.workflows w
       set on_error_job_id = case when v_error_ord is not null then v_ids[v_error_ord] end,
           result_job_ids = coalesce((select array_agg(v_ids[r.i + 1] order by r.n)
                                        from unnest(enqueue_workflow.result_steps)
                                             with ordinality r(i, n)
                                       where r.i between 0 and v_n - 1), '{}')
     where w.id = v_wf;

    workflow_id := v_wf;
    job_ids := v_ids;
    return next;
end $$;

create or replace function pgqueue.prune(older_than interval, states text[] default array['completed', 'discarded', 'cancelled'])
returns bigint
language plpgsql volatile set search_path = pg_catalog, pgqueue as $$
declare
    v_n bigint;
begin
    if prune.older_than is null or prune.older_than < interval '0' then
        raise exception 'pgqueue.prune: older_than must be an interval of 0 or more, got %', coalesce(prune.older_than::text, 'null')
            using errcode = '22023',
                  hint = 'interval ''0'' deletes every finished job';
    end if;
    with gone as (
        delete from pgqueue.jobs j
         where j.finished_at < now() - prune.older_than
           and j.state = any(prune.states)
           and (j.workflow_id is null
                or not exists (select 1 from pgqueue.workflows w
                                where w.id = j.workflow_id and w.finished_at is null))
        returning 1
    ), emptied as (
        -- finished workflows whose steps an earlier prune removed (this statement's
        -- snapshot still sees the steps it deletes: those go at the next prune)
        delete from pgqueue.workflows w
         where w.finished_at < now() - prune.older_than
           and not exists (select 1 from pgqueue.jobs j where j.workflow_id = w.id)
    )
    select count(*) into v_n from gone;
    return v_n;
end $$;

-- pgqueue migration 0018: the worker's statements keep their plans.
--
-- A plpgsql function caches each statement's plan for the session, but while a
-- statement takes parameters PostgreSQL plans it again for every call unless the
-- generic plan looks as cheap as the custom ones; for a claim (LIMIT batch, estimated
-- at a tenth of the table) it never does. A third of a claim's server time went to
-- planning, and a SQL function such as next_due is planned on every call: 2.4 ms of
-- planning for 0.4 ms of work, once per idle claim.
--
-- 1. claim, claim_candidates, complete, fail and next_due plan once per session
--    (plan_cache_mode = force_generic_plan), and with enable_seqscan = off, so that
--    a plan made while the table was nearly empty still reads by index once it holds
--    millions of rows (a generic plan is kept until the table's statistics change).
-- 2. claim without positions reads through claim_candidates as claim with positions
--    does, so its generic plan is the index's: its own statement, planned once with an
--    unknown LIMIT, sorted the whole queue.
-- 3. next_due is plpgsql, so that its plan is kept; its answer is unchanged.

create or replace function pgqueue.claim(worker_id uuid, queues text[], tasks text[], batch integer,
                              position_queues text[] default null,
                              position_priorities smallint[] default null,
                              position_run_ats timestamptz[] default null,
                              position_ids bigint[] default null,
                              task_max_attempts integer[] default null,
                              task_timeouts double precision[] default null,
                              task_concurrency integer[] default null)
returns setof pgqueue.jobs
language plpgsql volatile
set search_path = pg_catalog, pgqueue set enable_seqscan = off
set plan_cache_mode = force_generic_plan as $$
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
    -- Flow control: a queue with a limit, or a task with a concurrency, claims through
    -- claim_limited; every other claim keeps the plain path below.
    if (claim.task_concurrency is not null
        and exists (select 1 from unnest(claim.task_concurrency) c where c is not null))
       or exists (select 1 from pgqueue.queues q
                   where q.name = any(v_queues)
                     and (q.concurrency is not null or q.rate_limit is not null
                          or q.partition_concurrency is not null
                          or q.partition_rate_limit is not null)) then
        return query
        select * from pgqueue.claim_limited(claim.worker_id, v_queues, claim.tasks, claim.batch,
                                            claim.task_max_attempts, claim.task_timeouts,
                                            claim.task_concurrency);
        return;
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
        -- Without a position (v_levels null) claim_candidates reads every level from
        -- its start. The ids as an array, looked up by primary key: joined to the
        -- function's result instead, the planner took its default estimate of 1000
        -- rows and read the whole table for every claim.
        return query
        update pgqueue.jobs j
           set state = 'running',
               attempt = j.attempt + 1,
               started_at = now(),
               worker_id = claim.worker_id,
               cancel_requested_at = null,
               -- what the enqueuer left null: the claiming worker's declaration
               max_attempts = coalesce(j.max_attempts,
                   claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
               timeout = coalesce(j.timeout, make_interval(
                   secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
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
           cancel_requested_at = null,
           -- what the enqueuer left null: the claiming worker's declaration
           max_attempts = coalesce(j.max_attempts,
               claim.task_max_attempts[array_position(claim.tasks, j.task)], 20),
           timeout = coalesce(j.timeout, make_interval(
               secs => claim.task_timeouts[array_position(claim.tasks, j.task)]))
     where j.id = any(array(select c.id from candidates c))
    returning j.*;
end $$;

alter function pgqueue.claim_candidates(text, text[], integer, smallint[], timestamptz[], bigint[])
    set plan_cache_mode = force_generic_plan;
alter function pgqueue.complete(uuid, bigint[], integer[], jsonb[])
    set plan_cache_mode = force_generic_plan;
alter function pgqueue.fail(uuid, bigint, integer, jsonb, interval, boolean, double precision, double precision)
    set plan_cache_mode = force_generic_plan;

create or replace function pgqueue.next_due(queues text[], tasks text[], task_concurrency integer[] default null)
returns double precision
language plpgsql stable
set search_path = pg_catalog, pgqueue set enable_seqscan = off
set plan_cache_mode = force_generic_plan as $$
begin
    return least(
        -- the next due time; negative for a job that became due in the last 2 s
        (select extract(epoch from min(j.run_at) - now())::double precision
           from pgqueue.jobs j
          where j.state in ('scheduled', 'retryable')
            and j.run_at > now() - interval '2 seconds'
            and (next_due.queues is null or j.queue = any(next_due.queues))
            and (next_due.tasks is null or j.task = any(next_due.tasks))
            and not exists (select 1 from pgqueue.queues q
                             where q.name = j.queue
                               and (q.paused or q.concurrency is not null
                                    or q.rate_limit is not null
                                    or q.partition_concurrency is not null
                                    or q.partition_rate_limit is not null))),
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
                                            where q.name = j.queue and q.paused))),
        -- a limited queue with due jobs: at its rate limit, when the oldest start of
        -- the window leaves it; otherwise (a concurrency slot frees when a job ends,
        -- unannounced) look again in 0.1 s
        (select min(case
                    when q.rate_limit is not null
                         and (select count(*) from pgqueue.job_starts s
                               where s.queue = q.name
                                 and s.started_at >= clock_timestamp() - q.rate_period) >= q.rate_limit
                    then greatest(0.02, extract(epoch from
                             (select min(s.started_at) from pgqueue.job_starts s
                               where s.queue = q.name
                                 and s.started_at >= clock_timestamp() - q.rate_period)
                             + q.rate_period - clock_timestamp())::double precision)
                    else 0.1 end)
           from pgqueue.queues q
          where not q.paused
            and (q.concurrency is not null or q.rate_limit is not null
                 or q.partition_concurrency is not null or q.partition_rate_limit is not null)
            and (next_due.queues is null or q.name = any(next_due.queues))
            and exists (select 1 from pgqueue.jobs j
                         where j.queue = q.name
                           and j.state in ('available', 'scheduled', 'retryable')
                           and j.run_at <= now()
                           and (next_due.tasks is null or j.task = any(next_due.tasks)))),
        -- a task at its concurrency with due jobs: look again in 0.1 s
        (select 0.1::double precision
          where exists (select 1 from pgqueue.jobs j
                          join unnest(next_due.tasks, next_due.task_concurrency) as t(name, c)
                            on t.name = j.task and t.c is not null
                         where j.state in ('available', 'scheduled', 'retryable')
                           and j.run_at <= now()
                           and (next_due.queues is null or j.queue = any(next_due.queues)))));
end $$;

insert into pgqueue.migrations (version, name) values (1, '0001_initial'), (2, '0002_workflows'), (3, '0003_observability'), (4, '0004_claim_positions'), (5, '0005_cancel_and_retry'), (6, '0006_due_range_stale'), (7, '0007_task_defaults'), (8, '0008_schedules'), (9, '0009_roles'), (10, '0010_dashboard'), (11, '0011_batches'), (12, '0012_meta'), (13, '0013_flow_control'), (14, '0014_job_filters'), (15, '0015_enqueue_cost'), (16, '0016_retry_waits_for_dependencies'), (17, '0017_sql_api_checks'), (18, '0018_cached_plans');
