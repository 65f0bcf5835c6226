-- Enqueue jobs of examples/scan_stdlib.py from plain SQL, then look at their state.
--
-- Any language that can run SQL can produce jobs: pgqueue.enqueue() is the same
-- function the Python API calls. Prepare the tables once, run this file with psql,
-- then let a worker run the jobs:
--
--   python examples/scan_stdlib.py --setup-only
--   psql "$PGQUEUE_DSN" -f examples/enqueue.sql                  # this file
--   psql "$PGQUEUE_DSN" -v file=/path/to/some.py -f examples/enqueue.sql
--   pgqueue worker --app examples.scan_stdlib
--
-- The job reads `file` on the worker's machine; by default it is the os.py of the
-- python3 on this machine.

\set ON_ERROR_STOP on

\if :{?file}
\else
    \set file `python3 -c 'import os; print(os.__file__)'`
\endif

begin;

-- The scan row and its jobs commit together: if this transaction rolled back,
-- no job would exist and no worker would ever see one.
insert into scans (path) values (:'file') returning id as scan_id \gset

-- Named notation; every argument except the task name is optional.
select pgqueue.enqueue(
           'examples.scan_stdlib.count_file',
           args => jsonb_build_array(:scan_id, :'file'),
           queue => 'default',
           priority => 10
       ) as job_id \gset

-- Delayed execution: becomes due in 5 minutes (state 'scheduled' until then).
select pgqueue.enqueue(
           'examples.scan_stdlib.count_file',
           args => jsonb_build_array(:scan_id, :'file'),
           delay => interval '5 minutes',   -- from this statement, not the transaction's start
           unique_key => 'rescan:' || :'file'
       ) as delayed_job_id \gset

-- The same unique_key while that job is unfinished returns the same id, adds nothing.
select pgqueue.enqueue(
           'examples.scan_stdlib.count_file',
           args => jsonb_build_array(:scan_id, :'file'),
           delay => interval '5 minutes',   -- from this statement, not the transaction's start
           unique_key => 'rescan:' || :'file'
       ) = :delayed_job_id as deduplicated;

commit;

-- Jobs by state, across all queues.
select state, count(*) from pgqueue.jobs group by state order by state;

-- The two jobs just enqueued.
select id, queue, task, state, priority, attempt, max_attempts, run_at > now() as in_future,
       args
  from pgqueue.jobs
 where id in (:job_id, :delayed_job_id)
 order by id;

-- Once a worker ran it: its result, and the row it wrote in the same transaction.
--   select state, result from pgqueue.jobs where id = <job_id>;
--   select * from file_stats where job_id = <job_id>;
