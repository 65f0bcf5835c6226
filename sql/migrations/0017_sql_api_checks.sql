-- pgqueue migration 0017: the SQL API refuses what the Python API refuses.
--
-- 1. pgqueue.enqueue took a delay of over 100 years, a unique_key longer than the
--    1000 bytes Python allows (up to the index's limit, where it failed with "index
--    row size exceeds"), a max_attempts below 1 (refused by a constraint, in its
--    words) and a priority beyond smallint (refused by the cast: "smallint out of
--    range"). Each is now refused naming the argument and its range.
-- 2. pgqueue.enqueue_workflow took steps whose args were no array or kwargs no object
--    (the job failed at run time), a negative delay (read as none), keys it does not
--    know (a misspelt "max_atempts", a "unique_key" that steps do not take) and
--    result_steps that name no step (dropped, so the result was null). Each is now
--    refused naming the step and the key.
-- 3. pgqueue.prune with a negative age deleted every finished job, the newest too; a
--    negative or null age is refused (interval '0' still deletes every finished job).

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
