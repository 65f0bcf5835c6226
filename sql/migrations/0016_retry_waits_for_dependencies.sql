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
