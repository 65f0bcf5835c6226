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
