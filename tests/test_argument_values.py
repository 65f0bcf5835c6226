"""Arguments reach the task as they were given, on every way of enqueueing.

Each test stores arguments through one path (a job, a group, a batch, a schedule's
declaration) and reads back what PostgreSQL kept, or what a real worker passed to the
function.
"""

from __future__ import annotations

import enum

import pytest

import pgqueue
from pgqueue import group
from pgqueue.serialization import decode
from pgqueue.worker.scheduler import upsert_declarations
from tests.conftest import wait_until

BIG = 1.801439850948199e+16      # a float that reads back as another number when an int


class Color(str, enum.Enum):
    RED = "red"


def _echo_app(app: pgqueue.App) -> pgqueue.Task:
    @app.task(name="args.echo")
    def echo(*args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}
    return echo


def _stored_args(conn, job_id: int) -> tuple:
    args, kwargs = conn.execute("select args, kwargs from pgqueue.jobs where id = %s",
                                (job_id,)).fetchone()
    return decode(args), decode(kwargs)


def test_large_floats_and_str_enums_keep_their_values_in_jobs_groups_and_batches(app, conn):
    echo = _echo_app(app)
    values = [1e16, BIG, 1.7976931348623157e308, Color.RED]
    want = ([1e16, BIG, 1.7976931348623157e308, "red"], {"c": "red", "f": BIG})
    job = echo.enqueue(*values, c=Color.RED, f=BIG)
    g = group(echo.s(*values, c=Color.RED, f=BIG)).enqueue()
    batch = app.batch()
    batch.add(echo.s(*values, c=Color.RED, f=BIG))
    batch.seal()
    rows = conn.execute("select id from pgqueue.jobs where task = 'args.echo' order by id"
                        ).fetchall()
    assert [r[0] for r in rows][0] == job.id and len(rows) == 3, (g, rows)
    for (job_id,) in rows:
        args, kwargs = _stored_args(conn, job_id)
        assert (args, kwargs) == want, job_id
        assert all(type(v) is float for v in args[:3]), (job_id, args)
        assert type(kwargs["f"]) is float


def test_a_schedule_declaration_keeps_large_floats(app, conn):
    @app.task(name="args.tick")
    def tick(x: float, y: float) -> None:
        return None

    app.periodic(tick.s(1e16, BIG), every=3600, name="args.tick")
    upsert_declarations(conn, app.schedules.values(), ["args.tick"], "test")
    (args,) = conn.execute("select args from pgqueue.schedules where name = 'args.tick'"
                           ).fetchone()
    assert decode(args) == [1e16, BIG]
    assert all(type(v) is float for v in decode(args)), args


def test_a_keyword_named_self_is_the_task_s(app, conn, start_worker):
    echo = _echo_app(app)
    job = echo.enqueue(self=1)
    job2 = echo.using(priority=1).enqueue(self=2)
    job3 = app.enqueue("args.echo", [], {"self": 3})
    sig = echo.s(self=4)
    assert sig.kwargs == {"self": 4}
    assert pgqueue.Args(self=5).kwargs == {"self": 5}
    assert echo.enqueue_many([pgqueue.Args(self=6)]) == 1
    start_worker(app, concurrency=2)
    for j, n in ((job, 1), (job2, 2), (job3, 3)):
        assert j.result(timeout=10) == {"args": [], "kwargs": {"self": n}}


@pytest.mark.parametrize("delay", [1e-9, 3.8e-21, 4e-7, 1e-6])
def test_any_positive_delay_defers_the_job(app, delay):
    """PostgreSQL counts whole microseconds: a positive delay under half of one would
    round to none; it counts as one, and the job is scheduled, not available."""
    echo = _echo_app(app)
    job = echo.using(delay=delay).enqueue()
    job.refresh()
    assert job.state == "scheduled"
    assert job.row["run_at"] > job.row["created_at"]
    job0 = echo.using(delay=0).enqueue()
    wait_until(lambda: job0.refresh().state == "available", 5)


def test_a_bad_first_item_of_enqueue_many_is_refused_before_any_sql(app, dsn):
    """The caller's connection, idle and outside a transaction, stays so: the first
    item is checked before the savepoint (and its implicit transaction) begins."""
    import psycopg

    @app.task(name="args.two")
    def two(a, b):
        return None

    with psycopg.connect(dsn) as c:
        with pytest.raises(TypeError, match=r"items\[0\]"):
            two.using(connection=c).enqueue_many([(1,)])
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert two.using(connection=c).enqueue_many([]) == 0
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with pytest.raises(TypeError, match=r"items\[1\]"):
            two.using(connection=c).enqueue_many([(1, 2), (1,)])
        # a later item: the savepoint was rolled back, the transaction is usable
        assert c.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 0
        c.rollback()
