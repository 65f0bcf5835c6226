"""What SQL can write that Python cannot read, and the timing contracts of the SQL API.

Any language enqueues through ``pgqueue.enqueue`` or plain inserts, so a worker must
survive rows no Python producer would write: a job whose document it cannot parse fails
alone, with a message saying why; a ``run_at`` no client can read is refused. The
``next_due`` window and the per-worker ``stale_after`` are checked at the SQL level,
where they are decided.
"""

from __future__ import annotations

import json
from re import escape as re_escape
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from pgqueue import migrate
from pgqueue.cli import main

from .conftest import wait_until


def _state(conn: psycopg.Connection, job_id: int) -> tuple[str, int, str | None]:
    return conn.execute("select state, attempt, errors -> -1 ->> 'message' "
                        "from pgqueue.jobs where id = %s", (job_id,)).fetchone()


def _sql_enqueue(conn: psycopg.Connection, task: str, args_json: str) -> int:
    return conn.execute("select pgqueue.enqueue(%s, %s::jsonb)", (task, args_json)).fetchone()[0]


def test_a_job_whose_arguments_this_worker_cannot_read_fails_alone(app, conn, start_worker):
    """Arguments written by SQL that Python cannot parse (an integer of 5,000 digits,
    nesting 3,000 deep) discard their own job at attempt 1 with a message naming the
    problem; the jobs claimed in the same batch run, and nothing stays running."""
    @app.task(name="sql.echo")
    def echo(*args):
        return len(args)

    # only a direct insert can store args that are not an array: they were passed one
    # character (or key) per positional argument, or retried 20 times
    shapes = [conn.execute("insert into pgqueue.jobs (task, args, kwargs) values "
                           "('sql.echo', %s::jsonb, %s::jsonb) returning id",
                           (a, k)).fetchone()[0]
              for a, k in (('"abc"', "{}"), ('{"a": 1}', "{}"), ("[]", "[1]"))]
    huge = _sql_enqueue(conn, "sql.echo", "[" + "9" * 5000 + "]")
    deep = _sql_enqueue(conn, "sql.echo", "[" + "[" * 3000 + "]" * 3000 + "]")
    kw = conn.execute("select pgqueue.enqueue('sql.echo', kwargs => %s::jsonb)",
                      ('{"n": ' + "7" * 5000 + "}",)).fetchone()[0]
    fine = [_sql_enqueue(conn, "sql.echo", "[1, 2]") for _ in range(3)]
    start_worker(app, concurrency=2, claim_batch=10)
    wait_until(lambda: all(_state(conn, i)[0] in ("completed", "discarded")
                           for i in (huge, deep, kw, *fine, *shapes)), 10,
               message="all jobs finished")
    state, attempt, message = _state(conn, huge)
    assert (state, attempt) == ("discarded", 1)
    assert "arguments (args) cannot be read" in message and "digits" in message
    state, attempt, message = _state(conn, deep)
    assert (state, attempt) == ("discarded", 1)
    assert "nested too deeply" in message
    state, attempt, message = _state(conn, kw)
    assert (state, attempt) == ("discarded", 1)
    assert "keyword arguments (kwargs) cannot be read" in message
    assert [_state(conn, i)[:2] for i in fine] == [("completed", 1)] * 3
    for i in shapes:
        state, attempt, message = _state(conn, i)
        assert (state, attempt) == ("discarded", 1) and "must be a JSON array" in message
    assert conn.execute("select count(*) from pgqueue.jobs "
                        "where state = 'running'").fetchone()[0] == 0


@pytest.mark.parametrize("run_at", ["infinity", "-infinity", "0001-01-01 00:00:00+14",
                                    "4000-01-01 BC", "10000-01-01 00:00:00+00"])
def test_sql_enqueue_refuses_a_run_at_no_client_can_read(app, conn, start_worker, run_at):
    """Before, '-infinity' was stored and every later claim failed ("cannot subtract
    infinite timestamps"); 'infinity' broke next_due. Now the enqueue raises 22023 with
    the range, the constraint also stops direct inserts, and committed jobs still run."""
    @app.task(name="sql.ok")
    def ok():
        return "ran"

    before = ok.enqueue()
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match="run_at must be a finite time between 0001-01-02 and 9999-12-31"):
        conn.execute("select pgqueue.enqueue('sql.ok', run_at => %s::timestamptz)", (run_at,))
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_run_at_in_range"):
        conn.execute("insert into pgqueue.jobs (task, run_at) values ('sql.ok', %s)", (run_at,))
    start_worker(app)
    assert before.result(timeout=10) == "ran"
    assert ok.enqueue().result(timeout=10) == "ran"
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 2


def test_migration_moves_unreadable_run_ats_to_the_edge_of_the_range(empty_dsn):
    """Rows stored before the constraints existed: '-infinity' becomes the earliest time
    (the job still runs first), 'infinity' the latest (it still waits), attempt -1 0."""
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate.apply(conn, target=5)
        early, late, normal = (conn.execute(
            "insert into pgqueue.jobs (task, run_at, state) values ('m.t', %s::timestamptz, "
            "%s) returning id", (r, s)).fetchone()[0]
            for r, s in (("-infinity", "available"), ("infinity", "scheduled"),
                         ("2026-12-06 10:00+00", "available")))
        conn.execute("update pgqueue.jobs set attempt = -1 where id = %s", (normal,))
        migrate.apply(conn)
        assert conn.execute("select attempt from pgqueue.jobs where id = %s",
                            (normal,)).fetchone() == (0,)
        got = dict(conn.execute("select id, to_char(run_at at time zone 'UTC', "
                                "'YYYY-MM-DD HH24:MI:SS') from pgqueue.jobs").fetchall())
        assert got == {early: "0001-01-02 00:00:00", late: "9999-12-30 23:59:59",
                       normal: "2026-12-06 10:00:00"}
        assert conn.execute("select pgqueue.next_due(null, null)").fetchone()[0] > 0


def test_next_due_reports_a_job_that_became_due_after_the_claim(conn):
    """A worker that claimed just before a scheduled job's run_at, then asked next_due
    just after it, was told nothing waits and slept until its poll (60 s in the tests
    that failed). next_due now returns a negative number for a job that became due in
    the last 2 s and still waits, so the worker claims again at once."""
    conn.execute("insert into pgqueue.jobs (task, state, run_at) "
                 "values ('t.a', 'scheduled', now() - interval '300 milliseconds')")
    due = conn.execute("select pgqueue.next_due(null, null)").fetchone()[0]
    assert due is not None and -0.5 < due < 0
    assert conn.execute("select pgqueue.next_due(null, array['t.other'])").fetchone()[0] is None
    # due for 10 s and still waiting: another transaction held its row while claims
    # passed it (no notification comes when that lock goes), so look again in a second
    conn.execute("update pgqueue.jobs set run_at = now() - interval '10 seconds'")
    assert conn.execute("select pgqueue.next_due(null, null)").fetchone()[0] == 1.0
    # due for minutes: not a reason to wake every second; the poll finds it
    conn.execute("update pgqueue.jobs set run_at = now() - interval '5 minutes'")
    assert conn.execute("select pgqueue.next_due(null, null)").fetchone()[0] is None
    conn.execute("insert into pgqueue.jobs (task, state, run_at) "
                 "values ('t.a', 'retryable', now() + interval '30 seconds')")
    assert 29 < conn.execute("select pgqueue.next_due(null, null)").fetchone()[0] <= 30
    conn.execute("insert into pgqueue.jobs (task, state, run_at) "
                 "values ('t.a', 'scheduled', now() - interval '20 seconds')")
    assert conn.execute("select pgqueue.next_due(null, null)").fetchone()[0] == 1.0


def test_a_due_job_whose_row_was_held_is_claimed_within_seconds(app, conn, dsn, start_worker):
    """A transaction held a scheduled job's row past its due time (an operator's
    `update ... set timeout` left open): the worker's claim skipped it and, with nothing
    to announce the lock's release, the job waited for the poll (60 s here)."""
    @app.task(name="sql.held")
    def held():
        return "ran"

    start_worker(app, poll_interval=60)
    job = held.using(delay=0.5).enqueue()
    with psycopg.connect(dsn) as tx:
        tx.execute("select 1 from pgqueue.jobs where id = %s for update", (job.id,))
        wait_until(lambda: conn.execute("select run_at < now() - interval '2.5 seconds' "
                                        "from pgqueue.jobs where id = %s",
                                        (job.id,)).fetchone()[0], 10, 0.05,
                   "the job due for 2.5 s while its row is held")
    assert job.result(timeout=10) == "ran"
    late = conn.execute("select extract(epoch from started_at - run_at) from pgqueue.jobs "
                        "where id = %s", (job.id,)).fetchone()[0]
    print(f"\nheld row: started {float(late):.2f} s after its run_at")
    assert _state(conn, job.id)[:2] == ("completed", 1)


def test_a_direct_insert_cannot_set_an_attempt_the_claim_cannot_advance(app, conn, start_worker):
    """attempt -1 (or the integer's limit) failed the claim statement that took the row:
    no worker claimed anything in any queue, every second a traceback."""
    @app.task(name="sql.fine")
    def fine():
        return "ran"

    for attempt in (-1, 2147483647):
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_attempt_in_range"):
            conn.execute("insert into pgqueue.jobs (task, queue, attempt) "
                         "values ('sql.fine', 'poison', %s)", (attempt,))
    start_worker(app)
    assert fine.enqueue().result(timeout=10) == "ran"


def test_release_after_a_lost_reply_matches_the_attempt_not_just_the_id(conn):
    """A worker still tracking attempt 1 of a job (its thread ran on after a peer rescued
    it) lost the reply of the claim that took attempt 2: matched by id alone, attempt 2
    was kept and stayed running under a live worker that never started it."""
    wid = str(uuid.uuid4())
    job = conn.execute("insert into pgqueue.jobs (task, state, worker_id, started_at, attempt, "
                       "max_attempts) values ('t.a', 'running', %s, now(), 2, 20) returning id",
                       (wid,)).fetchone()[0]
    kept = conn.execute("select pgqueue.release_unknown(%s, %s, %s)",
                        (wid, [job], [2])).fetchall()
    assert kept == [] and _state(conn, job)[:2] == ("running", 2)
    # without attempts, a known id still matches any attempt (callers of version 5)
    assert conn.execute("select pgqueue.release_unknown(%s, %s)", (wid, [job])).fetchall() == []
    released = conn.execute("select pgqueue.release_unknown(%s, %s, %s)",
                            (wid, [job], [1])).fetchall()
    assert released == [(job,)] and _state(conn, job)[:2] == ("available", 1)


def _peer(conn: psycopg.Connection, stale_after: str | None, silent_for: str) -> tuple[str, int]:
    """A worker row with its own stale_after, silent for ``silent_for``, running one job."""
    wid = str(uuid.uuid4())
    conn.execute("select pgqueue.heartbeat(%s, 'peer', 'host', 1, null, '{t.a}', 1, "
                 "%s::interval)", (wid, stale_after))
    conn.execute("update pgqueue.workers set heartbeat_at = now() - %s::interval "
                 "where id = %s", (silent_for, wid))
    job = conn.execute("insert into pgqueue.jobs (task, state, worker_id, started_at, attempt, "
                       "max_attempts) values ('t.a', 'running', %s, now(), 1, 20) returning id",
                       (wid,)).fetchone()[0]
    return wid, job


def test_each_worker_is_judged_dead_by_its_own_stale_after(conn, dsn):
    """Before, a worker with stale_after 3 s rescued the running job of a live peer that
    heartbeats every 10 s with stale_after 30 s: the job ran twice. Rescue now reads
    the owner's recorded stale_after (the caller's for a worker that recorded none)."""
    _, slow_alive = _peer(conn, "30 seconds", "8 seconds")
    _, slow_dead = _peer(conn, "30 seconds", "40 seconds")
    _, fast_dead = _peer(conn, "2 seconds", "5 seconds")
    _, old_style = _peer(conn, None, "5 seconds")     # judged by the caller's 3 s
    rescued = dict(conn.execute(
        "select id, state from pgqueue.rescue(interval '3 seconds')").fetchall())
    assert rescued == {slow_dead: "available", fast_dead: "available",
                       old_style: "available"}
    assert _state(conn, slow_alive)[0] == "running"
    # `pgqueue workers` judges each by its own setting too (the option: the rest)
    res = CliRunner().invoke(main, ["--dsn", dsn, "workers", "--all", "--json",
                                    "--stale-after", "3"])
    assert res.exit_code == 0, res.output
    assert sorted(w["alive"] for w in json.loads(res.stdout)) == [False, False, False, True]


def test_worker_records_its_stale_after(app, conn, start_worker):
    app.task(lambda: None, name="t.noop")
    w = start_worker(app, stale_after=7.5, heartbeat_interval=0.5)
    row = conn.execute("select extract(epoch from stale_after)::float8 from pgqueue.workers "
                       "where id = %s", (w.worker.id,)).fetchone()
    assert row == (7.5,)


def test_transactional_task_with_an_unstorable_result_is_discarded_and_rolled_back(
        app, conn, start_worker):
    """Like a plain task's: the same result would fail every retry. Its writes roll back."""
    conn.execute("create table ledger (job_id bigint)")

    @app.task(name="sql.unstorable", transactional=True, max_attempts=5)
    def unstorable(ctx):
        ctx.connection.execute("insert into ledger values (%s)", (ctx.job_id,))
        return {1, 2}   # a set: no JSON form

    start_worker(app)
    job = unstorable.enqueue()
    wait_until(lambda: _state(conn, job.id)[0] == "discarded", 10, message="discarded")
    state, attempt, message = _state(conn, job.id)
    assert attempt == 1 and "not supported" in message
    assert conn.execute("select count(*) from ledger").fetchone()[0] == 0


# -- the SQL API refuses what the Python API refuses (migration 0017) --------------------

@pytest.mark.parametrize("call, says", [
    ("pgqueue.enqueue('t', delay => interval '101 years')", "delay must be at most 100 years"),
    ("pgqueue.enqueue('t', priority => 99999)", "priority must be in -32768..32767"),
    ("pgqueue.enqueue('t', max_attempts => 0)", "max_attempts must be >= 1"),
    ("pgqueue.enqueue('t', unique_key => repeat('k', 1001))", "unique_key must have 1 to 1000"),
    ("pgqueue.enqueue('t', unique_key => '')", "unique_key must have 1 to 1000"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "args": {}}]')""",
     "step 0: args must be a JSON array"),
    ("""pgqueue.enqueue_workflow('[{"task": "t"}, {"task": "u", "kwargs": []}]')""",
     "step 1: kwargs must be a JSON object"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "delay": -5}]')""",
     "step 0: delay must be 0 or a number of seconds"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "delay": "5"}]')""",
     "step 0: delay must be 0 or a number of seconds"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "max_atempts": 3}]')""",
     "step 0: unknown key 'max_atempts'"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "unique_key": "k"}]')""",
     "step 0: unknown key 'unique_key'"),
    ("""pgqueue.enqueue_workflow('[{"task": "t"}]', result_steps => '{5}')""",
     "result_steps must be indexes of steps (0 to 0)"),
    ("""pgqueue.enqueue_workflow('[{"task": "t"}]', result_steps => '{NULL}')""",
     "result_steps must be indexes of steps"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "queue": ""}]')""",
     "step 0: queue must be a name of 1 to 128 characters"),
    ("""pgqueue.enqueue_workflow(jsonb_build_array(jsonb_build_object('task', 't',
        'queue', repeat('q', 129))))""", "step 0: queue must be a name of 1 to 128"),
    ("""pgqueue.enqueue_workflow('[{"task": {"x": 1}}]')""",
     "step 0: task must be a name of 1 to 512 characters"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "step": {"x": 1}}]')""",
     "step 0: step must be a name"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "priority": 99999}]')""",
     "step 0: priority must be an integer in -32768..32767"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "priority": 1.5}]')""",
     "step 0: priority must be an integer"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "max_attempts": 0}]')""",
     "step 0: max_attempts must be an integer >= 1"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "inputs": "bogus"}]')""",
     "step 0: inputs must be none, previous, results, outcomes or error"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "on_error": "yes"}, {"task": "u"}]')""",
     "step 0: any_outcome and on_error must be true or false"),
    ("""pgqueue.enqueue_workflow('[{"task": "t", "delay": 1e-400}]')""",
     "step 0: delay must be 0 or a number of seconds from 0.000001"),
    ("pgqueue.prune(interval '-1 day')", "older_than must be an interval of 0 or more"),
    ("pgqueue.prune(null)", "older_than must be an interval of 0 or more"),
])
def test_sql_api_refuses_what_python_refuses_naming_it(conn, call, says):
    """Each was accepted: a delay of centuries, a key past the index's limit (a raw
    "index row size" error), a step's job failing at run time, a negative delay read
    as none, a misspelt step key ignored, result steps dropped (a null result), a
    negative prune age deleting every finished job."""
    (done,) = conn.execute("insert into pgqueue.jobs (task, state, finished_at) values "
                           "('old', 'completed', now()) returning id").fetchone()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re_escape(says)), \
            conn.transaction():
        conn.execute(f"select {call}")
    assert conn.execute("select array_agg(id) from pgqueue.jobs").fetchone()[0] == [done]
    assert conn.execute("select count(*) from pgqueue.workflows").fetchone()[0] == 0


def test_sql_api_still_takes_the_edges_of_each_range(conn):
    conn.execute("select pgqueue.enqueue('t', delay => interval '36525 days', "
                 "priority => -32768, max_attempts => 1, unique_key => repeat('k', 1000))")
    conn.execute("""select pgqueue.enqueue_workflow('[{"task": "t", "delay": 0},
                    {"task": "u", "delay": 1.5, "depends_on": [0]}]', result_steps => '{1}')""")
    conn.execute("insert into pgqueue.jobs (task, state, finished_at) values "
                 "('old', 'completed', now() - interval '1 hour')")
    assert conn.execute("select pgqueue.prune(interval '0')").fetchone()[0] == 1
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 3
