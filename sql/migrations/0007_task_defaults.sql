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
