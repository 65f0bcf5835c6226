"""Task options are authoritative (DESIGN §5.2), and delays count from the enqueue
statement (not from the start of the enqueuing transaction).

A null ``max_attempts`` or ``timeout`` means "the task's default": the SQL API, the
Python API without an explicit ``max_attempts`` and workflows leave them null, and the
claim writes the claiming worker's declarations into the row.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import psycopg
import pytest

import pgqueue
from pgqueue import chain
from tests.conftest import wait_until

DELAY = 10.0
#: how long the enqueuing transaction is open before the enqueue statement runs
HELD = 1.5


def _row(conn, job_id):
    return conn.execute("select state, attempt, max_attempts, extract(epoch from timeout), "
                        "jsonb_array_length(errors) from pgqueue.jobs where id = %s",
                        (job_id,)).fetchone()


def _failed_once(conn, job_id):
    return conn.execute("select state in ('retryable', 'discarded') from pgqueue.jobs "
                        "where id = %s", (job_id,)).fetchone()[0]


# -- declared options apply to jobs enqueued without them -------------------------------


def test_sql_enqueued_job_is_discarded_after_the_declared_max_attempts(app, conn,
                                                                        start_worker):
    @app.task(name="td.boom", max_attempts=1)
    def boom():
        raise ValueError("boom")

    (job,) = conn.execute("select pgqueue.enqueue('td.boom')").fetchone()
    assert _row(conn, job)[2] is None            # null: the task's default
    start_worker(app)
    wait_until(lambda: _failed_once(conn, job), 15, message="the first attempt failed")
    assert _row(conn, job) == ("discarded", 1, 1, None, 1)


def test_declared_timeout_applies_to_a_sql_enqueued_job(app, conn, start_worker):
    @app.task(name="td.slow", timeout=0.5, max_attempts=1)
    async def slow():
        await asyncio.sleep(30)

    (job,) = conn.execute("select pgqueue.enqueue('td.slow')").fetchone()
    start_worker(app)
    wait_until(lambda: _failed_once(conn, job), 15, message="the attempt timed out")
    state, attempt, max_attempts, timeout, errors = _row(conn, job)
    assert (state, attempt, max_attempts, float(timeout), errors) == ("discarded", 1, 1, 0.5, 1)
    (err,) = conn.execute("select errors -> 0 ->> 'type' from pgqueue.jobs where id = %s",
                          (job,)).fetchone()
    assert err == "builtins.TimeoutError"


def test_python_enqueue_stores_max_attempts_only_when_given(app, conn, start_worker):
    runs = []

    @app.task(name="td.flaky", max_attempts=2, retry=pgqueue.RetryPolicy(base=0.0, cap=0.0))
    def flaky(n):
        runs.append(n)
        raise RuntimeError("again")

    plain = flaky.enqueue(1)
    given = flaky.using(max_attempts=3).enqueue(2)
    by_name = app.enqueue("td.flaky", [3])
    assert [_row(conn, j.id)[2] for j in (plain, given, by_name)] == [None, 3, None]
    start_worker(app)
    for j, attempts in ((plain, 2), (given, 3), (by_name, 2)):
        wait_until(lambda j=j: _row(conn, j.id)[0] == "discarded", 15,
                   message=f"job {j.id} discarded")
        assert _row(conn, j.id)[:3] == ("discarded", attempts, attempts)


def test_workflow_steps_follow_the_declared_max_attempts(app, conn):
    @app.task(name="td.step", max_attempts=4)
    def step(x=0):
        return x

    h = chain(step.s(), step.s().set(max_attempts=2)).enqueue()
    assert [_row(conn, i)[2] for i in h.job_ids] == [None, 2]


def test_claim_writes_the_declarations_into_the_row(conn):
    conn.execute("select pgqueue.enqueue('td.a'), pgqueue.enqueue('td.b'), "
                 "pgqueue.enqueue('td.c', max_attempts => 7), pgqueue.enqueue('td.d')")
    rows = conn.execute(
        "select task, max_attempts, extract(epoch from timeout) from pgqueue.claim("
        "gen_random_uuid(), null, array['td.a', 'td.b', 'td.c'], 10, "
        "task_max_attempts => array[1, 5, 9], task_timeouts => array[2.5, null, 3]) "
        "order by task").fetchall()
    assert [(t, m, float(s) if s is not None else None) for t, m, s in rows] == [
        ("td.a", 1, 2.5), ("td.b", 5, None), ("td.c", 7, 3.0)]
    # a claim without declarations (a worker in another language): 20 attempts
    (m,) = conn.execute("select max_attempts from pgqueue.claim(gen_random_uuid(), null, "
                        "null, 10)").fetchone()
    assert m == 20


def test_a_running_job_always_has_its_max_attempts(conn):
    (job,) = conn.execute("select pgqueue.enqueue('td.a')").fetchone()
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_running_has_owner"):
        conn.execute("update pgqueue.jobs set state = 'running', attempt = 1, started_at = now(), "
                     "worker_id = gen_random_uuid() where id = %s", (job,))


def test_retry_of_a_job_never_claimed_keeps_the_task_default(conn):
    (job,) = conn.execute("select pgqueue.enqueue('td.a', delay => interval '1 hour')").fetchone()
    assert conn.execute("select pgqueue.retry(%s)", (job,)).fetchone()[0] == "available"
    assert _row(conn, job)[:3] == ("available", 0, None)


# -- delays count from the enqueue statement ------------------------------------------


def _held_transaction(conn):
    """Open a transaction and keep it open for HELD seconds; returns its now()."""
    conn.autocommit = False
    (start,) = conn.execute("select now()").fetchone()
    conn.execute("select pg_sleep(%s)", (HELD,))
    return start


def _clock(conn) -> dt.datetime:
    return conn.execute("select clock_timestamp()").fetchone()[0]


def _assert_due_from_statement(run_ats, tx_start, before, after):
    delay = dt.timedelta(seconds=DELAY)
    assert before - tx_start >= dt.timedelta(seconds=HELD)
    for run_at in run_ats:
        assert before + delay <= run_at <= after + delay, (run_at, tx_start, before)


def test_python_delay_counts_from_the_statement_not_the_transaction(app, dsn):
    t = app.task(lambda: None, name="td.later")
    with psycopg.connect(dsn) as conn:
        tx_start = _held_transaction(conn)
        before = _clock(conn)
        job = t.using(connection=conn, delay=DELAY).enqueue()
        after = _clock(conn)
        (run_at, state) = conn.execute("select run_at, state from pgqueue.jobs where id = %s",
                                       (job.id,)).fetchone()
        conn.commit()
    _assert_due_from_statement([run_at], tx_start, before, after)
    assert state == "scheduled"


def test_sql_delay_counts_from_the_statement_and_run_at_is_unchanged(dsn):
    with psycopg.connect(dsn) as conn:
        tx_start = _held_transaction(conn)
        before = _clock(conn)
        (job,) = conn.execute("select pgqueue.enqueue('td.later', delay => %s)",
                              (dt.timedelta(seconds=DELAY),)).fetchone()
        after = _clock(conn)
        at = tx_start + dt.timedelta(minutes=5)
        (fixed,) = conn.execute("select pgqueue.enqueue('td.later', run_at => %s)",
                                (at,)).fetchone()
        (now_job,) = conn.execute("select pgqueue.enqueue('td.now')").fetchone()
        got = dict(conn.execute("select id, run_at from pgqueue.jobs").fetchall())
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="not both"):
            conn.execute("select pgqueue.enqueue('td.x', run_at => now(), "
                         "delay => interval '1 second')")
        conn.rollback()
    _assert_due_from_statement([got[job]], tx_start, before, after)
    assert got[fixed] == at
    assert got[now_job] == tx_start      # no delay: due at once, in line by its transaction


def test_bulk_delay_counts_from_the_statement(app, dsn):
    t = app.task(lambda n: None, name="td.bulk")
    with psycopg.connect(dsn) as conn:
        tx_start = _held_transaction(conn)
        before = _clock(conn)
        n = t.using(connection=conn, delay=DELAY).enqueue_many([(i,) for i in range(50)])
        after = _clock(conn)
        got = conn.execute("select run_at, state, max_attempts from pgqueue.jobs").fetchall()
        conn.commit()
    assert n == 50 and len(got) == 50
    _assert_due_from_statement([r for r, _, _ in got], tx_start, before, after)
    assert len({r for r, _, _ in got}) == 1       # one clock reading for the statement
    assert {(s, m) for _, s, m in got} == {("scheduled", None)}


def test_workflow_delay_counts_from_the_statement(app, dsn):
    t = app.task(lambda x=0: x, name="td.wf")
    with psycopg.connect(dsn) as conn:
        tx_start = _held_transaction(conn)
        before = _clock(conn)
        h = chain(t.s().set(delay=DELAY), t.s()).using(connection=conn).enqueue()
        after = _clock(conn)
        got = dict(conn.execute("select id, run_at from pgqueue.jobs").fetchall())
        conn.commit()
    _assert_due_from_statement([got[h.job_ids[0]]], tx_start, before, after)
