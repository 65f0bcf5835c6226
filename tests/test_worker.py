"""The worker on a real PostgreSQL: results, retries, timeouts, async and
transactional tasks, cancellation, fencing (guarantees 3, 4 and 6)."""

import asyncio
import threading
import time
import uuid

import pytest

import pgqueue
from pgqueue import JobFailed, JobState, RetryLater, RetryPolicy

from .conftest import wait_until


def state(conn, job_id):
    return conn.execute("select state from pgqueue.jobs where id = %s", (job_id,)).fetchone()[0]


def test_results_async_tasks_and_errors_history(app, start_worker, conn):
    @app.task(name="t.add")
    def add(a, b):
        return {"sum": a + b}

    @app.task(name="t.aadd")
    async def aadd(a, b):
        await asyncio.sleep(0.01)
        return a + b

    @app.task(name="t.boom", max_attempts=2, retry=RetryPolicy(base=0.05, cap=0.05))
    def boom():
        raise ValueError("bad input 42")

    start_worker(app, concurrency=4)
    assert add.enqueue(1, 2).result(timeout=10) == {"sum": 3}
    assert aadd.enqueue(3, 4).result(timeout=10) == 7
    job = boom.enqueue()
    with pytest.raises(JobFailed) as info:
        job.result(timeout=10)
    errors = info.value.errors
    assert [e["attempt"] for e in errors] == [1, 2]
    assert all(e["type"] == "builtins.ValueError" and e["message"] == "bad input 42" for e in errors)
    assert all("Traceback" in e["traceback"] and e["worker"] and e["at"] for e in errors)
    assert job.refresh().state == JobState.DISCARDED
    assert job.attempt == 2


def test_backoff_is_computed_by_the_database_within_the_cap(conn):
    rows = conn.execute("""
        select a, extract(epoch from pgqueue.backoff(a, 1.0, 3600.0))
          from unnest(array[1, 2, 10, 19, 20, 21, 2147483646, 2147483647, 0, -5]) a""").fetchall()
    for attempt, secs in rows:
        assert 0 <= secs <= 3600, (attempt, secs)
    by = dict(rows)
    assert 0.75 <= by[1] <= 1.25 and 1.5 <= by[2] <= 2.5
    assert 2700 <= by[2147483646] <= 3600 and 2700 <= by[2147483647] <= 3600


def test_retry_due_time_uses_database_clock_and_absurd_attempts(app, conn):
    wid = uuid.uuid4()
    job = app.enqueue("t.x", max_attempts=2**31 - 1)
    conn.execute("update pgqueue.jobs set attempt = 2147483645 where id = %s", (job.id,))
    conn.execute("select * from pgqueue.claim(%s, null, null, 1)", (wid,))
    (new_state,) = conn.execute(
        "select pgqueue.fail(%s, %s, 2147483646, '{}'::jsonb, backoff_base => 1.0, "
        "backoff_cap => 60.0)", (wid, job.id)).fetchone()
    assert new_state == "retryable"
    (delay,) = conn.execute("select extract(epoch from run_at - now()) from pgqueue.jobs "
                            "where id = %s", (job.id,)).fetchone()
    assert 0 < delay <= 60


def test_retry_later_and_discard(app, start_worker, conn):
    calls = []

    @app.task(name="t.snooze", pass_context=True)
    def snooze(ctx):
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RetryLater(0.2)
        return ctx.attempt

    @app.task(name="t.discard")
    def discard():
        raise pgqueue.Discard("not worth retrying")

    start_worker(app)
    assert snooze.enqueue().result(timeout=10) == 2
    job = discard.enqueue()
    with pytest.raises(JobFailed):
        job.result(timeout=10)
    assert job.refresh().attempt == 1


def test_sync_task_timeout_fails_the_attempt(app, start_worker, conn):
    release = threading.Event()

    @app.task(name="t.slow", timeout=0.3, max_attempts=1, pass_context=True)
    def slow(ctx):
        ctx.wait_cancelled(10)      # the timeout sets the cancellation flag
        release.set()
        return "late"

    start_worker(app)
    job = slow.enqueue()
    with pytest.raises(JobFailed) as info:
        job.result(timeout=10)
    assert info.value.errors[-1]["type"] == "builtins.TimeoutError"
    assert release.wait(5)
    time.sleep(0.2)   # let the late return try to complete: it must be fenced out
    assert state(conn, job.id) == "discarded"


def test_async_task_timeout_cancels_the_coroutine(app, start_worker, conn):
    cancelled = threading.Event()

    @app.task(name="t.aslow", timeout=0.2, max_attempts=1)
    async def aslow():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start_worker(app)
    job = aslow.enqueue()
    with pytest.raises(JobFailed):
        job.result(timeout=10)
    assert cancelled.wait(5)


def test_transactional_task_commits_with_completion_and_rolls_back_with_failure(
        app, start_worker, conn):
    conn.execute("create table ledger (job_id bigint, attempt int)")

    @app.task(name="t.book", transactional=True, max_attempts=2,
              retry=RetryPolicy(base=0.05, cap=0.05))
    def book(ctx, fail_first):
        ctx.connection.execute("insert into ledger values (%s, %s)", (ctx.job_id, ctx.attempt))
        if fail_first and ctx.attempt == 1:
            raise RuntimeError("after the write")
        return ctx.attempt

    start_worker(app)
    ok = book.enqueue(False)
    assert ok.result(timeout=10) == 1
    retried = book.enqueue(True)
    assert retried.result(timeout=10) == 2
    rows = conn.execute("select job_id, attempt from ledger order by 1, 2").fetchall()
    assert rows == [(ok.id, 1), (retried.id, 2)]   # attempt 1's write rolled back


def test_transactional_task_fenced_out_rolls_back_its_writes(app, start_worker, conn, dsn):
    """Guarantee 4: if the attempt lost ownership, the task's writes do not commit."""
    conn.execute("create table ledger (job_id bigint)")
    entered = threading.Event()
    go_on = threading.Event()

    @app.task(name="t.fenced", transactional=True, max_attempts=5)
    def fenced(ctx):
        ctx.connection.execute("insert into ledger values (%s)", (ctx.job_id,))
        entered.set()
        go_on.wait(10)
        return "done"

    start_worker(app, concurrency=1)
    job = fenced.enqueue()
    assert entered.wait(10)
    # Another actor takes the job over (as a rescue would): the attempt token changes.
    conn.execute("update pgqueue.jobs set state = 'available', worker_id = null "
                 "where id = %s", (job.id,))
    go_on.set()
    wait_until(lambda: conn.execute("select count(*) from ledger").fetchone()[0] >= 1
               or state(conn, job.id) != "available", 5)
    assert conn.execute("select count(*) from ledger where job_id = %s",
                        (job.id,)).fetchone()[0] <= 1


def test_stale_completion_is_rejected_by_the_attempt_token(app, conn):
    """Guarantee 3: a worker whose attempt was superseded cannot write an outcome."""
    old, new = uuid.uuid4(), uuid.uuid4()
    job = app.enqueue("t.x")
    conn.execute("select * from pgqueue.claim(%s, null, null, 1)", (old,))
    conn.execute("select * from pgqueue.rescue('0 seconds')")   # old looks dead
    conn.execute("select * from pgqueue.claim(%s, null, null, 1)", (new,))
    assert conn.execute("select * from pgqueue.complete(%s, array[%s]::bigint[], array[1], "
                        "array['\"stale\"'::jsonb])", (old, job.id)).fetchall() == []
    assert conn.execute("select pgqueue.fail(%s, %s, 1, '{}')", (old, job.id)).fetchone() == (None,)
    assert conn.execute("select pgqueue.cancel(%s)", (job.id,)).fetchone() == ("running",)
    row = conn.execute("select state, attempt, worker_id, result from pgqueue.jobs").fetchone()
    assert row == ("running", 2, new, None)
    assert conn.execute("select * from pgqueue.complete(%s, array[%s]::bigint[], array[2], "
                        "array['\"fresh\"'::jsonb])", (new, job.id)).fetchall() == [(job.id,)]
    assert conn.execute("select state, result from pgqueue.jobs").fetchone() == ("completed", "fresh")


def test_cancel_queued_running_and_finished_jobs(app, start_worker, conn):
    """Case B28 A, B, D, E in process."""
    started = threading.Event()

    @app.task(name="t.cooperative", pass_context=True, max_attempts=5)
    def cooperative(ctx, mode):
        started.set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if mode == "check":
                ctx.raise_if_cancelled()
            if mode == "retryable" and ctx.cancelled:
                raise ValueError("transient")
            time.sleep(0.02)
        return "finished"

    queued = cooperative.using(delay=60).enqueue("check")
    assert queued.cancel() == JobState.CANCELLED
    start_worker(app, concurrency=1)

    for mode, expected in [("check", "cancelled"), ("ignore", "completed"),
                           ("retryable", "cancelled")]:
        started.clear()
        job = cooperative.enqueue(mode)
        assert started.wait(10)
        t0 = time.monotonic()
        assert job.cancel() == JobState.RUNNING
        wait_until(lambda j=job: state(conn, j.id) in ("completed", "cancelled", "discarded",
                                                       "retryable"), 10)
        assert state(conn, job.id) == expected, mode
        if mode == "check":
            assert time.monotonic() - t0 < 1.0
        assert job.refresh().attempt == 1
    done = cooperative.enqueue("ignore")
    wait_until(lambda: state(conn, done.id) == "completed", 10)
    assert done.cancel() == JobState.COMPLETED
    assert state(conn, queued.id) == "cancelled"
    assert conn.execute("select started_at from pgqueue.jobs where id = %s",
                        (queued.id,)).fetchone() == (None,)


def test_unregistered_tasks_are_not_claimed(app, start_worker, conn):
    @app.task(name="t.known")
    def known():
        return 1

    foreign = app.enqueue("other.version.task", unregistered=True)
    start_worker(app)
    assert known.enqueue().result(timeout=10) == 1
    assert state(conn, foreign.id) == "available"


def test_paused_queue_is_not_claimed_until_resumed(app, start_worker, conn):
    @app.task(name="t.q")
    def qtask():
        return 1

    conn.execute("insert into pgqueue.queues (name, paused) values ('slow', true)")
    start_worker(app, poll_interval=0.2)
    held = qtask.using(queue="slow").enqueue()
    flowing = qtask.enqueue()
    assert flowing.result(timeout=10) == 1
    time.sleep(0.5)
    assert state(conn, held.id) == "available"
    conn.execute("update pgqueue.queues set paused = false where name = 'slow'")
    assert held.result(timeout=10) == 1


def test_delayed_job_wakes_the_idle_worker_on_time(app, start_worker, conn):
    @app.task(name="t.when", pass_context=True)
    def when(ctx):
        with ctx.app.connection() as c:
            return c.execute("select extract(epoch from clock_timestamp() - created_at) "
                             "from pgqueue.jobs where id = %s", (ctx.job_id,)).fetchone()[0]

    start_worker(app, poll_interval=60)
    elapsed = when.using(delay=1.0).enqueue().result(timeout=10)
    assert 0.95 <= elapsed <= 2.0


def test_graceful_stop_hands_back_unfinished_jobs(app, start_worker, conn):
    @app.task(name="t.long", pass_context=True)
    def long_task(ctx):
        ctx.wait_cancelled(30)
        return "stopped"

    w = start_worker(app, concurrency=2, shutdown_grace=0.3)
    jobs = [long_task.enqueue() for _ in range(2)]
    wait_until(lambda: conn.execute("select count(*) from pgqueue.jobs where state = 'running'")
               .fetchone()[0] == 2, 10)
    w.stop()
    rows = conn.execute("select state, attempt, errors->-1->>'type' from pgqueue.jobs "
                        "order by id").fetchall()
    assert rows == [("available", 0, "pgqueue.Interrupted")] * 2, rows
    assert conn.execute("select count(*) from pgqueue.workers").fetchone()[0] == 0
    assert [j.id for j in jobs]


def test_sync_timeout_never_lets_a_second_attempt_run_beside_the_first(app, start_worker, conn):
    """A timed-out thread cannot be killed: the job stays owned until it returns."""
    conn.execute("create table runs (job_id bigint, attempt int, started float8, ended float8)")

    @app.task(name="t.stubborn", timeout=0.2, max_attempts=2, pass_context=True,
              retry=RetryPolicy(base=0.0, cap=0.0))
    def stubborn(ctx):
        t0 = time.time()
        time.sleep(1.0)           # ignores the cancellation flag
        with ctx.app.connection() as c:
            c.execute("insert into runs values (%s, %s, %s, %s)",
                      (ctx.job_id, ctx.attempt, t0, time.time()))
        return "late"

    start_worker(app, concurrency=2)
    job = stubborn.enqueue()
    with pytest.raises(JobFailed) as info:
        job.result(timeout=20)
    assert [e["type"] for e in info.value.errors] == ["builtins.TimeoutError"] * 2
    rows = conn.execute("select attempt, started, ended from runs order by attempt").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    assert rows[1][1] >= rows[0][2]     # attempt 2 started after attempt 1 returned


def test_a_stopped_worker_leaves_no_row_even_when_a_heartbeat_falls_due(app, dsn, conn,
                                                                        start_worker,
                                                                        monkeypatch):
    """The heartbeat registers the worker (an upsert): one due after the row's deletion
    at shutdown brought a stopped worker back to life in pgqueue.workers. A pause of
    several heartbeat intervals right after the delete makes such a beat certain."""
    from pgqueue.worker import shutdown

    real = shutdown.hand_back

    def slow_hand_back(*args, **kwargs):
        real(*args, **kwargs)
        time.sleep(0.5)     # 10 heartbeat intervals after the delete, before exiting

    monkeypatch.setattr(shutdown, "hand_back", slow_hand_back)
    app.task(lambda: None, name="t.idle")
    w = start_worker(app, heartbeat_interval=0.05, stale_after=1.0)
    wid = w.worker.id
    assert conn.execute("select count(*) from pgqueue.workers where id = %s",
                        (wid,)).fetchone()[0] == 1
    w.stop()
    assert conn.execute("select count(*) from pgqueue.workers where id = %s",
                        (wid,)).fetchone()[0] == 0
