"""Property-based fuzzing of every input surface: the Python enqueue API, the SQL API
functions and `pgqueue enqueue`'s argv.

Every input either round-trips exactly (what is read back equals what was sent) or is
refused with a documented error: a :class:`pgqueue.PgQueueError`, a click usage error,
or a PostgreSQL data error with a message; the caller's transaction stays usable and
committed jobs are untouched. Example counts come from the Hypothesis profile
(``ci`` by default, deterministic; ``--hypothesis-profile=long`` for a long run).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import pgqueue
from pgqueue.cli import main

# -- strategies ----------------------------------------------------------------------

#: text as another service may send it: any code point, NUL and lone surrogates included
any_text = st.text(st.characters(codec=None), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "'; drop table pgqueue.jobs; --", "$$", "\\",
     "a" * 513, "é" * 200, "\u202e", "%s", "%(task)s", "{}", "null"])
#: text PostgreSQL can hold (no NUL, no lone surrogate)
db_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40) | \
    st.sampled_from(["", "'; drop table pgqueue.jobs; --", "$$", "a" * 513, "%s", "\\"])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | any_text)
rich = (st.datetimes(timezones=st.just(dt.timezone.utc) | st.none()) | st.dates()
        | st.times() | st.timedeltas() | st.decimals(allow_nan=False, allow_infinity=False)
        | st.uuids() | st.binary(max_size=20))
values = st.recursive(scalars | rich,
                      lambda inner: st.lists(inner, max_size=4)
                      | st.tuples(inner, inner)
                      | st.dictionaries(any_text | st.just("$type"), inner, max_size=4),
                      max_leaves=12)
#: JSON documents as SQL callers write them
json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10)


def normal(v: Any) -> Any:
    """What a value reads back as: tuples become lists."""
    if isinstance(v, (list, tuple)):
        return [normal(x) for x in v]
    if isinstance(v, dict):
        return {k: normal(x) for k, x in v.items()}
    return v


def same(a: Any, b: Any) -> bool:
    """Equality that also holds for -0.0 and compares Decimals with their exponent."""
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _any_args(*args: Any, **kwargs: Any) -> None:
    """A task that takes any arguments."""


# -- fixtures --------------------------------------------------------------------------

@pytest.fixture
def sentinel(conn) -> tuple:
    """A committed job no fuzzed input may change; returns (id, row)."""
    (jid,) = conn.execute("select pgqueue.enqueue('sentinel.task', '[1]', "
                          "unique_key => 'sentinel')").fetchone()
    return jid, conn.execute("select * from pgqueue.jobs where id = %s", (jid,)).fetchone()


def assert_untouched(conn, sentinel, count: int = 1) -> None:
    jid, row = sentinel
    assert conn.execute("select * from pgqueue.jobs where id = %s", (jid,)).fetchone() == row
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == count


def assert_clear_pg_error(e: psycopg.Error) -> None:
    """A refusal by PostgreSQL: a data or integrity error with a message."""
    assert e.sqlstate and e.sqlstate[:2] in ("22", "23"), (e.sqlstate, str(e))
    assert str(e).strip()


# -- the Python API --------------------------------------------------------------------

@given(task=any_text, args=st.lists(values, max_size=3) | st.tuples(values),
       kwargs=st.dictionaries(any_text, values, max_size=3),
       queue=st.none() | any_text, priority=st.none() | st.integers(),
       delay=st.none() | st.floats() | st.integers(-10, 10**10),
       unique_key=st.none() | any_text)
def test_python_enqueue_round_trips_or_refuses_cleanly(app, conn, sentinel, task, args, kwargs,
                                                       queue, priority, delay, unique_key):
    options = {k: v for k, v in (("queue", queue), ("priority", priority), ("delay", delay),
                                 ("unique_key", unique_key)) if v is not None}
    try:
        job = app.enqueue(task, args, kwargs, **options)
    except pgqueue.PgQueueError:
        assert_untouched(conn, sentinel)
        return
    try:
        job.refresh()
        assert job.task == task
        assert same(job.args, normal(args)), (job.args, args)
        assert same(job.kwargs, normal(kwargs)), (job.kwargs, kwargs)
        assert job.queue == (queue or "default")
        assert job.row["priority"] == (priority or 0)
        assert job.row["unique_key"] == unique_key
        assert job.state == ("scheduled" if delay else "available")
        assert_untouched(conn, sentinel, 2)
    finally:
        conn.execute("delete from pgqueue.jobs where id = %s", (job.id,))


@given(items=st.lists(st.tuples(st.lists(values, max_size=2),
                                st.dictionaries(any_text, values, max_size=2)),
                      min_size=1, max_size=4), delay=st.none() | st.just(5.0))
def test_enqueue_many_is_all_or_nothing_inside_the_callers_transaction(app, dsn, sentinel,
                                                                       items, delay):
    many = app.tasks.get("fuzz.many") or app.task(name="fuzz.many")(_any_args)
    with psycopg.connect(dsn) as c:
        c.execute("create temporary table if not exists mine (x int)")
        c.execute("insert into mine values (1)")      # the caller's own earlier write
        try:
            n = many.using(connection=c, delay=delay).enqueue_many(
                [pgqueue.Args(*a, **k) for a, k in items])
        except pgqueue.PgQueueError:
            n = 0
        else:
            assert n == len(items)
            rows = c.execute("select args, kwargs from pgqueue.jobs where task = 'fuzz.many' "
                             "order by id").fetchall()
            from pgqueue.serialization import decode
            got = [(decode(a), decode(k)) for a, k in rows]
            assert all(same(ga, normal(a)) and same(gk, normal(k))
                       for (ga, gk), (a, k) in zip(got, items, strict=True))
        # the transaction is usable either way and keeps the caller's write
        assert c.execute("select count(*) from mine").fetchone()[0] == 1
        assert c.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 1 + n
        c.rollback()
    with psycopg.connect(dsn) as c:
        assert_untouched(c, sentinel)


# -- the SQL API -----------------------------------------------------------------------

def exact(text: str) -> Any:
    """JSON text read with every number as an exact decimal: jsonb keeps numbers as
    numeric, so a caller's ``1e+16`` reads back as ``10000000000000000`` (an int to a
    plain JSON reader; the Python API writes such floats as ``10000000000000000.0``)."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


@given(task=db_text, args=json_docs, kwargs=json_docs, queue=st.none() | db_text,
       priority=st.none() | st.integers(-2**31, 2**31 - 1),
       unique_key=st.none() | db_text, raw=st.none() | db_text)
def test_sql_enqueue_round_trips_or_refuses_cleanly(conn, sentinel, task, args, kwargs, queue,
                                                    priority, unique_key, raw):
    args_text = raw if raw is not None else json.dumps(args)
    with conn.transaction():
        try:
            with conn.transaction():
                (jid,) = conn.execute(
                    "select pgqueue.enqueue(task => %s, args => %s::jsonb, kwargs => %s::jsonb, "
                    "queue => %s, priority => %s, unique_key => %s)",
                    (task, args_text, json.dumps(kwargs), queue, priority, unique_key)
                ).fetchone()
        except psycopg.Error as e:
            assert_clear_pg_error(e)
            assert_untouched(conn, sentinel)
            return
        row = conn.execute("select task, args::text, kwargs::text, queue, priority, "
                           "unique_key, state from pgqueue.jobs where id = %s", (jid,)).fetchone()
        assert (row[0], exact(row[1]), exact(row[2]), *row[3:]) == \
            (task, exact(args_text), exact(json.dumps(kwargs)),
             queue or "default", priority or 0, unique_key, "available")
        conn.execute("delete from pgqueue.jobs where id = %s", (jid,))
    assert_untouched(conn, sentinel)


step = st.fixed_dictionaries({"task": db_text}, optional={
    "args": json_docs, "kwargs": json_docs, "queue": db_text | st.integers(),
    "priority": st.integers() | db_text, "delay": st.floats() | db_text | st.integers(),
    "max_attempts": st.integers() | db_text, "inputs": db_text,
    "depends_on": st.lists(st.integers(-2, 5) | db_text, max_size=2) | json_docs,
    "after": st.lists(st.integers(-2, 5), max_size=2), "on_error": st.booleans() | db_text,
    "any_outcome": st.booleans() | db_text, "step": db_text | st.integers()})


@given(steps=st.lists(step, max_size=4) | json_docs, name=st.none() | db_text)
def test_sql_enqueue_workflow_refuses_cleanly(conn, sentinel, steps, name):
    with conn.transaction():
        try:
            with conn.transaction():
                wf, ids = conn.execute("select * from pgqueue.enqueue_workflow(%s::jsonb, %s)",
                                       (json.dumps(steps), name)).fetchone()
        except psycopg.Error as e:
            assert_clear_pg_error(e)
            assert_untouched(conn, sentinel)
            return
        rows = conn.execute("select task, args::text from pgqueue.jobs where id = any(%s) "
                            "order by id", (ids,)).fetchall()
        assert [r[0] for r in rows] == [s["task"] for s in steps]
        assert [exact(r[1]) for r in rows] == [exact(json.dumps(s.get("args", [])))
                                               for s in steps]
        conn.execute("delete from pgqueue.workflows where id = %s", (wf,))
    assert_untouched(conn, sentinel)


@given(name=db_text, task=db_text, cron=st.none() | db_text | st.sampled_from(
           ["* * * * *", "0 9 * * MON-FRI", "@daily", "61 * * * *"]),
       every=st.none() | st.integers(-5, 10**6), tz=st.none() | db_text
       | st.sampled_from(["UTC", "Europe/Paris", "../../etc/passwd"]),
       args=json_docs, queue=st.none() | db_text)
def test_sql_add_schedule_refuses_cleanly(conn, sentinel, name, task, cron, every, tz, args,
                                          queue):
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute(
                    "select pgqueue.add_schedule(name => %s, task => %s, args => %s::jsonb, "
                    "cron => %s, every => make_interval(secs => %s), tz => coalesce(%s, 'UTC'), "
                    "queue => coalesce(%s, 'default'))",
                    (name, task, json.dumps(args), cron, every, tz, queue))
        except psycopg.Error as e:
            assert_clear_pg_error(e)
            assert_untouched(conn, sentinel)
            return
        row = conn.execute("select task, args::text, cron from pgqueue.schedules "
                           "where name = %s", (name,)).fetchone()
        assert (row[0], exact(row[1]), row[2]) == (task, exact(json.dumps(args)), cron)
        conn.execute("delete from pgqueue.schedules")
    assert_untouched(conn, sentinel)


# -- the CLI ---------------------------------------------------------------------------

@given(task=any_text, args=st.none() | any_text | json_docs.map(json.dumps),
       kwargs=st.none() | any_text | json_docs.map(json.dumps),
       extra=st.lists(st.sampled_from(["--queue", "--priority", "--delay", "--unique-key",
                                       "--max-attempts"]).flatmap(
                          lambda o: st.tuples(st.just(o), any_text)), max_size=2))
def test_cli_enqueue_round_trips_or_fails_with_a_usage_error(dsn, conn, sentinel, task, args,
                                                             kwargs, extra):
    argv = ["--dsn", dsn, "enqueue", task]
    if args is not None:
        argv += ["--args", args]
    if kwargs is not None:
        argv += ["--kwargs", kwargs]
    for option, value in extra:
        argv += [option, value]
    result = CliRunner().invoke(main, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (argv, result.output, result.exc_info)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert result.exit_code in (1, 2) and result.output.strip(), argv
        assert_untouched(conn, sentinel)
        return
    (jid,) = conn.execute("select max(id) from pgqueue.jobs").fetchone()
    try:
        got = conn.execute("select task, args, kwargs from pgqueue.jobs where id = %s",
                           (jid,)).fetchone()
        assert got[0] == task
        if args is not None:    # the value given, read back as Python reads it
            assert same(got[1], json.loads(args)), (got[1], args)
        if kwargs is not None:
            assert same(got[2], json.loads(kwargs)), (got[2], kwargs)
    finally:    # a failing example leaves no job behind to fail the next ones
        conn.execute("delete from pgqueue.jobs where id = %s", (jid,))
    assert_untouched(conn, sentinel)


# -- regressions found by the fuzzing above --------------------------------------------

def test_floats_of_1e16_and_more_read_back_as_the_same_floats(app):
    """jsonb printed 1e+16 as 10000000000000000: it read back as an int, and for
    1.801439850948199e+16 as an int of another value."""
    sent = [1e16, 1.801439850948199e16, -1.5e300, 1e22, 0.1, 5e-324, 123.0, {"e+1": 2e20}]
    job = app.enqueue("fuzz.floats", sent)
    job.refresh()
    assert [type(v) for v in job.args] == [type(v) for v in sent]
    assert job.args == sent


def test_cli_enqueue_keeps_floats_of_1e16_and_more(dsn, conn):
    """``--args '[5.408474909489422e+16]'`` was stored as given, and jsonb turned the
    float into the integer 54084749094894220."""
    result = CliRunner().invoke(main, ["--dsn", dsn, "enqueue", "fuzz.floats", "--args",
                                       '[5.408474909489422e+16, 1e16, {"$type": "uuid", '
                                       '"value": "12345678-1234-5678-1234-567812345678"}]',
                                       "--kwargs", '{"x": 2e20}'])
    assert result.exit_code == 0, result.output
    (jid,) = conn.execute("select max(id) from pgqueue.jobs").fetchone()
    args, kwargs = conn.execute("select args, kwargs from pgqueue.jobs where id = %s",
                                (jid,)).fetchone()
    conn.execute("delete from pgqueue.jobs where id = %s", (jid,))
    assert args == [5.408474909489422e16, 1e16, {"$type": "uuid",
                    "value": "12345678-1234-5678-1234-567812345678"}]
    assert [type(a) for a in args[:2]] == [float, float]
    assert kwargs == {"x": 2e20} and type(kwargs["x"]) is float
