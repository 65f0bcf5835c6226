"""Hostile inputs and misbehaving tasks: every job still reaches a terminal state, the
worker keeps running, and bad input is refused before any SQL with a clear error."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import psycopg
import pytest
from click.testing import CliRunner

import pgqueue
from pgqueue.cli import main

from .conftest import wait_until


def _states(dsn: str) -> dict[int, tuple[str, int]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return {i: (s, a) for i, s, a in c.execute("select id, state, attempt from pgqueue.jobs")}


class _StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")


def test_unstorable_exception_messages_are_recorded(app, dsn, start_worker):
    """A task's exception whose message PostgreSQL cannot store (NUL, lone surrogate) or
    whose str() raises still fails the job; the worker's threads survive it."""
    @app.task(name="atk.nul", retry=False)
    def nul() -> None:
        raise ValueError("bad\x00byte")

    @app.task(name="atk.surrogate", retry=False)
    def surrogate() -> None:
        raise ValueError("lone \ud800 surrogate")

    @app.task(name="atk.badstr", retry=False)
    def badstr() -> None:
        raise _StrRaises()

    @app.task(name="atk.ok")
    def ok(n: int) -> int:
        return n

    bad = [t.enqueue().id for t in (nul, surrogate, badstr, badstr)]
    start_worker(app, concurrency=1)
    wait_until(lambda: all(_states(dsn)[i][0] == "discarded" for i in bad), 10,
               message="bad-message jobs discarded")
    # The single executor thread is still alive: an ordinary job after them completes.
    assert ok.enqueue(7).result(timeout=10) == 7
    with psycopg.connect(dsn, autocommit=True) as c:
        msgs = [m for (m,) in c.execute(
            "select errors -> -1 ->> 'message' from pgqueue.jobs where id = any(%s) order by id",
            (bad,))]
    assert "bad" in msgs[0] and "byte" in msgs[0]
    assert "surrogate" in msgs[1]
    assert "_StrRaises" in msgs[2]


def test_retry_later_with_unusable_delay(app, dsn, start_worker):
    """RetryLater(delay=nan/inf/1e300) neither strands the job in `running` nor retries
    it at once in a hot loop (a huge interval must not wrap around to the past)."""
    @app.task(name="atk.nan", max_attempts=3)
    def nan() -> None:
        raise pgqueue.RetryLater(delay=float("nan"))

    @app.task(name="atk.inf", max_attempts=3)
    def inf() -> None:
        raise pgqueue.RetryLater(delay=float("inf"))

    @app.task(name="atk.huge", max_attempts=3)
    def huge() -> None:
        raise pgqueue.RetryLater(delay=1e300)

    ids = [t.enqueue().id for t in (nan, inf, huge)]
    start_worker(app, concurrency=3)
    wait_until(lambda: all(_states(dsn)[i][0] not in ("available", "running") for i in ids), 10,
               message="jobs failed")
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute("select id, state, attempt, run_at > now() + interval '1 day' "
                         "from pgqueue.jobs where id = any(%s) order by id", (ids,)).fetchall()
    assert rows[0][1:3] == ("retryable", 1)           # nan: the ordinary backoff
    assert rows[1][1:] == ("retryable", 1, True)      # inf: far away, not now
    assert rows[2][1:] == ("retryable", 1, True)      # huge: far away, not now


def test_retry_policy_rejects_unusable_cap():
    with pytest.raises(ValueError):
        pgqueue.RetryPolicy(cap=float("inf"))
    with pytest.raises(ValueError):
        pgqueue.RetryPolicy(base=float("nan"))


def _unlimited_digits(fn):
    import sys
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return fn()
    finally:
        sys.set_int_max_str_digits(old)


def _nest(depth: int) -> list:
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("call,error", [
    (lambda a, t, c: t.using(connection=c).enqueue("a\ud800b"), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue(**{"k\udfff": 1}), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue({"x": {"k\udfff": 1}}), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue(_nest(5000)), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue(10 ** 5000), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c, unique_key="k" * 5000).enqueue(), pgqueue.EnqueueError),
    (lambda a, t, c: t.using(connection=c, unique_key="\ud800").enqueue(), pgqueue.EnqueueError),
    (lambda a, t, c: t.using(connection=c, queue="q\ud800").enqueue(), pgqueue.EnqueueError),
    (lambda a, t, c: t.using(connection=c, delay=float("inf")).enqueue(), pgqueue.EnqueueError),
    (lambda a, t, c: t.using(connection=c, delay=1e13).enqueue(), pgqueue.EnqueueError),
    # a run_at that reads back as year 0 or 10000 in UTC (no client could read the row)
    (lambda a, t, c: t.using(connection=c, run_at=dt.datetime(
        1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=14)))).enqueue(), pgqueue.EnqueueError),
    (lambda a, t, c: t.using(connection=c, run_at=dt.datetime(
        9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5)))).enqueue(),
     pgqueue.EnqueueError),
    (lambda a, t, c: a.enqueue("t" * 600, connection=c), pgqueue.EnqueueError),
    (lambda a, t, c: a.enqueue("", connection=c), pgqueue.EnqueueError),
    (lambda a, t, c: a.enqueue("a\x00b", connection=c), pgqueue.EnqueueError),
    (lambda a, t, c: a.enqueue("a\ud800b", connection=c), pgqueue.EnqueueError),
    # a document over MAX_DOCUMENT_BYTES never reaches the server (jsonb would refuse it
    # and abort the caller's transaction)
    (lambda a, t, c: t.using(connection=c).enqueue("x" * (17 << 20)), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue(["é" * (9 << 20)]), pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue(blob=b"x" * (17 << 20)),
     pgqueue.SerializationError),
    (lambda a, t, c: t.using(connection=c).enqueue_many([("x" * (17 << 20),)]),
     pgqueue.SerializationError),
    # more digits than a jsonb number holds, even with Python's int->str limit lifted
    (lambda a, t, c: _unlimited_digits(lambda: t.using(connection=c).enqueue(10 ** 140_000)),
     pgqueue.SerializationError),
    # args that would be taken apart: a str per character, a dict per key
    (lambda a, t, c: a.enqueue("atk.noop", "abc", connection=c), TypeError),
    (lambda a, t, c: a.enqueue("atk.noop", {"a": 1}, connection=c), TypeError),
    (lambda a, t, c: a.enqueue("atk.noop", 5, connection=c), TypeError),
    (lambda a, t, c: a.enqueue("atk.noop", [1], kwargs=[("a", 1)], connection=c), TypeError),
    (lambda a, t, c: t.signature("abc"), TypeError),
])
def test_bad_input_refused_before_sql(app, dsn, call, error):
    """Each bad input raises pgqueue's error and leaves the caller's transaction usable."""
    t = app.task(lambda *a, **k: None, name="atk.noop")
    with psycopg.connect(dsn) as conn:
        conn.execute("insert into public.side (note) values ('mine')")
        with pytest.raises(error):
            call(app, t, conn)
        t.using(connection=conn).enqueue()
        conn.commit()
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from public.side").fetchone()[0] == 1
        assert c.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 1


@pytest.mark.parametrize("args", [
    ["--queue", ""],
    ["--queue", "q" * 200],
    ["--delay", "1e13"],
    ["--delay", "nan"],
    ["--unique-key", "k" * 5000],
    ["--args", '["\\ud800"]'],
    ["--kwargs", '{"a\\u0000": 1}'],
    ["--args", "[NaN]"],
    ["--args", "[-Infinity]"],
    ["--args", "[1e999]"],
    ["--args", "[" + "9" * 5000 + "]"],
    ["--args", "[" * 100_000 + "]" * 100_000],
    ["--args", '["' + "x" * (17 << 20) + '"]'],
])
def test_cli_enqueue_bad_input(dsn, args):
    res = CliRunner().invoke(main, ["--dsn", dsn, "enqueue", "atk.noop", *args])
    assert res.exit_code == 2, res.output
    assert "Error: Invalid value" in res.output
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 0


@pytest.mark.parametrize("name", ["", "t" * 600])
def test_cli_enqueue_bad_task_name(dsn, name):
    res = CliRunner().invoke(main, ["--dsn", dsn, "enqueue", name])
    assert res.exit_code == 2, res.output
    assert "Error: Invalid value" in res.output


@pytest.mark.parametrize("delay, seconds", [("90", 90), ("90s", 90), ("2m", 120),
                                            ("1500ms", 1.5), ("1h", 3600)])
def test_cli_delay_takes_seconds_or_a_unit(dsn, delay, seconds):
    res = CliRunner().invoke(main, ["--dsn", dsn, "enqueue", "atk.noop", "--delay", delay])
    assert res.exit_code == 0, res.output
    with psycopg.connect(dsn, autocommit=True) as c:
        state, ahead = c.execute("select state, extract(epoch from run_at - created_at) "
                                 "from pgqueue.jobs where id = %s",
                                 (int(res.output.strip()),)).fetchone()
    assert state == "scheduled"
    assert float(ahead) == pytest.approx(seconds, abs=0.5)


@pytest.mark.parametrize("argv, says", [
    (["worker", "--app", "x", "--stale-after", "5x"], "is not a duration (seconds, or with a unit"),
    (["worker", "--app", "x", "--poll-interval", "0ms"], "shorter than the minimum of 0.01 s"),
    (["enqueue", "atk.noop", "--delay", "-1"], "is not a duration"),
    (["prune", "--older-than", "7"], "is not a duration with a unit"),
])
def test_cli_bad_durations_are_refused_naming_the_option(dsn, argv, says):
    res = CliRunner().invoke(main, ["--dsn", dsn, *argv])
    assert res.exit_code == 2, res.output
    assert says in res.output and argv[-2] in res.output
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 0


@pytest.mark.parametrize("argv", [
    ["jobs", "cancel", "99999999999999999999"],
    ["jobs", "retry", "99999999999999999999"],
    ["jobs", "show", "0"],
    ["prune", "--older-than", "1000000w"],
    ["worker", "--app", "x", "--stale-after", "9999999999d"],
])
def test_cli_out_of_range_values_are_usage_errors(dsn, argv):
    res = CliRunner().invoke(main, ["--dsn", dsn, *argv])
    assert res.exit_code == 2, res.output
    assert "Error: Invalid value" in res.output and "range" in res.output or \
        "longer than the maximum" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_huge_error_messages_are_cut_and_the_job_still_fails(app, dsn, start_worker):
    """A task raising an exception with a 50 MB message: the attempt is recorded with
    the start and end of the message, and the worker goes on."""
    @app.task(name="atk.loud", retry=False)
    def loud() -> None:
        raise ValueError("<" + "x" * (50 << 20) + ">")

    job = loud.enqueue()
    start_worker(app, concurrency=1)
    wait_until(lambda: _states(dsn).get(job.id, ("",))[0] == "discarded", 20,
               message="loud job discarded")
    with psycopg.connect(dsn, autocommit=True) as c:
        msg, size = c.execute("select errors -> -1 ->> 'message', pg_column_size(errors) "
                              "from pgqueue.jobs where id = %s", (job.id,)).fetchone()
    assert msg.startswith("<xxx") and msg.endswith("xxx>") and "characters cut" in msg
    assert size < 1 << 20


def test_result_survives_lost_connection(app, dsn):
    """job.result() keeps waiting when its LISTEN connection is terminated."""
    job = app.enqueue("atk.nobody")
    out: dict = {}

    def wait() -> None:
        try:
            out["value"] = job.result(timeout=15)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    with psycopg.connect(dsn, autocommit=True) as c:
        def listening() -> bool:
            return c.execute("select count(*) from pg_stat_activity where datname = "
                             "current_database() and query like 'select state, result%%' "
                             "and pid <> pg_backend_pid()").fetchone()[0] > 0
        wait_until(listening, 10, message="result() waiting")
        c.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                  "where datname = current_database() and pid <> pg_backend_pid()")
        time.sleep(0.5)
        c.execute("update pgqueue.jobs set state = 'completed', result = '5', "
                  "finished_at = now() where id = %s", (job.id,))
        c.execute("select pg_notify('pgqueue_done', %s)", (str(job.id),))
    t.join(15)
    assert out == {"value": 5}


def _discarded_holding_nothing(dsn: str, t, key: str | None) -> int:
    """A discarded job with ``unique_key`` (a finished job no longer holds its key)."""
    job = t.using(unique_key=key).enqueue() if key else t.enqueue()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("update pgqueue.jobs set state = 'discarded', finished_at = now(), "
                  "attempt = 1, max_attempts = 1 where id = %s", (job.id,))
    return job.id


def test_retry_of_a_job_whose_unique_key_is_held(app, dsn):
    """Retrying a finished job whose key another unfinished job now holds says so,
    naming the holder, and changes nothing; a batch retry skips just those jobs."""
    t = app.task(lambda *a, **k: None, name="atk.unique")
    d1 = _discarded_holding_nothing(dsn, t, "a")
    h1 = t.using(unique_key="a").enqueue().id
    d2 = _discarded_holding_nothing(dsn, t, "b")
    h2 = t.using(unique_key="b", delay=3600).enqueue().id
    d3 = _discarded_holding_nothing(dsn, t, "c")        # c is free: the older one gets it
    d4 = _discarded_holding_nothing(dsn, t, "c")
    d5 = _discarded_holding_nothing(dsn, t, None)
    d6 = _discarded_holding_nothing(dsn, t, None)

    with pytest.raises(pgqueue.UniqueKeyHeld) as e:
        pgqueue.Job(app, d1).retry()
    assert e.value.job_id == d1
    assert f"job {d1} cannot be retried" in str(e.value) and f"unfinished job {h1}" in str(e.value)
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "retry", str(d2)])
    assert res.exit_code == 1, res.output
    assert f"held by unfinished job {h2}" in res.output and "Traceback" not in res.output
    assert _states(dsn)[d1] == ("discarded", 1) and _states(dsn)[d2] == ("discarded", 1)

    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "retry", "--failed", "--json"])
    assert res.exit_code == 0, res.output
    import json
    assert json.loads(res.output) == [
        {"id": d1, "state": "discarded", "held_by": h1},
        {"id": d2, "state": "discarded", "held_by": h2},
        {"id": d3, "state": "available"},
        {"id": d4, "state": "discarded", "held_by": d3},
        {"id": d5, "state": "available"},
        {"id": d6, "state": "available"}]
    got = _states(dsn)
    assert [got[i][0] for i in (d1, d2, d3, d4, d5, d6, h1, h2)] == [
        "discarded", "discarded", "available", "discarded", "available", "available",
        "available", "scheduled"]
    # again: the text form says what was skipped and why
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "retry", "--failed"])
    assert res.exit_code == 0, res.output
    assert "retried 0 discarded jobs" in res.output
    assert "skipped 3 whose unique_key an unfinished job holds" in res.output


def test_result_over_the_document_limit_discards_the_job_saying_so(app, dsn, start_worker):
    @app.task(name="atk.bigresult")
    def bigresult() -> str:
        return "x" * (17 << 20)

    ok = app.task(lambda: 5, name="atk.five")
    job = bigresult.enqueue()
    start_worker(app, concurrency=1)
    wait_until(lambda: _states(dsn).get(job.id, ("",))[0] == "discarded", 20,
               message="job with an oversized result discarded")
    with psycopg.connect(dsn, autocommit=True) as c:
        (kind, msg), = c.execute("select errors -> -1 ->> 'type', errors -> -1 ->> 'message' "
                                 "from pgqueue.jobs where id = %s", (job.id,)).fetchall()
    assert kind == "pgqueue.errors.SerializationError"
    assert "over the limit of 16 MiB" in msg and "result" in msg
    # the worker goes on: a small job completes
    assert ok.enqueue().result(timeout=10) == 5


@pytest.mark.parametrize("command, opt, value", [("jobs list", "--dsn", "host=/nowhere"),
                                                 ("worker --app x", "--log-level", "debug")])
def test_global_option_after_the_command_says_where_it_goes(command, opt, value):
    res = CliRunner().invoke(main, [*command.split(), opt, value])
    assert res.exit_code == 2
    assert f"{opt} is an option of `pgqueue` itself: put it before the command" in res.output
    where = command.split(" --")[0]
    assert f"as in `pgqueue {opt} ... {where} ...`" in res.output


def test_workflow_tree_shortens_a_long_list_of_dependencies():
    from pgqueue.workflow import render
    workflow = {"id": 1, "name": None, "state": "pending", "created_at": None,
                "finished_at": None, "total": 101, "completed": 0, "discarded": 0,
                "cancelled": 0, "remaining": 101}
    members = [{"job_id": i, "task": "m", "state": "available", "attempt": 0,
                "max_attempts": 3, "depends_on": []} for i in range(1, 101)]
    callback = {"job_id": 101, "task": "cb", "state": "pending", "attempt": 0,
                "max_attempts": 3, "deps_pending": 100, "depends_on": list(range(1, 101))}
    out = render(workflow, [*members, callback])
    (line,) = [x for x in out.splitlines() if "#101 cb" in x]
    assert line.endswith("waiting for 100, also after #2, #3, #4, ... #100 (99 in all)")


@pytest.mark.parametrize("argv, says", [
    (["jobs", "list", "--limit", "99999999999999999999"], "range"),
    (["enqueue", "atk.noop", "--max-attempts", "99999999999"], "range"),
    (["queues", "--stale-after", "nan"], "not a duration"),
    (["queues", "--stale-after", "-1"], "not a duration"),
    (["queues", "pause", "q" * 8000], "at most 128 characters"),
    (["jobs", "list", "--queue", "bad\udcffname"], "not valid UTF-8"),
    (["jobs", "list", "--task", "\udcff"], "not valid UTF-8"),
    # tagged values are checked as the Python API checks the values they stand for
    (["enqueue", "atk.noop", "--args", '[{"$type": "datetime", "value": "2026-01-01T00:00:00"}]'],
     "naive datetime"),
    (["enqueue", "atk.noop", "--args", '[{"$type": "datetime", "value": "garbage"}]'],
     "cannot be read"),
    (["queues", "pause", "\udcff"], "valid UTF-8 without NUL"),
])
def test_cli_hostile_values_get_a_usage_error_not_a_traceback(dsn, argv, says):
    """Found by an attack run: each of these printed a traceback (an int8 overflow, an
    int4 overflow reported as a missing schema, NaN seconds, non-UTF-8 argv bytes, a
    queue that could be paused but never resumed)."""
    res = CliRunner().invoke(main, ["--dsn", dsn, *argv])
    assert res.exit_code == 2, res.output
    assert says in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 0
        assert c.execute("select count(*) from pgqueue.queues").fetchone()[0] == 0


def test_cli_output_escapes_terminal_control_sequences(dsn, conn):
    """Task names, queue names and error messages come from any producer; printed raw,
    ESC/OSC/CR sequences in them cleared the reader's screen, set the window title and
    faked output lines."""
    evil = "\x1b]0;PWNED\x07\x1b[2J\x1b[H\rFAKE: all jobs completed"
    errors = json.dumps([{"at": "2026-01-01T00:00:00+00:00", "attempt": 1,
                          "type": "ValueError", "message": "invalid email: " + evil,
                          "traceback": "Traceback\n  line\x1b[31m\nValueError"}])
    (job_id,) = conn.execute(
        "insert into pgqueue.jobs (task, queue, state, attempt, max_attempts, errors, "
        "finished_at) values (%s, %s, 'discarded', 1, 1, %s, now()) returning id",
        ("t" + evil, "q" + evil, errors)).fetchone()
    for argv in (["jobs", "list"], ["jobs", "show", str(job_id)], ["queues"]):
        res = CliRunner().invoke(main, ["--dsn", dsn, *argv])
        assert res.exit_code == 0, res.output
        out = res.output
        assert not any(c in out for c in "\x1b\x07\r"), (argv, out)
        assert "\\x1b]0;PWNED\\x07" in out, (argv, out)
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "show", str(job_id), "--json"])
    assert json.loads(res.output)["task"] == "t" + evil     # JSON keeps the value exact
    # a newline in a value made a line of its own, faking a field
    (fake,) = conn.execute("select pgqueue.enqueue(%s)",
                           ("real.task\n               state: completed",)).fetchone()
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "show", str(fake)])
    states = [ln for ln in res.output.splitlines() if ln.strip().startswith("state:")]
    assert states == ["               state: available"], res.output
    conn.execute("select pgqueue.enqueue_workflow(%s)",
                 (json.dumps([{"task": "wf.step\n- #1 fake: completed"}]),))
    (wf,) = conn.execute("select max(id) from pgqueue.workflows").fetchone()
    res = CliRunner().invoke(main, ["--dsn", dsn, "workflows", "show", str(wf)])
    assert res.exit_code == 0 and "\\n- #1 fake" in res.output, res.output
    assert not any(ln.lstrip().startswith("- #1 fake") for ln in res.output.splitlines())


@pytest.mark.parametrize("timeout", [float("nan"), "5", True])
def test_result_timeout_that_is_no_number_is_refused_at_once(app, timeout):
    """``result(timeout=float("nan"))`` waited forever (every comparison with NaN is
    false, so the deadline never passed)."""
    @app.task(name="atk.never_run")
    def never_run() -> None:
        return None

    job = never_run.enqueue()
    flow = pgqueue.chain(never_run.si(), never_run.si()).enqueue()
    t0 = time.monotonic()
    for wait in (job.result, flow.result):
        with pytest.raises(ValueError, match="timeout must be a number of seconds"):
            wait(timeout=timeout)
    assert time.monotonic() - t0 < 5
