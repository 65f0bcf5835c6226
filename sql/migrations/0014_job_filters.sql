-- pgqueue migration 0014: the dashboard's job list filtered by partition key or schedule
-- stays fast on large tables.
--
-- "What happened to tenant acme's jobs?" and "what did the nightly schedule run?" list
-- jobs of one partition key or one schedule, newest first. Without an index the list
-- walks the primary key backwards through every finished job until it has a page, which
-- for a rare key is the whole table. Both indexes are partial: a job without a partition
-- key or a schedule (most jobs) never enters them, so only enqueues that set one pay
-- for an index entry.

create index jobs_partition_key_idx on pgqueue.jobs (partition_key, id)
    where partition_key is not null;

create index jobs_schedule_idx on pgqueue.jobs (schedule_name, id)
    where schedule_name is not null;
