-- pgqueue migration 0010: the dashboard's failure views stay fast on large tables.
--
-- An operator's first question in an incident is "what failed, and can I retry it?": the
-- dashboard lists and counts the discarded jobs of a queue (and bulk-retries them). No
-- index reached them, so counting them read the whole table (about 190 ms per million
-- finished jobs). This partial index holds only discarded jobs: inserting and claiming
-- jobs never touch it, a job enters it once, when it is discarded, and retrying it takes
-- it out.

create index jobs_discarded_idx on pgqueue.jobs (queue, id)
    where state = 'discarded';
