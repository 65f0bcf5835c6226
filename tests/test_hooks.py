"""Job metadata and lifecycle hooks (pgqueue.hooks): order, failures, meta, outcomes."""

from __future__ import annotations

import json
import logging
import threading

import psycopg
import pytest

import pgqueue
from pgqueue import hooks as hooks_mod
from pgqueue.hooks import MAX_META_BYTES
from pgqueue.workflow import chain
from tests.conftest import wait_until

FAST = pgqueue.RetryPolicy(base=0.05, cap=0.05)


def _meta(conn, job_id):
    return conn.execute("select meta from pgqueue.jobs where id = %s", (job_id,)).fetchone()[0]


# -- meta ---------------------------------------------------------------------------------

def test_meta_set_at_enqueue_is_read_by_the_task_and_in_sql(app, conn, start_worker):
    seen = {}

    @app.task(name="m.read", pass_context=True)
    def read(ctx):
        seen[ctx.job_id] = dict(ctx.meta)
        return ctx.meta.get("tenant")

    start_worker(app, concurrency=2)
    j1 = read.using(meta={"tenant": "acme", "request_id": "r-1"}).enqueue()
    j2 = read.enqueue()
    j3 = app.enqueue("m.read", meta={"tenant": "by-name"})
    assert (j1.result(timeout=15), j2.result(timeout=15), j3.result(timeout=15)) == (
        "acme", None, "by-name")
    assert seen[j1.id] == {"tenant": "acme", "request_id": "r-1"} and seen[j2.id] == {}
    assert _meta(conn, j1.id) == {"tenant": "acme", "request_id": "r-1"}
    assert _meta(conn, j2.id) == {}
    assert conn.execute("select count(*) from pgqueue.jobs where meta ->> 'tenant' = 'acme'"
                        ).fetchone()[0] == 1


def test_meta_of_enqueue_many_workflows_and_sql(app, conn):
    @app.task(name="m.t")
    def t(x=None, y=None):
        return x

    assert t.using(meta={"k": "direct"}).enqueue_many([(1,), (2,)]) == 2
    assert t.using(meta={"k": "staged"}, delay=60).enqueue_many([(3,)]) == 1
    got = conn.execute("select meta ->> 'k', count(*) from pgqueue.jobs group by 1 order by 1"
                       ).fetchall()
    assert got == [("direct", 2), ("staged", 1)]

    # steps inherit the workflow's meta unless they set their own
    wf = chain(t.s(1), t.s().set(meta={"own": "yes"}), t.s()).enqueue(meta={"k": "wf"})
    metas = [_meta(conn, i) for i in wf.job_ids]
    assert metas == [{"k": "wf"}, {"own": "yes"}, {"k": "wf"}]

    (wf_id, ids) = conn.execute(
        "select * from pgqueue.enqueue_workflow(%s::jsonb, meta => %s::jsonb)",
        (json.dumps([{"task": "m.t"}, {"task": "m.t", "meta": {"s": "1"}}]),
         json.dumps({"w": "1"}))).fetchone()
    assert [_meta(conn, i) for i in ids] == [{"w": "1"}, {"s": "1"}]
    (jid,) = conn.execute("select pgqueue.enqueue('m.t', meta => '{\"a\": \"b\"}')").fetchone()
    assert _meta(conn, jid) == {"a": "b"}


def test_meta_is_bounded_and_string_valued(app, conn):
    @app.task(name="m.b")
    def b():
        return None

    with pytest.raises(pgqueue.EnqueueError, match="str to str"):
        b.using(meta={"n": 1})
    with pytest.raises(pgqueue.EnqueueError, match=f"more than the {MAX_META_BYTES}"):
        b.using(meta={"big": "x" * MAX_META_BYTES})
    with pytest.raises(pgqueue.EnqueueError):
        b.s().set(meta={"n": None})
    for bad in ('{"n": 1}', '[]', json.dumps({"big": "x" * MAX_META_BYTES})):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="meta must"):
            conn.execute("select pgqueue.enqueue('m.b', meta => %s::jsonb)", (bad,))
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="jobs_meta_valid"):
            conn.execute("insert into pgqueue.jobs (task, meta) values ('m.b', %s::jsonb)", (bad,))
        conn.rollback()


# -- hooks --------------------------------------------------------------------------------

def test_hooks_run_in_order_around_each_attempt(app, start_worker):
    calls = []

    def around(tag):
        def hook(ctx):
            calls.append(f"{tag} enter {ctx.attempt}")
            try:
                result = yield
                calls.append(f"{tag} result {result}")
            except Exception as e:
                calls.append(f"{tag} raised {type(e).__name__}")
                raise
            finally:
                calls.append(f"{tag} exit")
        hook.__qualname__ = tag
        return hook

    hooks_mod.GLOBAL.add_around_attempt(around("global"))
    try:
        app.around_attempt(around("first"))
        app.around_attempt(around("second"))
        app.on_outcome(lambda o: calls.append(f"outcome1 {o.state} {o.attempt}"))
        app.on_outcome(lambda o: calls.append(f"outcome2 {o.state} {o.attempt}"))

        @app.task(name="h.two", pass_context=True, max_attempts=2, retry=FAST)
        def two(ctx):
            calls.append(f"task {ctx.attempt}")
            if ctx.attempt == 1:
                raise KeyError("once")
            return "done"

        start_worker(app, concurrency=1)
        assert two.enqueue().result(timeout=15) == "done"
        wait_until(lambda: "outcome2 completed 2" in calls, 10, message="outcome hooks")
    finally:
        hooks_mod.GLOBAL.around.clear()
    attempt1 = ["global enter 1", "first enter 1", "second enter 1", "task 1",
                "second raised KeyError", "second exit", "first raised KeyError",
                "first exit", "global raised KeyError", "global exit"]
    attempt2 = ["global enter 2", "first enter 2", "second enter 2", "task 2",
                "second result done", "second exit", "first result done", "first exit",
                "global result done", "global exit"]
    around_calls = [c for c in calls if not c.startswith("outcome")]
    assert around_calls == attempt1 + attempt2
    outcomes = [c for c in calls if c.startswith("outcome")]
    assert outcomes == ["outcome1 retryable 1", "outcome2 retryable 1",
                        "outcome1 completed 2", "outcome2 completed 2"]


def test_a_raising_hook_is_logged_and_the_job_is_unaffected(app, conn, start_worker, caplog):
    caplog.set_level(logging.DEBUG, logger="pgqueue")
    seen = []

    @app.around_attempt
    def breaks_before(ctx):
        raise RuntimeError("before")
        yield  # pragma: no cover

    @app.around_attempt
    def breaks_after(ctx):
        yield
        raise RuntimeError("after")

    @app.around_attempt
    def swallows(ctx):
        try:
            yield
        except Exception:
            pass        # cannot turn a failure into a success

    @app.on_enqueue
    def breaks_enqueue(enqueue):
        enqueue.meta["kept"] = "yes"
        raise RuntimeError("enqueue hook")

    @app.on_outcome
    def breaks_outcome(outcome):
        raise RuntimeError("outcome hook")

    app.on_outcome(lambda o: seen.append((o.job_id, o.state)))

    @app.task(name="h.ok")
    def ok(n):
        return n + 1

    @app.task(name="h.bad", max_attempts=1)
    def bad():
        raise ValueError("task bug")

    start_worker(app, concurrency=1)
    jo, jb = ok.enqueue(1), bad.enqueue()
    assert jo.result(timeout=15) == 2
    with pytest.raises(pgqueue.JobFailed):
        jb.result(timeout=15)
    wait_until(lambda: len(seen) == 2, 10, message="the second outcome hook ran")
    assert dict(seen) == {jo.id: "completed", jb.id: "discarded"}
    assert _meta(conn, jo.id) == {"kept": "yes"}
    text = caplog.text
    for what in ("breaks_before", "breaks_after", "breaks_enqueue", "breaks_outcome"):
        assert what in text
    assert [r for r in caplog.records if "raised" in r.getMessage()
            and r.levelno == logging.ERROR]


def test_on_enqueue_hooks_add_meta_and_see_the_job_id(app, conn):
    after = []

    @app.on_enqueue
    def tenant(enqueue):
        enqueue.meta.setdefault("tenant", "t-42")

    @app.on_enqueue
    def around_sql(enqueue):
        enqueue.meta["hop"] = "1"
        job_id = yield
        after.append((enqueue.kind, enqueue.task, job_id))

    @app.on_enqueue
    def too_big(enqueue):
        if enqueue.task == "h.big":
            enqueue.meta["big"] = "x" * MAX_META_BYTES   # dropped: over the bound

    @app.task(name="h.e")
    def e(x):
        return x

    @app.task(name="h.big")
    def big():
        return None

    j = e.enqueue(1)
    j2 = e.using(meta={"tenant": "mine"}).enqueue(2)
    assert _meta(conn, j.id) == {"tenant": "t-42", "hop": "1"}
    assert _meta(conn, j2.id) == {"tenant": "mine", "hop": "1"}
    assert after[:2] == [("job", "h.e", j.id), ("job", "h.e", j2.id)]
    jb = big.enqueue()
    assert _meta(conn, jb.id) == {}
    assert e.enqueue_many([(3,)]) == 1
    assert after[-1] == ("many", "h.e", None)
    wf = chain(e.s(1), e.s()).enqueue()
    assert [_meta(conn, i) for i in wf.job_ids] == [{"tenant": "t-42", "hop": "1"}] * 2
    assert after[-1] == ("workflow", "h.e", wf.job_ids[0])


def test_outcome_hooks_for_each_terminal_path(app, conn, start_worker):
    outcomes = {}
    started = threading.Event()

    @app.on_outcome
    def record(o):
        outcomes.setdefault(o.job_id, []).append(
            (o.state, o.attempt, type(o.exception).__name__ if o.exception else None,
             o.retry_at is not None, o.ctx.meta.get("k")))

    @app.task(name="o.ok")
    def ok():
        return 1

    @app.task(name="o.retry", pass_context=True, max_attempts=2, retry=FAST)
    def retry(ctx):
        if ctx.attempt == 1:
            raise ConnectionError("again")
        return 2

    @app.task(name="o.discard")
    def discard():
        raise pgqueue.Discard("never")

    @app.task(name="o.cancel", pass_context=True, max_attempts=3)
    def cancel(ctx):
        started.set()
        ctx.wait_cancelled(20)
        ctx.raise_if_cancelled()

    start_worker(app, concurrency=2, heartbeat_interval=0.3, stale_after=1.0)
    jo = ok.using(meta={"k": "v"}).enqueue()
    jr, jd, jc = retry.enqueue(), discard.enqueue(), cancel.enqueue()
    assert started.wait(15)
    jc.cancel()
    wait_until(lambda: all(i in outcomes for i in (jo.id, jd.id, jc.id))
               and len(outcomes.get(jr.id, [])) == 2, 15, message="every outcome")
    assert outcomes[jo.id] == [("completed", 1, None, False, "v")]
    assert outcomes[jr.id] == [("retryable", 1, "ConnectionError", True, None),
                               ("completed", 2, None, False, None)]
    assert outcomes[jd.id] == [("discarded", 1, "Discard", False, None)]
    assert outcomes[jc.id] == [("cancelled", 1, "Cancelled", False, None)]


def test_a_fenced_out_late_outcome_calls_no_hook(app, conn, dsn, start_worker):
    """Worker A runs attempt 1; its heartbeats stop (a lock on its worker row), worker B
    rescues the job and completes attempt 2; A's late success is fenced out and no
    outcome hook hears of it."""
    release = threading.Event()
    outcomes = []
    app.on_outcome(lambda o: outcomes.append((o.job_id, o.attempt, o.state,
                                              o.ctx.worker_id)))

    @app.task(name="o.hold", pass_context=True, max_attempts=5)
    def hold(ctx):
        if ctx.attempt == 1:
            release.wait(30)
            return "late"
        return "second"

    def row():
        return conn.execute("select state, attempt from pgqueue.jobs where id = %s",
                            (job.id,)).fetchone()

    timing = {"concurrency": 1, "heartbeat_interval": 0.5, "stale_after": 2.0}
    a = start_worker(app, **timing).worker
    job = hold.enqueue()
    wait_until(lambda: row() == ("running", 1), 15, message="attempt 1 runs")
    b = start_worker(app, **timing).worker
    with psycopg.connect(dsn) as lock:
        lock.execute("select 1 from pgqueue.workers where id = %s for update", (a.id,))
        wait_until(lambda: row() == ("completed", 2), 20, message="B completed attempt 2")
        release.set()
        wait_until(lambda: len(a._running) == 0, 15, message="A's late outcome was handled")
        lock.rollback()
    wait_until(lambda: outcomes, 10, message="B's outcome hook")
    a.stop()
    b.stop()
    wait_until(lambda: not a._running and not b._running, 10, message="workers idle")
    assert outcomes == [(job.id, 2, "completed", b.id)]
