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
