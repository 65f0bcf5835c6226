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
