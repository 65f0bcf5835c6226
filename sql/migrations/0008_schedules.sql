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
