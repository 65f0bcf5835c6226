"""What a producer can check before anything is written, and waiting from async code.

- arguments bind to the task's signature at enqueue, as the worker will call it
  (guarantee 6): ``task.enqueue``, ``aenqueue``, ``enqueue_many``, ``app.enqueue`` by
  name, workflow signatures (after the previous result, the list of results, the
  ``(failed_job_id, failure)`` of an error callback);
- unknown task names are refused where the producer has a registry, unless
  ``unregistered=True`` / ``--unregistered``;
- ``pgqueue enqueue --app`` applies the task's declared queue and priority;
- ``await job.aresult()`` and ``await handle.aresult()`` wait on notifications.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import psycopg
import pytest
from click.testing import CliRunner

import pgqueue
from pgqueue import ResultTimeout, UnknownTaskError, WorkflowFailed, chain, chord
from pgqueue.cli import main

from .conftest import wait_until


def jobs(conn):
    return conn.execute("select task, args, kwargs from pgqueue.jobs order by id").fetchall()


@pytest.fixture
def t(app):
    """Tasks with the shapes a producer gets wrong."""
    @app.task(name="t.add")
    def add(a, b):
        return a + b

    @app.task(name="t.scaled", pass_context=True)
    def scaled(ctx, x, factor=1):
        assert isinstance(ctx, pgqueue.JobContext)
        return x * factor

    @app.task(name="t.total")
    def total(results):
        return sum(results)

    @app.task(name="t.alert")
    def alert(failed_job_id, failure):
        return failed_job_id

    @app.task(name="t.boom", max_attempts=1)
    def boom():
        raise ValueError("planned failure")

    @app.task(name="t.forever", pass_context=True)
    def forever(ctx):
        ctx.wait_cancelled(30)
        ctx.raise_if_cancelled()

    return SimpleNamespace(add=add, scaled=scaled, total=total, alert=alert, boom=boom,
                           forever=forever)


# -- arguments are checked at enqueue ----------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda t, c: t.add.using(connection=c).enqueue(5),
     r"^t\.add\(\) missing a required argument: 'b'; the task takes \(a, b\)"),
    (lambda t, c: t.add.using(connection=c).enqueue(1, 2, c=3),
     r"^t\.add\(\) got an unexpected keyword argument 'c'"),
    (lambda t, c: t.add.using(connection=c).enqueue(1, 2, 3),
     r"^t\.add\(\) too many positional arguments"),
    (lambda t, c: t.add.using(connection=c).enqueue(1, a=2),
     r"^t\.add\(\) multiple values for argument 'a'"),
    # a misspelt keyword is named too, not only the argument it left missing
    (lambda t, c: t.add.using(connection=c).enqueue(1, bb=2),
     r"^t\.add\(\) missing a required argument: 'b'; unexpected keyword argument 'bb'"),
    # the JobContext comes from the worker: the producer gives only what follows it
    (lambda t, c: t.scaled.using(connection=c).enqueue(),
     r"^t\.scaled\(\) missing a required argument: 'x'.*the worker passes a JobContext first"),
    (lambda t, c: t.scaled.using(connection=c).enqueue(1, 2, 3),
     r"^t\.scaled\(\) too many positional arguments"),
    (lambda t, c: t.add.app.enqueue("t.add", [1], connection=c),
     r"^t\.add\(\) missing a required argument: 'b'"),
])
def test_arguments_that_do_not_bind_are_refused_before_sql(t, dsn, conn, call, message):
    """``add.enqueue(5)`` used to return a job id, and the worker failed with TypeError
    at every attempt for hours. Now the producer gets the error, with nothing written
    and its transaction usable."""
    with psycopg.connect(dsn) as c:
        c.execute("insert into public.side (note) values ('mine')")
        with pytest.raises(TypeError, match=message) as info:
            call(t, c)
        assert not isinstance(info.value, pgqueue.SerializationError)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        t.add.using(connection=c).enqueue(1, 2)            # the transaction still works
        t.scaled.using(connection=c).enqueue(3, factor=2)  # the context is not given
        c.commit()
    assert conn.execute("select note from public.side").fetchall() == [("mine",)]
    assert jobs(conn) == [("t.add", [1, 2], {}), ("t.scaled", [3], {"factor": 2})]


def test_aenqueue_checks_arguments_on_an_async_connection(t, dsn, conn):
    async def main():
        async with await psycopg.AsyncConnection.connect(dsn) as ac:
            await ac.execute("insert into public.side (note) values ('mine')")
            with pytest.raises(TypeError, match=r"^t\.add\(\) missing a required argument"):
                await t.add.using(connection=ac).aenqueue(1)
            await t.add.using(connection=ac).aenqueue(1, 2)
            await ac.commit()
        with pytest.raises(TypeError, match=r"^t\.scaled\(\) missing"):
            await t.scaled.aenqueue()                    # on the app's pool

    asyncio.run(main())
    assert conn.execute("select note from public.side").fetchall() == [("mine",)]
    assert jobs(conn) == [("t.add", [1, 2], {})]


def test_transactional_task_gets_its_context_from_the_worker(app, conn):
    @app.task(name="t.tx", transactional=True)
    def tx(ctx, order_id):
        return order_id

    with pytest.raises(TypeError, match=r"^t\.tx\(\) missing a required argument: 'order_id'"):
        tx.enqueue()
    tx.enqueue(7)
    assert jobs(conn) == [("t.tx", [7], {})]


def test_enqueue_many_checks_every_item_and_inserts_nothing_on_a_bad_one(t, dsn, conn):
    with psycopg.connect(dsn) as c:
        c.execute("insert into public.side (note) values ('mine')")
        items = [(1, 2), pgqueue.Args(3, b=4), {"a": 5, "b": 6}, (7,), (8, 9)]
        with pytest.raises(TypeError, match=r"^items\[3\]: t\.add\(\) missing a required "
                                            r"argument: 'b'"):
            t.add.using(connection=c).enqueue_many(items)
        assert c.execute("select count(*) from pgqueue.jobs").fetchone() == (0,)
        assert t.add.using(connection=c).enqueue_many(items[:3]) == 3
        c.commit()
    assert conn.execute("select note from public.side").fetchall() == [("mine",)]
    assert [a for _, a, _ in jobs(conn)] == [[1, 2], [3], []]
    with pytest.raises(TypeError, match=r"^items\[0\]: t\.scaled\(\) missing"):
        t.scaled.enqueue_many([()])          # on the app's pool: nothing committed
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone() == (3,)


@pytest.mark.parametrize("build, message", [
    # a chain step after the first receives the previous result first
    (lambda t: chain(t.add.s(1, 2), t.add.s(3, 4)),
     r"^step 1: t\.add\(\) too many positional arguments.*the previous step's result "
     r"first.*\.si\(\.\.\.\)"),
    (lambda t: chain(t.add.s(1)), r"^step 0: t\.add\(\) missing a required argument: 'b'"),
    # a chord callback receives the list of results first
    (lambda t: chord([t.add.s(1, 2), t.add.s(3, 4)], t.total.s(0)),
     r"^step 2: t\.total\(\) too many positional arguments.*the list of results"),
    # a context task in a chain: the context, then the previous result, then its args
    (lambda t: chain(t.add.s(1, 2), t.scaled.s(2, 3)),
     r"^step 1: t\.scaled\(\) too many positional arguments.*a JobContext and the "
     r"previous step's result first"),
    # the error callback receives (failed_job_id, failure) first
    (lambda t: chain(t.add.s(1, 2)).on_error(t.alert.s("extra")),
     r"^step 1: t\.alert\(\) too many positional arguments.*\(failed_job_id, failure\)"),
    (lambda t: chain(t.add.s(1, 2), t.add.si(1)),
     r"^step 1: t\.add\(\) missing a required argument: 'b'"),
])
def test_workflow_steps_are_checked_as_the_worker_calls_them(t, dsn, conn, build, message):
    with psycopg.connect(dsn) as c:
        c.execute("insert into public.side (note) values ('mine')")
        with pytest.raises(TypeError, match=message):
            build(t).using(connection=c).enqueue()
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        c.commit()
    assert conn.execute("select count(*) from pgqueue.workflows").fetchone() == (0,)
    assert conn.execute("select note from public.side").fetchall() == [("mine",)]


def test_workflow_that_binds_runs_as_checked(t, app, start_worker):
    """The placeholders of the check are what the worker passes: a workflow accepted by
    the check runs to its result (chord -> list, chain -> previous result, context)."""
    start_worker(app, concurrency=2)
    flow = chain(chord([t.add.s(1, 2), t.add.s(3, 4)], t.total.s()), t.add.s(5),
                 t.scaled.s(factor=10), t.add.si(1, 1))
    handle = flow.enqueue(on_error=t.alert.s())
    assert handle.result(timeout=20) == 2
    values = [j.refresh().row["result"] for j in handle.jobs]
    assert values[:6] == [3, 7, 10, 15, 150, 2]


# -- unknown task names ------------------------------------------------------------------

def test_unknown_task_name_is_refused_when_the_app_registers_tasks(t, app, dsn, conn):
    with psycopg.connect(dsn) as c:
        c.execute("insert into public.side (note) values ('mine')")
        with pytest.raises(UnknownTaskError) as info:
            app.enqueue("t.ad", [1, 2], connection=c)
        msg = str(info.value)
        assert "'t.ad'" in msg and "did you mean 't.add'" in msg and "unregistered=True" in msg
        assert isinstance(info.value, LookupError)
        with pytest.raises(UnknownTaskError, match=r"'tasks\.nope'.*registered: t\.add"):
            app.enqueue("tasks.nope", [1], connection=c)
        # the opt-out for a task that a worker of another service runs
        other = app.enqueue("billing.charge", [1], {"cents": 5}, unregistered=True,
                            connection=c, queue="billing")
        c.commit()
    assert conn.execute("select note from public.side").fetchall() == [("mine",)]
    assert conn.execute("select task, args, kwargs, queue from pgqueue.jobs").fetchall() == [
        ("billing.charge", [1], {"cents": 5}, "billing")]
    assert other.task == "billing.charge"
    # a registered name is enqueued with the task's defaults, with or without the flag
    assert app.enqueue("t.add", [1, 2], unregistered=True).task == "t.add"


def test_an_app_without_tasks_enqueues_any_name(app, conn):
    """A producer-only app (its tasks live in other services) has nothing to check."""
    job = app.enqueue("other.service.task", [1])
    assert job.task == "other.service.task"


def test_invalid_name_is_still_an_enqueue_error(t, app):
    with pytest.raises(pgqueue.EnqueueError):
        app.enqueue("", [1])


# -- pgqueue enqueue --app: known names, binding arguments, declared queue and priority --

def cli(dsn, *argv):
    return CliRunner().invoke(main, ["--dsn", dsn, "enqueue", *argv])


def test_cli_refuses_unknown_names_with_app_unless_unregistered(dsn, conn):
    res = cli(dsn, "producer.sned", "--app", "tests.apps.producer", "--args", '["a@b"]')
    assert res.exit_code == 2, res.output
    assert "Invalid value for TASK" in res.output
    assert "'producer.sned'" in res.output and "tests.apps.producer" in res.output
    assert "did you mean 'producer.send'" in res.output and "--unregistered" in res.output
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone() == (0,)

    res = cli(dsn, "billing.charge", "--app", "tests.apps.producer", "--unregistered",
              "--args", "[1]")
    assert res.exit_code == 0, res.output
    # without --app the command cannot know the tasks: any name is enqueued
    res = cli(dsn, "nonexistent.task")
    assert res.exit_code == 0, res.output
    assert conn.execute("select task, queue, priority from pgqueue.jobs order by id").fetchall() \
        == [("billing.charge", "default", 0), ("nonexistent.task", "default", 0)]


def test_cli_app_as_a_file_path_or_empty_is_refused_naming_what_to_give(dsn, conn):
    for spec, module in (("tests/apps/producer.py", "tests.apps.producer"),
                         ("./tests/apps/producer.py:app", "tests.apps.producer:app")):
        res = cli(dsn, "producer.send", "--app", spec, "--args", '["a@b"]')
        assert res.exit_code == 2, res.output
        assert "looks like a file path" in res.output and f"--app {module} " in res.output
    for spec in ("", ":app", " "):
        res = cli(dsn, "producer.send", "--app", spec)
        assert res.exit_code == 2 and "names no module" in res.output, res.output
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone() == (0,)
    res = cli(dsn, "producer.send", "--app", "tests.apps.producer", "--args", '["a@b"]')
    assert res.exit_code == 0, res.output


def test_cli_checks_arguments_against_the_app(dsn, conn):
    res = cli(dsn, "producer.send", "--app", "tests.apps.producer")
    assert res.exit_code == 2, res.output
    assert "producer.send() missing a required argument: 'to'" in res.output
    res = cli(dsn, "producer.with_context", "--app", "tests.apps.producer", "--args", "[1, 2]")
    assert res.exit_code == 2, res.output
    assert "too many positional arguments" in res.output
    res = cli(dsn, "producer.with_context", "--app", "tests.apps.producer", "--args", "[1]")
    assert res.exit_code == 0, res.output
    assert jobs(conn) == [("producer.with_context", [1], {})]


def test_cli_applies_the_declared_queue_and_priority_with_app(dsn, conn):
    argv = ["--args", '["a@b"]']
    declared = cli(dsn, "producer.send", "--app", "tests.apps.producer", *argv)
    overridden = cli(dsn, "producer.send", "--app", "tests.apps.producer", *argv,
                     "--queue", "bulk", "--priority", "-1")
    plain = cli(dsn, "producer.plain", "--app", "tests.apps.producer", "--args", "[1]")
    no_app = cli(dsn, "producer.send", *argv)
    for res in (declared, overridden, plain, no_app):
        assert res.exit_code == 0, res.output
    rows = dict(conn.execute("select id, (queue, priority)::text from pgqueue.jobs").fetchall())
    assert [rows[int(r.output)] for r in (declared, overridden, plain, no_app)] == [
        "(emails,5)", "(bulk,-1)", "(default,0)", "(default,0)"]


# -- waiting for a result from async code ------------------------------------------------

def test_aresult_waits_on_notifications_without_blocking_the_loop(t, app, dsn, start_worker):
    """aresult reads the job, then waits on LISTEN: another job's completion does not
    make it read again, the event loop keeps running, and its own completion wakes it
    at once (the safety-net re-read comes only every 30 s)."""
    job = t.add.enqueue(20, 22)
    other = t.add.using(queue="other").enqueue(1, 1)

    async def waiter_query_start(ac):
        # the waiter's last read, once it sits idle waiting for notifications (it may
        # read twice at first: before and after its LISTEN)
        cur = await ac.execute(
            "select query_start from pg_stat_activity where datname = current_database() "
            "and query like 'select state, result%%' and pid <> pg_backend_pid() "
            "and state = 'idle'")
        row = await cur.fetchone()
        return row[0] if row else None

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        waiting = asyncio.create_task(job.aresult(timeout=30))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as ac:
            deadline = time.monotonic() + 10
            while (read_at := await waiter_query_start(ac)) is None:
                assert time.monotonic() < deadline, "aresult never read the job"
                await asyncio.sleep(0.02)
            # settled: the same last read twice, 0.2 s apart
            while True:
                await asyncio.sleep(0.2)
                again = await waiter_query_start(ac)
                if again == read_at:
                    break
                assert time.monotonic() < deadline, "aresult kept reading the job"
                read_at = again
            await asyncio.to_thread(start_worker, app, queues=["other"])
            assert await other.aresult(timeout=10) == 2
            assert not waiting.done()
            assert await waiter_query_start(ac) == read_at     # no re-read, no polling
            before, t0 = ticks, time.monotonic()
            await asyncio.to_thread(start_worker, app)          # now the job runs
            value = await asyncio.wait_for(waiting, 15)
            took = time.monotonic() - t0
        assert ticks > before          # the loop ran while aresult waited
        tick.cancel()
        return value, took

    value, took = asyncio.run(main())
    assert value == 42
    assert took < 10


def test_aresult_raises_as_result_does(t, app, start_worker):
    start_worker(app, concurrency=4)
    failed = t.boom.enqueue()
    long = t.forever.enqueue()
    later = t.add.using(delay=3600).enqueue(1, 2)

    async def main():
        with pytest.raises(pgqueue.JobFailed) as info:
            await failed.aresult(timeout=15)
        assert info.value.errors[-1]["message"] == "planned failure"
        with pytest.raises(ResultTimeout, match=r"did not finish within 0\.3 s "
                                                r"\(state scheduled\)"):
            await later.aresult(timeout=0.3)
        waiting = asyncio.create_task(long.aresult(timeout=15))
        await asyncio.to_thread(wait_until, lambda: long.refresh().state == "running", 10)
        await asyncio.to_thread(long.cancel)
        with pytest.raises(pgqueue.JobCancelled):
            await waiting

    asyncio.run(main())


def test_aresult_names_the_missing_worker_on_timeout(t, app):
    job = t.add.enqueue(1, 2)
    with pytest.raises(ResultTimeout, match=r"no live worker runs task 't\.add'"):
        asyncio.run(job.aresult(timeout=0.3))


def test_workflow_aresult(t, app, start_worker):
    start_worker(app, concurrency=2)
    ok = chain(chord([t.add.s(1, 2), t.add.s(3, 4)], t.total.s()), t.add.s(5)).enqueue()
    bad = chain(t.add.s(1, 2), t.boom.si()).enqueue()
    never = chain(t.add.s(1, 2).set(delay=3600), t.add.s(1)).enqueue()

    async def main():
        assert await ok.aresult(timeout=20) == 15
        with pytest.raises(WorkflowFailed) as info:
            await bad.aresult(timeout=20)
        assert [f["task"] for f in info.value.failures] == ["t.boom"]
        with pytest.raises(ResultTimeout, match=r"workflow \d+ did not finish within 0\.3 s"):
            await never.aresult(timeout=0.3)

    asyncio.run(main())
