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
