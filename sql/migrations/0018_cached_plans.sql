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
