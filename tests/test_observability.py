"""Observability on a real PostgreSQL: Prometheus metrics scraped over HTTP, error hooks,
structured logs, pause/resume, the SQL views and every operator command."""

from __future__ import annotations

import json
import logging
import signal
import socket
import time
import urllib.request
import uuid

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import pgqueue
from pgqueue import RetryPolicy, migrate
from pgqueue.cli import main

from .conftest import wait_until, wait_worker_registered

# -- helpers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """Exposition text -> {(sample name, sorted label items): value}."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return parse(resp.read().decode())


def val(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def cli(dsn: str, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["--dsn", dsn, *args], env=env, catch_exceptions=False)


def cli_json(dsn: str, *args: str):
    res = cli(dsn, *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def sql_enqueue(conn, task: str, queue: str, args: list, max_attempts: int = 20,
                delay: float | None = None) -> int:
    return conn.execute(
        "select pgqueue.enqueue(%s, %s::jsonb, queue => %s, max_attempts => %s, "
        "run_at => now() + make_interval(secs => coalesce(%s::float8, 0)))",
        (task, json.dumps(args), queue, max_attempts, delay)).fetchone()[0]


def state(conn, job_id: int) -> str:
    return conn.execute("select state from pgqueue.jobs where id = %s", (job_id,)).fetchone()[0]


# -- Prometheus metrics ------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_endpoint_counts_match_the_jobs_table(dsn, conn, spawn_worker):
    # A job of a dead worker, of a task this worker does not run: rescued, then left alone.
    dead = uuid.uuid4()
    conn.execute("insert into pgqueue.workers (id, name, hostname, pid, concurrency, "
                 "heartbeat_at) values (%s, 'dead', 'gone', 1, 1, now() - interval '1 hour')",
                 (dead,))
    (ghost,) = conn.execute(
        "insert into pgqueue.jobs (task, queue, state, attempt, max_attempts, worker_id, "
        "started_at) values ('obs.ghost', 'ghosts', 'running', 1, 20, %s, "
        "now() - interval '1 hour') "
        "returning id", (dead,)).fetchone()
    later = sql_enqueue(conn, "obs.ok", "later", [0], delay=3600)
    for i in range(5):
        sql_enqueue(conn, "obs.ok", "fast", [i])
    for i in range(3):
        sql_enqueue(conn, "obs.flaky", "fast", [i], max_attempts=3)
    for i in range(2):
        sql_enqueue(conn, "obs.bad", "slow", [i], max_attempts=2)

    port = free_port()
    w = spawn_worker("tests.apps.observe", "-c", "4", "--metrics-port", str(port),
                     "--metrics-host", "127.0.0.1", "--metrics-interval", "0.2",
                     "--poll-interval", "0.2", "--heartbeat-interval", "0.3",
                     "--stale-after", "1")
    wait_until(lambda: conn.execute(
        "select count(*) = 0 from pgqueue.jobs where queue in ('fast', 'slow') "
        "and state not in ('completed', 'discarded')").fetchone()[0], 30,
        message="every job finished")
    wait_until(lambda: state(conn, ghost) == "available", 15, message="ghost rescued")

    # A running job cancelled from the command line ends 'cancelled'.
    waiting = sql_enqueue(conn, "obs.wait", "fast", [], max_attempts=1)
    wait_until(lambda: state(conn, waiting) == "running", 15, message="wait job running")
    assert cli_json(dsn, "jobs", "cancel", str(waiting)) == {"id": waiting, "state": "running"}
    wait_until(lambda: state(conn, waiting) == "cancelled", 15, message="wait job cancelled")

    expected = {}
    for queue, task, started, completed, errors, discarded, cancelled in conn.execute("""
            select queue, task, sum(attempt), count(*) filter (where state = 'completed'),
                   sum(jsonb_array_length(errors)), count(*) filter (where state = 'discarded'),
                   count(*) filter (where state = 'cancelled')
              from pgqueue.jobs where queue = 'fast' or queue = 'slow' group by 1, 2"""):
        expected[(queue, task)] = {
            "pgqueue_jobs_started_total": started,
            "pgqueue_jobs_completed_total": completed,
            "pgqueue_jobs_failed_total": errors - discarded - cancelled,
            "pgqueue_jobs_discarded_total": discarded,
            "pgqueue_jobs_cancelled_total": cancelled,
            "pgqueue_job_duration_seconds_count": started,
            "pgqueue_queue_latency_seconds_count": started,
        }
    # The mix really happened: retries, discards and a cancel, not only successes.
    assert expected[("fast", "obs.flaky")]["pgqueue_jobs_failed_total"] == 3
    assert expected[("fast", "obs.flaky")]["pgqueue_jobs_completed_total"] == 3
    assert expected[("slow", "obs.bad")]["pgqueue_jobs_failed_total"] == 2
    assert expected[("slow", "obs.bad")]["pgqueue_jobs_discarded_total"] == 2
    assert expected[("fast", "obs.wait")]["pgqueue_jobs_cancelled_total"] == 1

    def matches():
        m = scrape(port)
        got = {k: {name: val(m, name, queue=k[0], task=k[1]) for name in v}
               for k, v in expected.items()}
        return m if got == expected and val(m, "pgqueue_jobs_rescued_total", queue="ghosts",
                                            task="obs.ghost") == 1 else None

    m = wait_until(matches, 10, interval=0.1, message="metrics equal to the jobs table")
    # Histograms: the +Inf bucket equals the count; sums are positive.
    for (queue, task), v in expected.items():
        inf = val(m, "pgqueue_job_duration_seconds_bucket", queue=queue, task=task, le="+Inf")
        assert inf == v["pgqueue_job_duration_seconds_count"]
        assert val(m, "pgqueue_job_duration_seconds_sum", queue=queue, task=task) > 0
        assert val(m, "pgqueue_queue_latency_seconds_bucket", queue=queue, task=task,
                   le="+Inf") == v["pgqueue_queue_latency_seconds_count"]
    # Every claim round trip is timed: at least one per claimed batch of this worker.
    claims = val(m, "pgqueue_claim_duration_seconds_count")
    assert claims >= 1 and val(m, "pgqueue_claim_duration_seconds_sum") > 0
    assert val(m, "pgqueue_claim_duration_seconds_bucket", le="+Inf") == claims
    # Worker gauges.
    assert val(m, "pgqueue_worker_busy_slots") + val(m, "pgqueue_worker_idle_slots") == 4
    assert val(m, "pgqueue_worker_concurrency") == 4
    assert abs(val(m, "pgqueue_worker_last_heartbeat_timestamp_seconds") - time.time()) < 5

    # Database gauges equal what SQL says (refreshed every 0.2 s).
    def db_gauges_match():
        m = scrape(port)
        rows = conn.execute("select queue, state, count(*) from pgqueue.jobs where state in "
                            "('pending', 'scheduled', 'available', 'running', 'retryable') "
                            "group by 1, 2").fetchall()
        ok = all(val(m, "pgqueue_queue_jobs", queue=q, state=s) == n for q, s, n in rows)
        return m if ok and rows else None

    m = wait_until(db_gauges_match, 10, interval=0.1, message="database gauges")
    assert val(m, "pgqueue_queue_jobs", queue="later", state="scheduled") == 1
    assert val(m, "pgqueue_queue_jobs", queue="ghosts", state="available") == 1
    assert val(m, "pgqueue_queue_jobs", queue="fast", state="available") == 0
    assert val(m, "pgqueue_queue_oldest_available_age_seconds", queue="ghosts") > 0
    assert val(m, "pgqueue_queue_oldest_available_age_seconds", queue="later") == 0
    assert val(m, "pgqueue_queue_paused", queue="ghosts") == 0
    assert val(m, "pgqueue_workers_alive") == 1
    assert val(m, "pgqueue_database_up") == 1
    assert state(conn, later) == "scheduled"

    # The same database series, printed once by `pgqueue metrics`.
    res = cli(dsn, "metrics")
    assert res.exit_code == 0, res.output
    once = parse(res.stdout)
    assert val(once, "pgqueue_queue_jobs", queue="later", state="scheduled") == 1
    assert val(once, "pgqueue_queue_jobs", queue="ghosts", state="available") == 1
    assert val(once, "pgqueue_workers_alive") == 1

    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    with pytest.raises(OSError):
        scrape(port)


def test_metrics_port_in_use_refuses_to_start(app, conn):
    @app.task(name="t.noop")
    def noop():
        return None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        w = pgqueue.Worker(app, metrics_port=port, metrics_host="127.0.0.1")
        with pytest.raises(pgqueue.ConfigurationError, match="cannot serve metrics"):
            w.run(install_signal_handlers=False)
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 0


# -- error hooks and logs ----------------------------------------------------------------


def test_error_hooks_receive_the_full_context(app, conn, start_worker):
    calls = []

    @app.on_error
    def app_hook(ctx):
        calls.append(("app", ctx))

    def task_hook(ctx):
        calls.append(("task", ctx))

    @app.task(name="h.flaky", queue="hq", max_attempts=3, pass_context=True,
              retry=RetryPolicy(base=0.3, cap=0.3), on_error=task_hook)
    def flaky(ctx, a, *, b):
        if ctx.attempt == 1:
            raise KeyError(f"first attempt of {a}")
        return a

    @app.task(name="h.bad", max_attempts=1)
    def bad(x):
        raise ValueError(f"nope {x}")

    w = start_worker(app, concurrency=2).worker
    j1 = flaky.enqueue(1, b="x")
    j2 = bad.enqueue(7)
    assert j1.result(timeout=15) == 1
    with pytest.raises(pgqueue.JobFailed):
        j2.result(timeout=15)
    wait_until(lambda: len(calls) == 3, 10, message="three hook calls")

    by_job = {}
    for who, ctx in calls:
        by_job.setdefault(ctx.job_id, []).append((who, ctx))
    # The task's own hook runs first, then the app's; the other task has no own hook.
    assert [who for who, _ in by_job[j1.id]] == ["task", "app"]
    assert [who for who, _ in by_job[j2.id]] == ["app"]

    c = by_job[j1.id][0][1]
    assert by_job[j1.id][1][1] is c
    (run_at, errors) = conn.execute("select run_at, errors from pgqueue.jobs where id = %s",
                                    (j1.id,)).fetchone()
    assert (c.job_id, c.task, c.queue, c.args, c.kwargs) == (j1.id, "h.flaky", "hq", [1],
                                                             {"b": "x"})
    assert (c.attempt, c.max_attempts, c.worker_id) == (1, 3, w.id)
    assert isinstance(c.exception, KeyError) and "first attempt of 1" in str(c.exception)
    assert "Traceback" in c.traceback and "in flaky" in c.traceback and "KeyError" in c.traceback
    assert c.traceback == errors[0]["traceback"]
    assert c.error["type"] == "builtins.KeyError"
    assert c.state == "retryable" and c.will_retry
    assert c.retry_at == run_at          # the database's due time of the retry
    assert c.log_extra["job_id"] == j1.id

    d = by_job[j2.id][0][1]
    assert (d.job_id, d.task, d.queue, d.args, d.kwargs) == (j2.id, "h.bad", "default", [7], {})
    assert (d.attempt, d.max_attempts, d.worker_id) == (1, 1, w.id)
    assert isinstance(d.exception, ValueError) and str(d.exception) == "nope 7"
    assert "ValueError: nope 7" in d.traceback
    assert d.state == "discarded" and not d.will_retry and d.retry_at is None


def test_raising_hook_is_logged_and_worker_keeps_running(app, conn, start_worker, caplog):
    caplog.set_level(logging.DEBUG, logger="pgqueue")

    @app.on_error
    def broken(ctx):
        raise RuntimeError("hook bug")

    seen = []

    @app.on_error
    def second(ctx):
        seen.append(ctx.job_id)

    @app.task(name="l.bad", queue="lq", max_attempts=1)
    def bad():
        raise ValueError("task bug")

    @app.task(name="l.ok", queue="lq")
    def ok(n):
        return n + 1

    w = start_worker(app, concurrency=1).worker
    jb = bad.enqueue()
    with pytest.raises(pgqueue.JobFailed):
        jb.result(timeout=15)
    wait_until(lambda: seen == [jb.id], 10, message="second hook ran")
    jo = ok.enqueue(41)
    assert jo.result(timeout=15) == 42       # the worker runs on after the hook raised
    assert w._stopping.is_set() is False

    hook_errors = [r for r in caplog.records if "error hook" in r.getMessage()]
    assert len(hook_errors) == 1
    assert hook_errors[0].levelno == logging.ERROR and hook_errors[0].job_id == jb.id
    assert "hook bug" in caplog.text

    # One line per state change, with structured fields: successes at DEBUG (none at
    # INFO), a discarded job at ERROR.
    def changes(job_id):
        return [(r.state, r.levelname) for r in caplog.records
                if getattr(r, "job_id", None) == job_id and r.name == "pgqueue.worker"
                and r not in hook_errors]

    wait_until(lambda: changes(jo.id) == [("running", "DEBUG"), ("completed", "DEBUG")], 5,
               message="ok logs")
    assert changes(jb.id) == [("running", "DEBUG"), ("discarded", "ERROR")]
    rec = next(r for r in caplog.records if getattr(r, "job_id", None) == jb.id
               and getattr(r, "state", None) == "discarded")
    assert (rec.task, rec.queue, rec.attempt, rec.worker_id) == ("l.bad", "lq", 1, str(w.id))
    assert rec.error_type == "builtins.ValueError"


def test_library_is_quiet_by_default():
    logger = logging.getLogger("pgqueue")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)


# -- pause / resume ----------------------------------------------------------------------


@pytest.mark.slow
def test_pause_stops_one_queue_across_a_worker_restart(dsn, conn, spawn_worker):
    assert cli_json(dsn, "queues", "pause", "slow") == {"queue": "slow", "paused": True}
    args = ("-c", "2", "--poll-interval", "0.2")
    w1 = spawn_worker("tests.apps.observe", *args)
    wait_worker_registered(conn)
    held = sql_enqueue(conn, "obs.ok", "slow", [1])
    a1 = sql_enqueue(conn, "obs.ok", "fast", [2])
    wait_until(lambda: state(conn, a1) == "completed", 15, message="fast job done")
    time.sleep(0.6)                        # three poll intervals
    assert state(conn, held) == "available"
    stats = {r["queue"]: r for r in cli_json(dsn, "queues")}
    assert stats["slow"]["paused"] is True and stats["slow"]["ready"] == 1
    assert stats["fast"]["paused"] is False and stats["fast"]["completed"] == 1

    w1.signal(signal.SIGTERM)
    assert w1.wait(30) == 0
    spawn_worker("tests.apps.observe", *args)
    wait_until(lambda: conn.execute("select count(*) from pgqueue.workers").fetchone()[0] == 1,
               20, message="second worker registered")
    a2 = sql_enqueue(conn, "obs.ok", "fast", [3])
    wait_until(lambda: state(conn, a2) == "completed", 15, message="fast job after restart")
    time.sleep(0.6)
    assert state(conn, held) == "available"

    assert cli_json(dsn, "queues", "resume", "slow") == {"queue": "slow", "paused": False}
    wait_until(lambda: state(conn, held) == "completed", 10, message="slow job after resume")


# -- operator commands and views ---------------------------------------------------------


@pytest.fixture
def rows(conn):
    """Real rows made through the SQL API by a registered (fake) worker process."""
    wid = uuid.uuid4()
    conn.execute("select pgqueue.heartbeat(%s, 'w1', 'host1', 123, array['q1'], "
                 "array['t.a', 't.b'], 4)", (wid,))
    ids = {
        "ok": sql_enqueue(conn, "t.a", "q1", [1]),
        "fail": sql_enqueue(conn, "t.b", "q2", [2], max_attempts=1),
        "run": sql_enqueue(conn, "t.a", "q1", [3]),
    }
    ids["wait"] = sql_enqueue(conn, "t.a", "q1", [4], delay=3600)
    claimed = conn.execute("select id from pgqueue.claim(%s, null, null, 10)", (wid,)).fetchall()
    assert sorted(i for (i,) in claimed) == sorted([ids["ok"], ids["fail"], ids["run"]])
    conn.execute("select pgqueue.complete(%s, array[%s::bigint], array[1], array['5'::jsonb])",
                 (wid, ids["ok"]))
    error = {"type": "builtins.ValueError", "message": "broken input 2",
             "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                          "ValueError: broken input 2\n"}
    (st,) = conn.execute("select pgqueue.fail(%s, %s, 1, %s::jsonb)",
                         (wid, ids["fail"], json.dumps(error))).fetchone()
    assert st == "discarded"
    ids["worker"] = wid
    return ids


def test_views_show_failures_running_jobs_and_throughput(conn, rows):
    failed = conn.execute("select id, state, error_type, error_message, error_count, "
                          "error_traceback, retry_at from pgqueue.failed_jobs").fetchall()
    assert failed == [(rows["fail"], "discarded", "builtins.ValueError", "broken input 2", 1,
                       failed[0][5], None)]
    assert "ValueError: broken input 2" in failed[0][5]

    running = conn.execute("select id, worker_id, worker_name, worker_hostname, worker_pid, "
                           "heartbeat_age_seconds, running_seconds "
                           "from pgqueue.running_jobs").fetchall()
    assert [r[:5] for r in running] == [(rows["run"], rows["worker"], "w1", "host1", 123)]
    assert 0 <= running[0][5] < 60 and running[0][6] >= 0

    tp = conn.execute("select queue, completed, discarded, cancelled, "
                      "minute = date_trunc('minute', now()) from pgqueue.throughput "
                      "order by queue").fetchall()
    assert tp == [("q1", 1, 0, 0, True), ("q2", 0, 1, 0, True)]
    conn.execute("update pgqueue.jobs set finished_at = now() - interval '2 hours' "
                 "where id = %s", (rows["ok"],))
    assert conn.execute("select queue from pgqueue.throughput").fetchall() == [("q2",)]

    # A paused queue without jobs is listed too.
    conn.execute("insert into pgqueue.queues (name, paused) values ('empty', true)")
    stats = conn.execute("select queue, paused, ready, completed from pgqueue.queue_stats "
                         "order by queue").fetchall()
    assert ("empty", True, 0, 0) in stats and ("q1", False, 0, 1) in stats


def test_jobs_list_filters_and_json(dsn, conn, rows):
    got = cli_json(dsn, "jobs", "list")
    assert sorted(r["id"] for r in got) == sorted(rows[k] for k in ("ok", "fail", "run", "wait"))
    got = cli_json(dsn, "jobs", "list", "--state", "discarded")
    assert [(r["id"], r["last_error"]) for r in got] == [(rows["fail"], "broken input 2")]
    assert [r["id"] for r in cli_json(dsn, "jobs", "list", "--queue", "q2")] == [rows["fail"]]
    assert {r["id"] for r in cli_json(dsn, "jobs", "list", "--task", "t.a")} == {
        rows["ok"], rows["run"], rows["wait"]}
    conn.execute("update pgqueue.jobs set created_at = now() - interval '2 days' where id = %s",
                 (rows["ok"],))
    assert rows["ok"] not in {r["id"] for r in cli_json(dsn, "jobs", "list", "--since", "1d")}
    assert len(cli_json(dsn, "jobs", "list", "--since", "3d")) == 4
    got = cli_json(dsn, "jobs", "list", "--state", "running", "--queue", "q1", "--task", "t.a")
    assert [r["id"] for r in got] == [rows["run"]]
    assert cli(dsn, "jobs", "list", "--state", "bogus").exit_code == 2
    assert cli(dsn, "jobs", "list", "--since", "soon").exit_code == 2

    # Terminal output fits the terminal's width.
    conn.execute("update pgqueue.jobs set task = repeat('long.task.name.', 8) where id = %s",
                 (rows["run"],))
    res = cli(dsn, "jobs", "list", env={"COLUMNS": "70"})
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ID") and len(lines) == 5
    assert all(len(line) <= 70 for line in lines), lines
    assert any("…" in line for line in lines)
    # piped (no terminal, no COLUMNS), nothing is shortened
    res = cli(dsn, "jobs", "list", env={"COLUMNS": ""})
    assert "long.task.name." * 8 in res.stdout and "…" not in res.stdout


def test_jobs_show_retry_cancel_and_prune(dsn, conn, rows):
    shown = cli_json(dsn, "jobs", "show", str(rows["fail"]))
    assert shown["state"] == "discarded" and shown["args"] == [2]
    assert [e["message"] for e in shown["errors"]] == ["broken input 2"]
    text = cli(dsn, "jobs", "show", str(rows["fail"])).stdout
    assert "ValueError: broken input 2" in text and "Traceback" in text
    assert cli(dsn, "jobs", "show", "999999").exit_code == 1

    assert cli(dsn, "jobs", "retry").exit_code == 2
    assert cli(dsn, "jobs", "retry", str(rows["fail"]), "--failed").exit_code == 2
    assert cli_json(dsn, "jobs", "retry", "--failed", "--queue", "q1") == []
    assert cli_json(dsn, "jobs", "retry", "--failed", "--queue", "q2") == [
        {"id": rows["fail"], "state": "available"}]
    assert state(conn, rows["fail"]) == "available"
    assert cli_json(dsn, "jobs", "retry", str(rows["wait"])) == [
        {"id": rows["wait"], "state": "available"}]
    res = cli(dsn, "jobs", "retry", "--failed")
    assert res.exit_code == 0 and "retried 0 discarded jobs" in res.stdout

    assert cli_json(dsn, "jobs", "cancel", str(rows["wait"])) == {"id": rows["wait"],
                                                                  "state": "cancelled"}
    assert state(conn, rows["wait"]) == "cancelled"
    assert cli_json(dsn, "jobs", "cancel", str(rows["run"])) == {"id": rows["run"],
                                                                 "state": "running"}
    assert conn.execute("select cancel_requested_at is not null from pgqueue.jobs "
                        "where id = %s", (rows["run"],)).fetchone()[0]
    assert cli(dsn, "jobs", "cancel", "999999").exit_code == 1

    assert cli_json(dsn, "prune", "--older-than", "1h")["deleted"] == 0
    conn.execute("update pgqueue.jobs set finished_at = now() - interval '2 days' "
                 "where id in (%s, %s)", (rows["ok"], rows["wait"]))
    out = cli_json(dsn, "prune", "--older-than", "1d", "--state", "completed")
    assert out == {"deleted": 1, "older_than_seconds": 86400.0, "states": ["completed"]}
    assert conn.execute("select count(*) from pgqueue.jobs where id = %s",
                        (rows["ok"],)).fetchone()[0] == 0
    assert state(conn, rows["wait"]) == "cancelled"


def test_queues_and_workers_commands(dsn, conn, rows):
    stats = {r["queue"]: r for r in cli_json(dsn, "queues")}
    assert (stats["q1"]["running"], stats["q1"]["completed"], stats["q1"]["waiting"]) == (1, 1, 1)
    assert stats["q2"]["discarded"] == 1 and stats["q2"]["paused"] is False
    cli_json(dsn, "queues", "pause", "q2")
    assert {r["queue"]: r["paused"] for r in cli_json(dsn, "queues")}["q2"] is True
    text = cli(dsn, "queues").stdout
    assert text.splitlines()[0].startswith("QUEUE") and "q2" in text

    ws = cli_json(dsn, "workers")
    assert [(w["id"], w["name"], w["queues"], w["running"], w["alive"]) for w in ws] == [
        (str(rows["worker"]), "w1", ["q1"], 1, True)]
    assert 0 <= ws[0]["heartbeat_age"] < 60
    conn.execute("update pgqueue.workers set heartbeat_at = now() - interval '1 minute'")
    assert cli_json(dsn, "workers") == []
    assert [w["alive"] for w in cli_json(dsn, "workers", "--all")] == [False]
    assert "w1" in cli(dsn, "workers", "--all").stdout


# -- health check ------------------------------------------------------------------------


def test_check_passes_when_healthy_and_fails_for_each_reason(dsn, conn):
    wid = uuid.uuid4()
    conn.execute("select pgqueue.heartbeat(%s, 'w', 'h', 1, null, array['t'], 1)", (wid,))
    res = cli(dsn, "check")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("ok: schema version")
    report = cli_json(dsn, "check")
    assert report["ok"] is True and report["reasons"] == []
    assert report["schema_version"] == migrate.latest_version()

    # No heartbeat within the limit.
    conn.execute("update pgqueue.workers set heartbeat_at = now() - interval '2 minutes'")
    res = cli(dsn, "check", "--max-heartbeat-age", "30s")
    assert res.exit_code == 1 and "no heartbeat for" in res.output
    assert cli(dsn, "check", "--max-heartbeat-age", "5m").exit_code == 0
    assert cli(dsn, "check", "--max-heartbeat-age", "0s").exit_code == 0
    conn.execute("delete from pgqueue.workers")
    res = cli(dsn, "check")
    assert res.exit_code == 1 and "no worker is running" in res.output
    conn.execute("select pgqueue.heartbeat(%s, 'w', 'h', 1, array['other'], array['t'], 1)",
                 (wid,))
    assert cli(dsn, "check", "-q", "other").exit_code == 0
    res = cli(dsn, "check", "-q", "mine")
    assert res.exit_code == 1 and "for queues mine" in res.output

    # A due job waiting too long; a paused queue is not checked.
    job = sql_enqueue(conn, "t", "other", [])
    assert cli(dsn, "check").exit_code == 0
    conn.execute("update pgqueue.jobs set run_at = now() - interval '10 minutes' where id = %s",
                 (job,))
    res = CliRunner().invoke(main, ["--dsn", dsn, "check", "--json"])
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["ok"] is False and len(report["reasons"]) == 1
    assert report["reasons"][0].startswith("queue other: a due job has waited")
    assert report["oldest_available_seconds"]["other"] > 590
    assert cli(dsn, "check", "--max-job-age", "1h").exit_code == 0
    cli_json(dsn, "queues", "pause", "other")
    assert cli(dsn, "check").exit_code == 0
    cli_json(dsn, "queues", "resume", "other")
    assert cli(dsn, "check").exit_code == 1

    # A due job that no live worker runs (its task unknown to every worker), waiting
    # past --max-unserved-age though well within --max-job-age.
    conn.execute("delete from pgqueue.jobs")
    assert cli(dsn, "check").exit_code == 0
    orphan = sql_enqueue(conn, "t.nobody", "other", [])
    conn.execute("update pgqueue.jobs set run_at = now() - interval '2 minutes' where id = %s",
                 (orphan,))
    res = cli(dsn, "check", "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["ok"] is False and len(report["reasons"]) == 1
    assert "1 due job(s) of task t.nobody that no live worker runs" in report["reasons"][0]
    assert report["unserved"][0]["queue"] == "other" and report["unserved"][0]["jobs"] == 1
    assert cli(dsn, "check", "--max-unserved-age", "5m").exit_code == 0
    conn.execute("update pgqueue.workers set tasks = array['t', 't.nobody']")
    assert cli(dsn, "check").exit_code == 0

    # Schema behind the code.
    conn.execute("delete from pgqueue.jobs")
    assert cli(dsn, "check").exit_code == 0
    conn.execute("delete from pgqueue.migrations where version = %s",
                 (migrate.latest_version(),))
    res = cli(dsn, "check")
    assert res.exit_code == 1 and "schema:" in res.output

    # No database at all.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli(f"host=127.0.0.1 port={port} dbname=x connect_timeout=2", "check")
    assert res.exit_code == 1 and "cannot connect" in res.output


def test_check_without_schema(empty_dsn):
    res = cli(empty_dsn, "check", "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["schema_version"] is None
    assert [r.split(":")[0] for r in report["reasons"]] == ["schema"]

