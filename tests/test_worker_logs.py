"""What a worker logs about its jobs: failures where an operator looks, successes quiet.

A failed attempt that will be retried logs at WARNING with the exception's type and
message, a discarded job at ERROR with the full traceback, successes at DEBUG only (no
INFO line per job), and a late outcome fenced out because the job was rescued and
claimed again logs one WARNING naming the job, the attempt it held and the attempt that
owns the job now. Each test also checks the job rows.
"""

from __future__ import annotations

import logging
import threading

import psycopg
import pytest

import pgqueue
from tests.conftest import wait_until

NO_WAIT = pgqueue.RetryPolicy(base=0.0, cap=0.0)


def _records(caplog, job_id):
    return [r for r in caplog.records
            if r.name == "pgqueue.worker" and getattr(r, "job_id", None) == job_id]


def _row(conn, job_id):
    return conn.execute("select state, attempt, jsonb_array_length(errors), result "
                        "from pgqueue.jobs where id = %s", (job_id,)).fetchone()


def test_at_warning_level_failures_are_logged_and_successes_are_not(app, conn, start_worker,
                                                                    caplog):
    caplog.set_level(logging.WARNING, logger="pgqueue")     # `--log-level warning`

    @app.task(name="lg.boom", max_attempts=2, retry=NO_WAIT)
    def boom(n):
        raise ValueError(f"bad input {n}")

    @app.task(name="lg.ok")
    def ok(n):
        return n

    start_worker(app)
    failing = boom.enqueue(7)
    fine = ok.enqueue(1)
    assert fine.result(timeout=15) == 1
    wait_until(lambda: _row(conn, failing.id)[0] == "discarded", 15, message="discarded")
    assert _row(conn, failing.id) == ("discarded", 2, 2, None)

    retried, discarded = _records(caplog, failing.id)
    assert (retried.levelname, retried.state, retried.attempt) == ("WARNING", "retryable", 1)
    assert "builtins.ValueError: bad input 7" in retried.getMessage()
    assert "will be retried" in retried.getMessage() and retried.exc_info is None
    assert (discarded.levelname, discarded.state, discarded.attempt) == ("ERROR", "discarded", 2)
    assert "builtins.ValueError: bad input 7" in discarded.getMessage()
    assert discarded.exc_info is not None        # the full traceback, formatted by handlers
    text = caplog.handler.format(discarded)
    assert "Traceback (most recent call last)" in text and 'raise ValueError(f"bad input' in text
    assert _records(caplog, fine.id) == []


def test_successes_log_at_debug_and_never_at_info(app, conn, start_worker, caplog):
    caplog.set_level(logging.DEBUG, logger="pgqueue")

    @app.task(name="lg.ok")
    def ok(n):
        return n * 2

    start_worker(app)
    jobs = [ok.enqueue(i) for i in range(5)]
    assert [j.result(timeout=15) for j in jobs] == [0, 2, 4, 6, 8]
    for j in jobs:
        wait_until(lambda j=j: len(_records(caplog, j.id)) == 2, 5, message="two lines")
        assert [(r.levelname, r.state) for r in _records(caplog, j.id)] == [
            ("DEBUG", "running"), ("DEBUG", "completed")]
        assert _row(conn, j.id)[:2] == ("completed", 1)
    assert not [r for r in caplog.records
                if r.name == "pgqueue.worker" and r.levelno == logging.INFO
                and getattr(r, "job_id", None) is not None]


@pytest.mark.parametrize("outcome,transactional", [
    ("success", False), ("failure", False), ("success", True)])
def test_a_late_outcome_fenced_out_after_a_rescue_is_logged_once(
        app, conn, dsn, start_worker, caplog, outcome, transactional):
    """Worker A runs attempt 1; its heartbeats stop (a lock on its worker row, as a
    stalled connection would), worker B rescues the job and runs attempt 2; then A's
    attempt 1 ends, and its outcome is rejected by the attempt token."""
    caplog.set_level(logging.DEBUG, logger="pgqueue")
    release = threading.Event()

    @app.task(name="lg.hold", pass_context=True, max_attempts=5,
              transactional=transactional)
    def hold(ctx):
        if ctx.attempt == 1:
            release.wait(30)
            if outcome == "failure":
                raise RuntimeError("late failure")
            return "late"
        return "second"

    timing = {"concurrency": 1, "heartbeat_interval": 0.5, "stale_after": 2.0}
    a = start_worker(app, **timing).worker
    job = hold.enqueue()
    wait_until(lambda: _row(conn, job.id)[:2] == ("running", 1), 15, message="attempt 1 runs")
    b = start_worker(app, **timing).worker
    with psycopg.connect(dsn) as lock:
        lock.execute("select 1 from pgqueue.workers where id = %s for update", (a.id,))
        wait_until(lambda: _row(conn, job.id)[:2] == ("completed", 2), 20,
                   message="B rescued the job and completed attempt 2")
        release.set()

        def fenced():
            return [r for r in _records(caplog, job.id) if r.state == "fenced"]
        (rec,) = wait_until(fenced, 15, message="the fenced-out outcome logged")
        lock.rollback()
    assert rec.levelname == "WARNING" and rec.worker_id == str(a.id)
    assert (rec.attempt, rec.owner_attempt) == (1, 2)
    msg = rec.getMessage()
    assert f"job {job.id} lg.hold: the {outcome} of attempt 1 was rejected" in msg
    assert f"attempt 2 now owns the job (completed, worker {b.id})" in msg
    # the job keeps attempt 2's outcome; the rescue recorded attempt 1 as lost
    state, attempt, errors, result = _row(conn, job.id)
    assert (state, attempt, errors, result) == ("completed", 2, 1, "second")
    (lost,) = conn.execute("select errors -> 0 ->> 'type' from pgqueue.jobs where id = %s",
                           (job.id,)).fetchone()
    assert lost == "pgqueue.WorkerLost"
    assert len(fenced()) == 1
