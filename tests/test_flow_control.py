"""Flow control (README "Flow control", DESIGN 16): concurrency and rate limits per
queue, per partition key and per task, fair sharing between keys, debounce.

Limits are enforced by the claim in SQL, so these tests run real ``pgqueue worker``
processes (tests/apps/flow.py) and measure from the database: each execution writes a
start and an end row (database clock) into ``public.side``, and a job's ``started_at``
is the claim's stamp, the instant rate limits count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest

import pgqueue
from pgqueue.metrics import DatabaseCollector

from .conftest import ROOT, wait_until, wait_worker_registered

APP = "tests.apps.flow"
WORK = "tests.apps.flow.work"
REPORT = "tests.apps.flow.report"


def enqueue(conn, n, *, queue="limited", seconds=0.3, key=None, task=WORK, args=None, **kw):
    if args is None:
        args = [seconds, key] if task == WORK else [seconds]
    extra = ", ".join(f"{k} => %({k})s" for k in kw)
    ids = []
    for _ in range(n):
        ids.append(conn.execute(
            "select pgqueue.enqueue(%(task)s, %(args)s::jsonb, queue => %(queue)s, "
            "partition_key => %(key)s" + (", " + extra if extra else "") + ")",
            {"task": task, "args": json.dumps(args), "queue": queue, "key": key, **kw},
        ).fetchone()[0])
    return ids


def runs(conn, note=None):
    """(job_id, note, start, end) per execution, in start order (end None: running)."""
    return conn.execute(
        "select s.job_id, s.note, extract(epoch from s.at)::float8, "
        "       (select extract(epoch from e.at)::float8 from public.side e "
        "         where e.job_id = s.job_id and e.attempt = s.attempt and e.event = 'end') "
        "  from public.side s where s.event = 'start' "
        "   and (%s::text is null or s.note = %s) order by s.at", (note, note)).fetchall()


def overlap(intervals):
    """Most intervals open at one instant, and the time-weighted mean count."""
    events = sorted([(s, 1) for s, e in intervals] + [(e, -1) for s, e in intervals],
                    key=lambda x: (x[0], x[1]))
    top = cur = 0
    area = 0.0
    last = events[0][0]
    for t, d in events:
        area += cur * (t - last)
        last = t
        cur += d
        top = max(top, cur)
    span = events[-1][0] - events[0][0]
    return top, area / span if span else 0.0


def done(conn, queue="limited"):
    return conn.execute("select count(*) from pgqueue.jobs where queue = %s and state = "
                        "'completed'", (queue,)).fetchone()[0]


def cli(dsn, *args):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("PGQUEUE_DSN", None)
    return subprocess.run([sys.executable, "-m", "pgqueue.cli", "--dsn", dsn, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_global_concurrency_is_never_exceeded_and_is_used(dsn, conn, spawn_worker):
    conn.execute("select pgqueue.set_queue_limits('limited', concurrency => 3)")
    for _ in range(3):
        spawn_worker(APP, "-c", "8", "-q", "limited")
    wait_worker_registered(conn, 3)
    enqueue(conn, 40, seconds=0.3)
    wait_until(lambda: done(conn) == 40, 25, message="40 jobs done")
    rows = runs(conn)
    assert len(rows) == 40
    top, mean = overlap([(s, e) for _, _, s, e in rows])
    assert top == 3, top                   # never more than the limit...
    assert mean >= 3 * 0.65, mean          # ...and the limit is used, not undershot


@pytest.mark.slow
def test_a_limit_stays_busy_with_short_jobs(dsn, conn, spawn_worker):
    # A job's end frees a slot of the limit: the worker claims again at once, rather
    # than at its next look for jobs held back by the limit.
    conn.execute("select pgqueue.set_queue_limits('limited', concurrency => 4)")
    spawn_worker(APP, "-c", "8", "-q", "limited", "--poll-interval", "5")
    wait_worker_registered(conn, 1)
    enqueue(conn, 80, seconds=0.1)
    wait_until(lambda: done(conn) == 80, 30, message="80 jobs done")
    rows = runs(conn)
    assert len(rows) == 80
    top, mean = overlap([(s, e) for _, _, s, e in rows])
    assert top == 4, top
    assert mean >= 4 * 0.8, mean


def test_a_freed_slot_of_another_worker_wakes_the_claim_loop():
    from pgqueue._positions import ClaimPositions
    from pgqueue.worker.listener import notified
    from pgqueue.worker.running import WakeUp

    wake, positions = WakeUp(), ClaimPositions()

    def hear(pid, payload, queues=("limited",)):
        wake.pending = False
        wake.clear()
        notified(psycopg.Notify("pgqueue_freed", payload, pid), queues=list(queues),
                 positions=positions, wake=wake, cancel=lambda _: None, own_pid=7)
        return wake.pending and wake.event.is_set()

    assert hear(8, "limited")             # another worker's job ended: claim
    assert not hear(7, "limited")         # this worker's completer woke it already
    assert not hear(8, "other")           # not one of this worker's queues


@pytest.mark.slow
def test_rate_limit_holds_in_every_window_across_workers(dsn, conn, spawn_worker):
    conn.execute("select pgqueue.set_queue_limits('limited', rate_limit => 5, "
                 "rate_period => interval '1 second')")
    for _ in range(2):
        spawn_worker(APP, "-c", "8", "-q", "limited")
    wait_worker_registered(conn, 2)
    t0 = time.monotonic()
    enqueue(conn, 30, seconds=0.01)
    wait_until(lambda: done(conn) == 30, 10, message="30 jobs done")
    took = time.monotonic() - t0
    starts = [r[0] for r in conn.execute(
        "select extract(epoch from started_at)::float8 from pgqueue.jobs "
        "where queue = 'limited' order by started_at")]
    worst = max(sum(1 for t in starts if s <= t <= s + 1.0) for s in starts)
    assert worst <= 5, worst
    assert took < 7, took
    # the window is the limit's: five starts about every second, not fewer
    assert starts[-1] - starts[0] < 6.0, starts[-1] - starts[0]


@pytest.mark.slow
def test_partition_concurrency_and_fair_sharing_between_keys(dsn, conn, spawn_worker):
    conn.execute("select pgqueue.set_queue_limits('limited', partition_concurrency => 1)")
    enqueue(conn, 20, seconds=0.15, key="A")
    enqueue(conn, 20, seconds=0.15, key="B")
    enqueue(conn, 2, seconds=0.15, key="C")
    for _ in range(2):
        spawn_worker(APP, "-c", "4", "-q", "limited")
    wait_until(lambda: done(conn) == 42, 20, message="42 jobs done")
    for key in "ABC":
        top, _ = overlap([(s, e) for _, _, s, e in runs(conn, key)])
        assert top == 1, (key, top)
    a_starts = [s for _, _, s, _ in runs(conn, "A")]
    c_starts = [s for _, _, s, _ in runs(conn, "C")]
    assert max(c_starts) < a_starts[9], (c_starts, a_starts)


@pytest.mark.slow
def test_task_concurrency_across_worker_processes(dsn, conn, spawn_worker):
    for _ in range(3):
        spawn_worker(APP, "-c", "4", "-q", "reports")
    wait_worker_registered(conn, 3)
    enqueue(conn, 6, queue="reports", seconds=0.2, task=REPORT)
    wait_until(lambda: done(conn, "reports") == 6, 15, message="6 reports done")
    rows = runs(conn)
    top, _ = overlap([(s, e) for _, _, s, e in rows])
    assert top == 1
    assert len({w for (w,) in conn.execute(
        "select distinct worker from public.side")}) >= 1


@pytest.mark.slow
def test_slots_of_a_killed_worker_come_back_after_stale_after(dsn, conn, spawn_worker):
    conn.execute("select pgqueue.set_queue_limits('limited', concurrency => 2)")
    stale, beat = 2.0, 0.5
    victim = spawn_worker(APP, "-c", "8", "-q", "limited", "--stale-after", "2",
                          "--heartbeat-interval", "0.5")
    wait_worker_registered(conn, 1)
    enqueue(conn, 2, args=[30, None, 0.2])     # 30 s at the first attempt, then 0.2 s
    wait_until(lambda: len(runs(conn)) == 2, 10, message="the victim holds both slots")
    enqueue(conn, 2, seconds=0.2)
    spare = spawn_worker(APP, "-c", "8", "-q", "limited", "--stale-after", "2",
                         "--heartbeat-interval", "0.5")
    wait_worker_registered(conn, 2)
    time.sleep(0.5)   # the spare claims in vain: the two slots are taken
    assert len(runs(conn)) == 2
    victim.kill()
    (killed_at,) = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    wait_until(lambda: done(conn) == 4, 15, message="all four jobs done by the spare")
    rows = runs(conn)
    first_after = min(s for _, _, s, _ in rows if s > killed_at)
    assert first_after - killed_at <= stale + beat + 1.0, first_after - killed_at
    top, _ = overlap([(s, e) for _, _, s, e in rows if e is not None])
    assert top <= 2
    assert spare.proc.poll() is None


def test_debounce_runs_once_with_the_last_arguments(app, conn, start_worker):
    seen = []

    @app.task(name="flow.debounced")
    def debounced(n):
        seen.append((n, conn.execute("select extract(epoch from clock_timestamp())::float8")
                     .fetchone()[0]))

    start_worker(app, concurrency=2, poll_interval=0.2)
    ids = set()
    for i in range(10):
        ids.add(debounced.using(debounce=1, debounce_key="k").enqueue(i).id)
        time.sleep(0.05)
    (last_call,) = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    assert len(ids) == 1
    wait_until(lambda: seen, 5, message="the debounced job ran")
    time.sleep(0.3)
    assert [n for n, _ in seen] == [9]
    assert 0.8 <= seen[0][1] - last_call <= 1.8, seen[0][1] - last_call
    assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 1


@pytest.mark.slow
def test_debounce_max_caps_an_endless_stream(app, conn, start_worker):
    seen = []

    @app.task(name="flow.capped")
    def capped(n):
        seen.append(conn.execute("select extract(epoch from clock_timestamp())::float8")
                    .fetchone()[0])

    start_worker(app, concurrency=2, poll_interval=0.2)
    (first,) = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    deadline = time.monotonic() + 2.5
    i = 0
    while time.monotonic() < deadline:          # a call every 0.1 s, for 2.5 s
        capped.using(debounce=0.5, debounce_key="stream", debounce_max=1.0).enqueue(i)
        i += 1
        time.sleep(0.1)
    assert seen, "the capped job never ran while the stream went on"
    assert seen[0] - first <= 1.6, seen[0] - first


@pytest.mark.slow
def test_a_limit_changed_at_run_time_applies_at_the_next_claim(dsn, conn, spawn_worker):
    conn.execute("select pgqueue.set_queue_limits('limited', concurrency => 1)")
    spawn_worker(APP, "-c", "8", "-q", "limited")
    wait_worker_registered(conn, 1)
    enqueue(conn, 16, seconds=0.5)
    wait_until(lambda: len(runs(conn)) >= 2, 10, message="jobs run one by one")
    assert conn.execute("select running from pgqueue.queue_stats "
                        "where queue = 'limited'").fetchone()[0] == 1
    (asked,) = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    r = cli(dsn, "queues", "set", "limited", "--concurrency", "4")
    assert r.returncode == 0, r.stderr
    assert "concurrency=4" in r.stdout
    (changed,) = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    wait_until(lambda: done(conn) == 16, 15, message="16 jobs done")
    rows = runs(conn)
    top, _ = overlap([(s, e) for _, _, s, e in rows])
    assert top == 4
    four_at = min(s for i, (_, _, s, _) in enumerate(rows)
                  if overlap([(a, b) for _, _, a, b in rows if a <= s])[0] == 4)
    assert four_at - changed < 1.0, four_at - changed
    before = [(s, e) for _, _, s, e in rows if s < asked]
    assert overlap(before)[0] == 1


def test_declarations_apply_at_worker_start_and_an_operator_wins(dsn, conn, start_worker):
    from tests.apps.flow import app as flow_app
    flow_app._dsn = dsn
    flow_app._conninfo = None
    try:
        start_worker(flow_app, queues=["declared"]).stop()
        row = conn.execute("select concurrency, rate_limit, rate_period, limits_set_by "
                           "from pgqueue.queues where name = 'declared'").fetchone()
        assert row[:2] == (2, 50) and row[2].total_seconds() == 1 and row[3] == "app"
        r = cli(dsn, "queues", "set", "declared", "--concurrency", "5", "--rate", "none",
                "--partition-rate", "3/2s")
        assert r.returncode == 0, r.stderr
        start_worker(flow_app, queues=["declared"]).stop()
        row = conn.execute("select concurrency, rate_limit, partition_rate_limit, "
                           "extract(epoch from partition_rate_period), limits_set_by "
                           "from pgqueue.queues where name = 'declared'").fetchone()
        assert row == (5, None, 3, 2, "operator")
        r = cli(dsn, "queues", "set", "declared", "--reset")
        assert r.returncode == 0, r.stderr
        assert "declaration, if any, applies again from the next worker start" in r.stdout
        start_worker(flow_app, queues=["declared"]).stop()
        assert conn.execute("select concurrency, limits_set_by from pgqueue.queues "
                            "where name = 'declared'").fetchone() == (2, "app")
    finally:
        flow_app.close()
        flow_app._dsn = None


def test_a_setting_for_a_queue_nothing_knows_warns_of_a_misspelt_name(dsn, conn):
    enqueue(conn, 1)          # a job waits in 'limited'
    r = cli(dsn, "queues", "set", "limted", "--concurrency", "2")
    assert r.returncode == 0 and "concurrency=2" in r.stdout, r.stderr
    assert "no job waits in queue 'limted'" in r.stderr and "check the spelling" in r.stderr
    r = cli(dsn, "queues", "pause", "limted2")
    assert r.returncode == 0 and "check the spelling" in r.stderr, r.stderr
    for args in (("set", "limited", "--concurrency", "2"), ("pause", "limited"),
                 ("set", "limted", "--concurrency", "3")):    # known now: it has a row
        r = cli(dsn, "queues", *args)
        assert r.returncode == 0 and r.stderr == "", (args, r.stderr)
    assert conn.execute("select name, concurrency from pgqueue.queues where name like 'limt%' "
                        "or name = 'limited' order by name").fetchall() == [
        ("limited", 2), ("limted", 3), ("limted2", None)]


def test_queue_limit_errors_are_clear(app, conn):
    with pytest.raises(pgqueue.ConfigurationError):
        app.queue("x", rate_limit=(0, 1.0))
    with pytest.raises(pgqueue.ConfigurationError):
        app.queue("x", concurrency=0)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select pgqueue.set_queue_limits('x', rate_limit => 3)")
    assert cli(conn.info.dsn, "queues", "set", "x", "--rate", "3 per s").returncode != 0
    # A period the claim's window cannot be subtracted from now() with ("timestamp out
    # of range" stopped every claim of a worker serving the queue, its other queues
    # included): refused at the door, and by the table itself.
    for column in ("rate", "partition_rate"):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="at most 366 days"):
            conn.execute(f"select pgqueue.set_queue_limits('x', {column}_limit => 1, "
                         f"{column}_period => interval '100000 years')")
        with pytest.raises(psycopg.errors.CheckViolation, match="366_days"):
            conn.execute(f"insert into pgqueue.queues (name, {column}_limit, {column}_period) "
                         "values ('y', 1, interval '367 days')")
    assert conn.execute("select pgqueue.set_queue_limits('x', rate_limit => 1, "
                        "rate_period => interval '366 days')").fetchone() == (True,)


def test_keys_with_only_later_jobs_do_not_delay_a_due_key(app, conn, start_worker):
    # Fair sharing visits a bounded number of keys per claim. Keys whose jobs are all
    # in the future (tenants in backoff) took those visits: with 3,000 of them a due
    # job of another key waited about 6 s, with 10,000 about 37 s.
    @app.task(name="flow.tenant")
    def tenant() -> int:
        return 1

    conn.execute("select pgqueue.set_queue_limits('default', partition_concurrency => 1)")
    conn.execute("insert into pgqueue.jobs (task, partition_key, state, run_at) "
                 "select 'flow.tenant', 'k' || lpad(i::text, 5, '0'), 'scheduled', "
                 "now() + interval '1 hour' from generate_series(1, 10000) i")
    start_worker(app, concurrency=2)
    (job_id,) = conn.execute("select pgqueue.enqueue('flow.tenant', partition_key => 'zzz')"
                             ).fetchone()
    wait_until(lambda: conn.execute("select state from pgqueue.jobs where id = %s",
                                    (job_id,)).fetchone()[0] == "completed", 10,
               message="the due job of key zzz")


def test_partition_key_is_stored_and_shown(app, conn, dsn):
    @app.task(name="flow.keyed")
    def keyed(n):
        return n

    job = keyed.using(partition_key="tenant-7").enqueue(1)
    assert keyed.using(partition_key="tenant-8").enqueue_many([[1], [2]]) == 2
    assert keyed.using(partition_key="tenant-9", delay=5).enqueue_many([[3]]) == 1
    r = cli(dsn, "enqueue", "flow.keyed", "--args", "[4]", "--partition-key", "tenant-10")
    assert r.returncode == 0, r.stderr
    keys = [k for (k,) in conn.execute(
        "select partition_key from pgqueue.jobs order by id")]
    assert keys == ["tenant-7", "tenant-8", "tenant-8", "tenant-9", "tenant-10"]
    shown = cli(dsn, "jobs", "show", str(job.id))
    assert "tenant-7" in shown.stdout
    with pytest.raises(pgqueue.EnqueueError):
        keyed.using(partition_key="")
    with pytest.raises(pgqueue.EnqueueError):
        keyed.using(debounce=1, unique_key="u")


def test_visibility_held_back_gauge_and_check(app, conn, dsn):
    conn.execute("select pgqueue.set_queue_limits('rl', rate_limit => 2, "
                 "rate_period => interval '1 hour')")
    conn.execute("select pgqueue.set_queue_limits('cc', concurrency => 1)")
    # two starts used the hour's window; three jobs wait, one of them an hour already
    conn.execute("insert into pgqueue.job_starts (queue, started_at) "
                 "select 'rl', now() from generate_series(1, 2)")
    conn.execute("insert into pgqueue.jobs (task, queue, run_at) "
                 "select 't', 'rl', now() - interval '1 hour' from generate_series(1, 3)")
    conn.execute("insert into pgqueue.jobs (task, queue) select 't', 'cc' "
                 "from generate_series(1, 4)")
    stats = dict(conn.execute("select queue, held_back from pgqueue.queue_stats "
                              "where queue in ('rl', 'cc')").fetchall())
    assert stats == {"rl": 3, "cc": 3}
    assert "rate=2/1h" in cli(dsn, "queues").stdout
    listed = {r["queue"]: r for r in json.loads(cli(dsn, "queues", "--json").stdout)}
    assert listed["cc"]["concurrency"] == 1 and listed["cc"]["held_back"] == 3
    assert listed["rl"]["rate_limit"] == 2 and listed["rl"]["rate_period"] == 3600
    collector = DatabaseCollector(dsn)
    assert collector.refresh()
    gauge = {s.labels["queue"]: s.value for m in collector.collect()
             if m.name == "pgqueue_queue_held_back_jobs" for s in m.samples}
    collector.close()
    assert gauge["rl"] == 3 and gauge["cc"] == 3
    chk = cli(dsn, "check", "--max-heartbeat-age", "0s", "--max-unserved-age", "0s",
              "--max-job-age", "1m", "--json")
    report = json.loads(chk.stdout)
    assert not any("queue rl" in r for r in report["reasons"]), report
    conn.execute("update pgqueue.jobs set run_at = now() - interval '1 hour' where queue = 'cc'")
    chk = cli(dsn, "check", "--max-heartbeat-age", "0s", "--max-unserved-age", "0s",
              "--max-job-age", "1m", "--json")
    assert any("queue cc" in r for r in json.loads(chk.stdout)["reasons"])

