-- pgqueue migration 0001: jobs, workers, queues and the SQL API of the core.
--
-- Applied by `pgqueue migrate` inside one transaction, under
-- pg_advisory_xact_lock, together with its row in pgqueue.migrations.

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
