"""Guarantees 1 and 7: transactional enqueue and bad input, on a real PostgreSQL."""

import datetime as dt
import time

import psycopg
import pytest

import pgqueue
from pgqueue import EnqueueError, SerializationError

from .conftest import wait_until


def jobs(conn):
    return conn.execute("select id, task, state from pgqueue.jobs order by id").fetchall()


@pytest.fixture
def add(app):
    @app.task(name="t.add")
    def add(a, b):
        return a + b
    return add


def test_job_exists_iff_the_transaction_commits(app, add, dsn, conn):
    with psycopg.connect(dsn) as c:
        job = add.using(connection=c).enqueue(1, 2)
        assert jobs(conn) == []                 # invisible before commit
        c.rollback()
    assert jobs(conn) == []
    with psycopg.connect(dsn) as c:
        job = add.using(connection=c).enqueue(1, 2)
        c.commit()
    assert jobs(conn) == [(job.id, "t.add", "available")]


def test_savepoint_rollback_discards_only_its_jobs(app, add, dsn, conn):
    with psycopg.connect(dsn) as c, c.transaction():
        kept = add.using(connection=c).enqueue(1, 1)
        with pytest.raises(RuntimeError), c.transaction():
            add.using(connection=c).enqueue(2, 2)
            raise RuntimeError("inner block fails")
        kept2 = add.using(connection=c).enqueue(3, 3)
    assert [r[0] for r in jobs(conn)] == [kept.id, kept2.id]


def test_notify_is_delivered_at_commit_not_before(app, add, dsn):
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn) as producer:
        listener.execute("listen pgqueue_jobs")
        add.using(connection=producer).enqueue(1, 2)
        assert list(listener.notifies(timeout=0.3)) == []
        producer.commit()
        got = list(listener.notifies(timeout=2, stop_after=1))
        assert [(n.channel, n.payload) for n in got] == [("pgqueue_jobs", "default")]


@pytest.mark.parametrize("kind", ["ascii", "json", "euro"])
def test_large_args_commit_and_notify_payload_stays_small(app, dsn, conn, kind):
    """Case B07: args far beyond NOTIFY's 8000-byte limit."""
    seen = []

    @app.task(name="t.echo")
    def echo(x):
        seen.append(x)
        return len(x)

    value = {"ascii": "a" * 10_000, "json": {"k": ["x" * 100] * 1000},
             "euro": "€" * 2700}[kind]
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn) as c:
        listener.execute("listen pgqueue_jobs")
        c.execute("create table if not exists biz (id int)")
        c.execute("insert into biz values (1)")
        job = echo.using(connection=c).enqueue(value)
        c.commit()
        notes = list(listener.notifies(timeout=2, stop_after=1))
        assert notes and all(len(n.payload.encode()) < 100 for n in notes)
    assert conn.execute("select count(*) from biz").fetchone()[0] == 1
    assert job.refresh().args == [value]


def test_bulk_enqueue_sends_one_notification_per_queue(app, add, dsn, conn):
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgqueue_jobs")
        with psycopg.connect(dsn) as c:
            n = add.using(connection=c).enqueue_many((i, i) for i in range(1000))
            n2 = add.using(connection=c, queue="other").enqueue_many([(1, 1)] * 10)
            c.commit()
        assert (n, n2) == (1000, 10)
        notes = list(listener.notifies(timeout=1))
        assert sorted(x.payload for x in notes) == ["default", "other"]
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 1010


def test_bulk_enqueue_with_delay_and_unique_key_uses_database_clock(app, add, conn):
    n = add.using(delay=60).enqueue_many([(1, 2), (3, 4)])
    assert n == 2
    rows = conn.execute("select state, extract(epoch from run_at - created_at) "
                        "from pgqueue.jobs").fetchall()
    assert all(s == "scheduled" and 59 < d < 61 for s, d in rows)
    assert add.using(unique_key="u").enqueue_many([(1, 1), (2, 2)]) == 1


@pytest.mark.parametrize("bad", [
    lambda t, c: t.using(connection=c).enqueue(dt.datetime(2026, 11, 29, 10, 0)),
    lambda t, c: t.using(connection=c).enqueue("nul\x00"),
    lambda t, c: t.using(connection=c).enqueue({1, 2}),
    lambda t, c: t.using(connection=c, delay=-1).enqueue(1),
    lambda t, c: t.using(connection=c, run_at=dt.datetime(2030, 1, 1)).enqueue(1),
    lambda t, c: t.using(connection=c, priority=10**6).enqueue(1),
    lambda t, c: t.using(connection=c, queue="").enqueue(1),
    lambda t, c: t.using(connection=c, max_attempts=0).enqueue(1),
])
def test_bad_input_raises_before_sql_and_leaves_the_transaction_usable(app, add, dsn, conn, bad):
    with psycopg.connect(dsn) as c:
        c.execute("create table if not exists biz (id int)")
        c.execute("insert into biz values (7)")
        with pytest.raises((SerializationError, EnqueueError)) as info:
            bad(add, c)
        assert isinstance(info.value, (TypeError, ValueError))
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        ok = add.using(connection=c).enqueue(1, 2)   # the transaction still works
        c.commit()
    assert conn.execute("select count(*) from biz").fetchone()[0] == 1
    assert jobs(conn) == [(ok.id, "t.add", "available")]


def test_unique_key_returns_the_existing_unfinished_job(app, add, conn):
    a = add.using(unique_key="report:7").enqueue(1, 1)
    b = add.using(unique_key="report:7").enqueue(2, 2)
    assert a.id == b.id
    conn.execute("update pgqueue.jobs set state = 'completed', finished_at = now()")
    c = add.using(unique_key="report:7").enqueue(3, 3)
    assert c.id != a.id


def test_plain_insert_writes_the_row_the_function_writes(app, add, conn):
    # a job without unique key, delay or debounce skips pgqueue.enqueue (one INSERT)
    from pgqueue._connections import enqueue_sql
    from pgqueue._sql import q
    call = add.using(queue="q1", priority=3, meta={"k": "v"}, partition_key="p")
    assert enqueue_sql(call._params((1, 2), {})) == q("enqueue_plain")
    assert enqueue_sql(add.using(unique_key="u")._params((1, 2), {})) == q("enqueue")
    plain = call.enqueue(1, 2)
    cols = ("task, args, kwargs, queue, state, priority, attempt, max_attempts, meta, "
            "partition_key, unique_key, debounce_key, errors, run_at <= now() as due")
    fn = conn.execute(
        "select pgqueue.enqueue(task => 't.add', args => '[1, 2]', queue => 'q1', "
        "priority => 3, meta => '{\"k\": \"v\"}', partition_key => 'p')").fetchone()[0]
    a, b = (conn.execute(f"select {cols} from pgqueue.jobs where id = %s", (i,)).fetchone()
            for i in (plain.id, fn))
    assert a == b


def test_sql_enqueue_with_named_notation(app, conn):
    (job_id,) = conn.execute(
        "select pgqueue.enqueue('mail.send', '[\"a@b\"]'::jsonb, queue => 'emails', "
        "run_at => now() + interval '5 minutes', priority => 3)").fetchone()
    row = conn.execute("select task, args, queue, state, priority from pgqueue.jobs "
                       "where id = %s", (job_id,)).fetchone()
    assert row == ("mail.send", ["a@b"], "emails", "scheduled", 3)


def test_async_enqueue_in_caller_transaction(app, add, dsn, conn):
    import asyncio

    async def main():
        async with await psycopg.AsyncConnection.connect(dsn) as ac:
            j = await add.using(connection=ac).aenqueue(5, 6)
            await ac.rollback()
            j2 = await add.using(connection=ac).aenqueue(7, 8)
            await ac.commit()
            return j, j2

    _, j2 = asyncio.run(main())
    assert [r[0] for r in jobs(conn)] == [j2.id]


def test_enqueue_by_name_for_a_task_defined_elsewhere(app, conn):
    job = app.enqueue("other.service.task", [1], {"x": 2}, queue="q9")
    assert job.state == pgqueue.JobState.AVAILABLE
    assert (job.task, job.queue, job.args, job.kwargs) == ("other.service.task", "q9", [1], {"x": 2})


def test_job_handle_result_waits_without_polling(app, add, start_worker, conn):
    start_worker(app, concurrency=2)
    t0 = time.monotonic()
    job = add.enqueue(20, 22)
    assert job.result(timeout=10) == 42
    assert time.monotonic() - t0 < 5
    wait_until(lambda: job.refresh().state == "completed")


def test_result_timeout_says_when_no_live_worker_runs_the_task(app, add, start_worker, conn):
    """A newcomer's producer timed out with only "(state available)"; the message now
    names the task and queue that no live worker claims, and stays silent otherwise."""
    other = pgqueue.App(app.conninfo)
    other.task(lambda: None, name="t.unrelated")
    start_worker(other)                      # alive, but does not know add's task
    job = add.enqueue(1, 2)
    with pytest.raises(pgqueue.ResultTimeout, match=r"no live worker runs task 't\.add' "
                                                    r"from queue 'default'"):
        job.result(timeout=0.5)
    start_worker(app, queues=["elsewhere"])  # knows the task, not the queue
    with pytest.raises(pgqueue.ResultTimeout, match="no live worker runs task"):
        job.result(timeout=0.5)
    later = add.using(delay=60).enqueue(1, 2)
    start_worker(app)
    with pytest.raises(pgqueue.ResultTimeout) as e:
        later.result(timeout=0.5)
    assert "no live worker" not in str(e.value) and "state scheduled" in str(e.value)
    assert job.result(timeout=10) == 3
    other.close()


def test_connections_the_pool_lets_go_are_freed_with_their_cached_cursor(dsn, conn,
                                                                          monkeypatch):
    """enqueue() on the app's pool reuses one cursor per pooled connection. A cursor
    holds its connection, so a cache that holds the cursor must not outlive the pool's
    hold on the connection: every connection the pool discarded (its backend was
    terminated) or closed (app.close()) was kept alive for the life of the process."""
    import gc
    import logging
    import weakref

    # the pool's warning about the discarded connection would hold it (pytest keeps records)
    monkeypatch.setattr(logging.getLogger("psycopg.pool"), "disabled", True)
    app = pgqueue.App(dsn, pool_min_size=1, pool_max_size=1)
    one = app.task(lambda x: x, name="t.one")
    ids = [one.enqueue(1).id]
    with app.connection() as c:
        terminated = weakref.ref(c)
        pid = c.info.backend_pid
    conn.execute("select pg_terminate_backend(%s)", (pid,))

    def enqueue_again():
        try:
            ids.append(one.enqueue(2).id)
        except psycopg.OperationalError:   # the dead connection, once: the pool drops it
            return False
        return True
    wait_until(enqueue_again, 10, interval=0.1, message="an enqueue on a new connection")
    with app.connection() as c:
        assert c is not terminated()
        closed = weakref.ref(c)
    del c
    app.close()
    ids.append(one.enqueue(3).id)            # a new pool after close()
    app.close()
    gc.collect()
    assert (terminated(), closed()) == (None, None)
    assert conn.execute("select array_agg(id order by id) from pgqueue.jobs").fetchone()[0] == ids


def test_pool_enqueue_commits_on_a_connection_handed_back_out_of_autocommit(dsn, conn):
    """A borrower of app.connection() that turned autocommit off gives the connection
    back so. enqueue() on the pool still commits its job there, as the pool's
    connection() block did: with getconn()/putconn() alone the pool rolled the insert
    back on return, and the caller held the id of a job that never existed."""
    app = pgqueue.App(dsn, pool_min_size=1, pool_max_size=1)
    one = app.task(lambda x: x, name="t.one")
    try:
        with app.connection() as c:
            c.autocommit = False
        job = one.enqueue(1)
        assert conn.execute("select id, state from pgqueue.jobs").fetchall() == [
            (job.id, "available")]
    finally:
        app.close()
