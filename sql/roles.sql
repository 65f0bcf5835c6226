-- Least-privilege grants on the pgqueue schema, one block per role (loaded by
-- pgqueue/roles.py, printed and applied by `pgqueue roles`). {producer}, {worker} and
-- {operator} are role names, filled in as quoted identifiers. Run as the role that owns
-- the schema (the one that ran `pgqueue migrate`), again after every migration.
--
-- Each block first revokes everything the role held on the schema, so the grants below
-- are exactly what it holds afterwards, and re-running a block is harmless. Functions
-- are granted by explicit name: a function a later migration adds is granted to no one
-- until it is classified here (tests/test_roles.py fails until then).

-- role: common
-- No function runs for PUBLIC. The trigger functions need no grant at all: a trigger
-- fires with the rights of the statement that fired it.
revoke execute on all functions in schema pgqueue from public;
revoke execute on function pgqueue.notify_inserted, pgqueue.notify_requeued,
    pgqueue.notify_schedules, pgqueue.workflow_rows_deleted, pgqueue.workflow_step_changed,
    pgqueue.workflow_fan_in from public;

-- role: producer
-- Enqueue (pgqueue.enqueue; enqueue_many's COPY and staged insert), enqueue workflows
-- (pgqueue.enqueue_workflow, security definer), read jobs, workflows and the worker and
-- queue tables (Job.result explains a timeout with them), check the schema version. The
-- insert is limited to the columns an enqueue writes: without worker_id, finished_at or
-- workflow_id, the table's constraints refuse a running, finished or workflow row.
revoke all on all tables in schema pgqueue from {producer};
revoke all on all sequences in schema pgqueue from {producer};
revoke all on all functions in schema pgqueue from {producer};
grant usage on schema pgqueue to {producer};
grant execute on function pgqueue.enqueue, pgqueue.enqueue_workflow, pgqueue.open_batch,
    pgqueue.add_to_batch, pgqueue.seal_batch, pgqueue.step_result, pgqueue.check_meta,
    pgqueue.queue_held_back, pgqueue.queue_rate_limited to {producer};
grant insert (task, args, kwargs, queue, priority, run_at, max_attempts, unique_key, state,
    meta, partition_key, debounce_key)
    on pgqueue.jobs to {producer};
grant select on pgqueue.jobs, pgqueue.workflows, pgqueue.job_dependencies, pgqueue.workers,
    pgqueue.queues, pgqueue.migrations, pgqueue.queue_stats, pgqueue.failed_jobs,
    pgqueue.running_jobs, pgqueue.throughput, pgqueue.workflow_steps,
    pgqueue.batches, pgqueue.job_starts to {producer};

-- role: worker
-- Every path of `pgqueue worker`: register and heartbeat, claim, complete, fail, hand
-- back, rescue, prune, declare and fire schedules, run workflow steps (the fan-in
-- triggers update workflows and edges), and tasks that enqueue. No DDL, no queue
-- settings, no cancel or retry of other jobs (grant the operator role for that).
revoke all on all tables in schema pgqueue from {worker};
revoke all on all sequences in schema pgqueue from {worker};
revoke all on all functions in schema pgqueue from {worker};
grant usage on schema pgqueue to {worker};
grant execute on function pgqueue.enqueue, pgqueue.enqueue_workflow, pgqueue.claim,
    pgqueue.claim_candidates, pgqueue.next_due, pgqueue.complete, pgqueue.fail,
    pgqueue.backoff, pgqueue.hand_back, pgqueue.heartbeat, pgqueue.rescue,
    pgqueue.release_unknown, pgqueue.job_inputs, pgqueue.prune, pgqueue.fire_schedule,
    pgqueue.schedule_job, pgqueue.step_result, pgqueue.replace_step, pgqueue.open_batch,
    pgqueue.add_to_batch, pgqueue.seal_batch, pgqueue.check_meta, pgqueue.claim_limited,
    pgqueue.flow_candidates, pgqueue.queue_held_back, pgqueue.queue_rate_limited,
    pgqueue.set_queue_limits to {worker};
grant select, insert, update, delete on pgqueue.jobs, pgqueue.workers to {worker};
grant select, update, delete on pgqueue.workflows, pgqueue.job_dependencies to {worker};
grant select, insert, update on pgqueue.schedules to {worker};
-- The app's queue declarations (app.queue) are written at worker start (limit columns
-- only, never paused), a claim of a limited queue locks its row (select ... for update
-- needs an update privilege) and moves its partition cursor; starts are recorded for
-- rate limits.
grant select, insert (name, concurrency, rate_limit, rate_period, partition_concurrency,
        partition_rate_limit, partition_rate_period, limits_set_by),
    update (concurrency, rate_limit, rate_period, partition_concurrency, partition_rate_limit,
        partition_rate_period, limits_set_by, partition_cursor, updated_at)
    on pgqueue.queues to {worker};
grant select, insert, delete on pgqueue.job_starts to {worker};
grant select on pgqueue.migrations, pgqueue.queue_stats,
    pgqueue.failed_jobs, pgqueue.running_jobs, pgqueue.throughput,
    pgqueue.workflow_steps, pgqueue.batches to {worker};

-- role: operator
-- The CLI's jobs retry/cancel/prune, queues pause/resume and schedules
-- add/pause/resume/trigger, and reads for jobs, workers, queues and check. Cancelling
-- a workflow step cancels its dependents (fan-in triggers); triggering a schedule
-- enqueues its job.
revoke all on all tables in schema pgqueue from {operator};
revoke all on all sequences in schema pgqueue from {operator};
revoke all on all functions in schema pgqueue from {operator};
grant usage on schema pgqueue to {operator};
grant execute on function pgqueue.enqueue, pgqueue.cancel, pgqueue.cancel_workflow,
    pgqueue.retry, pgqueue.retry_discarded, pgqueue.retry_many, pgqueue.rearm_step,
    pgqueue.rearm_dependents, pgqueue.prune, pgqueue.pause_schedule,
    pgqueue.trigger_schedule, pgqueue.add_schedule, pgqueue.schedule_job,
    pgqueue.step_result, pgqueue.seal_batch, pgqueue.check_meta, pgqueue.set_queue_limits,
    pgqueue.queue_held_back, pgqueue.queue_rate_limited to {operator};
grant select, insert, update, delete on pgqueue.jobs to {operator};
grant select, update, delete on pgqueue.workflows, pgqueue.job_dependencies to {operator};
grant select, insert, update on pgqueue.queues, pgqueue.schedules to {operator};
grant select on pgqueue.workers, pgqueue.migrations, pgqueue.queue_stats,
    pgqueue.failed_jobs, pgqueue.running_jobs, pgqueue.throughput,
    pgqueue.workflow_steps, pgqueue.batches, pgqueue.job_starts to {operator};
