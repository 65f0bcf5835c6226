#!/usr/bin/env python3
"""Dashboard page timings on a large table (issue target: every page under 200 ms with
1,000,000 finished and 100,000 waiting jobs).

Fills a scratch database (``--dsn``; it must be one you can throw away) with
``--finished`` finished jobs spread over the last 7 days (5 % discarded with an error and
a traceback, 1 % cancelled; 4 queues, 20 tasks) and ``--waiting`` unfinished ones (most
scheduled over the next day, some available, retryable and pending), a few workflows
and schedules, runs ``VACUUM ANALYZE``, then starts a real ``pgqueue dashboard`` process
and times ``--samples`` GETs of every page from the client (after 3 warm-up requests):
median, p95 and max, in milliseconds.

    .venv/bin/python benchmarks/dashboard.py --dsn "host=127.0.0.1 dbname=scratch user=postgres"
    .venv/bin/python benchmarks/dashboard.py --dsn ... --reuse     # keep the filled table

Not a test: it prints measurements, and flags pages over 200 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgqueue import migrate  # noqa: E402

TARGET_MS = 200.0

FILL = """
insert into pgqueue.jobs (queue, task, args, kwargs, state, run_at, created_at, started_at,
                          finished_at, attempt, errors, result, partition_key)
select 'q' || (i %% 4), 'app.tasks.task_' || (i %% 20), jsonb_build_array(i, 'x'),
       jsonb_build_object('n', i),
       case when i %% 100 = 0 then 'cancelled' when i %% 20 = 0 then 'discarded'
            else 'completed' end,
       t, t, t, t + interval '50 ms', 1,
       case when i %% 20 = 0 and i %% 100 <> 0 then jsonb_build_array(jsonb_build_object(
           'at', t, 'attempt', 1, 'type', 'ValueError', 'message', 'boom ' || i,
           'traceback', 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: boom'))
            else '[]' end,
       case when i %% 20 <> 0 then to_jsonb(i) end,
       case when i %% 2 = 0 then 'tenant-' || (i %% 10007) end
  from (select i, now() - interval '7 days' + (i::float8 / %(n)s) * interval '7 days' as t
          from generate_series(1, %(n)s) i) s
"""

FILL_WAITING = """
insert into pgqueue.jobs (queue, task, args, state, run_at)
select 'q' || (i %% 4), 'app.tasks.task_' || (i %% 20), jsonb_build_array(i),
       case when i %% 50 = 0 then 'available' when i %% 50 = 1 then 'retryable'
            when i %% 50 = 2 then 'pending' else 'scheduled' end,
       case when i %% 50 = 0 then now() - interval '3 seconds'
            else now() + (i::float8 / %(n)s) * interval '1 day' end
  from generate_series(1, %(n)s) i
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(dsn: str, finished: int, waiting: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate.apply(conn)
        conn.execute("truncate pgqueue.jobs, pgqueue.workflows, pgqueue.job_dependencies")
        t = time.perf_counter()
        conn.execute(FILL, {"n": finished})
        conn.execute(FILL_WAITING, {"n": waiting})
        print(f"filled {finished:,} finished + {waiting:,} waiting jobs in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
    # a few workflows (a chord of 20 and a chain of 5, 50 times) and schedules
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", WORKFLOWS, dsn], check=True, env=env)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(10):
            conn.execute("select pgqueue.add_schedule(%s, 'app.tasks.report', "
                         "cron => '*/5 * * * *')", (f"report-{i}",))
        conn.execute("update pgqueue.jobs set schedule_name = 'report-1', "
                     "schedule_slot = created_at where id % 5000 = 0 and finished_at is not null")
        conn.execute("select pgqueue.set_queue_limits('q1', concurrency => 5, rate_limit => 100, "
                     "rate_period => '1 minute', partition_concurrency => 1)")
        t = time.perf_counter()
        conn.execute("vacuum analyze pgqueue.jobs")
        print(f"vacuum analyze in {time.perf_counter() - t:.1f} s", flush=True)


WORKFLOWS = """
import sys
import pgqueue
from pgqueue import chain, chord
app = pgqueue.App(sys.argv[1])
@app.task(name="app.tasks.part")
def part(i): return i
@app.task(name="app.tasks.total")
def total(xs): return sum(xs)
for k in range(50):
    chord([part.s(i) for i in range(20)], total.s()).enqueue(name=f"chord {k}")
    chain(*[part.si(i) for i in range(5)]).enqueue(name=f"chain {k}")
for k in range(20):
    batch = app.batch(callback=total.s(), name=f"batch {k}")
    batch.add(*[part.s(i) for i in range(100)])
    if k % 2:
        batch.seal()
app.close()
"""


def pages(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        mid = conn.execute("select id from pgqueue.jobs where state = 'completed' "
                           "order by id offset 500000 limit 1").fetchone()
        discarded = conn.execute("select id from pgqueue.jobs where state = 'discarded' "
                                 "order by id desc limit 1").fetchone()[0]
        wf = conn.execute("select max(id) from pgqueue.workflows "
                          "where batch_seal_job_id is null").fetchone()[0]
        batch = conn.execute("select max(batch_id) from pgqueue.batches").fetchone()[0]
    mid_id = mid[0] if mid else 1
    return [
        ("overview", "/"),
        ("jobs, newest", "/jobs"),
        ("jobs, page deep in the table", f"/jobs?before={mid_id}"),
        ("jobs, state=discarded", "/jobs?state=discarded"),
        ("jobs, state=discarded, page 2", f"/jobs?state=discarded&before={discarded}"),
        ("jobs, queue+task", "/jobs?queue=q1&task=app.tasks.task_1"),
        ("jobs, state=retryable", "/jobs?state=retryable"),
        ("jobs, scheduled by run_at", "/jobs?state=scheduled&sort=run_at"),
        ("jobs, created last hour", "/jobs?created_from="
         + time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 3600))),
        ("jobs, workflow", f"/jobs?workflow={wf}"),
        ("job (discarded, traceback)", f"/jobs/{discarded}"),
        ("workflows", "/workflows"),
        ("workflow graph (21 steps)", f"/workflows/{wf - 1}"),
        ("schedules", "/schedules"),
        ("workers", "/workers"),
        ("batches", "/batches"),
        ("batch (100 members)", f"/batches/{batch}"),
        ("jobs, partition key", "/jobs?partition_key=tenant-17"),
        ("jobs, schedule", "/jobs?schedule=report-1"),
        ("queue limits", "/queues/limits?name=q1"),
        ("jobs, a task with no job", "/jobs?task=app.tasks.none"),
        ("bulk retry count, discarded of q1", "/jobs/bulk?action=retry&state=discarded&queue=q1"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--finished", type=int, default=1_000_000)
    ap.add_argument("--waiting", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--reuse", action="store_true", help="keep the jobs already there")
    args = ap.parse_args()
    if not args.reuse:
        fill(args.dsn, args.finished, args.waiting)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "pgqueue.cli", "--dsn", args.dsn,
                             "dashboard", "--port", str(port)], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/static/dashboard.css", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the dashboard did not start") from None
                time.sleep(0.1)
        with psycopg.connect(args.dsn) as conn:
            n = conn.execute("select count(*) filter (where finished_at is not null), "
                             "count(*) filter (where finished_at is null) "
                             "from pgqueue.jobs").fetchone()
        print(f"\npgqueue.jobs: {n[0]:,} finished, {n[1]:,} unfinished; "
              f"{args.samples} samples per page, client-side, in ms\n")
        print(f"{'page':<40} {'status':>6} {'median':>8} {'p95':>8} {'max':>8}")
        with httpx.Client(base_url=url, timeout=30) as client:
            for name, path in pages(args.dsn):
                for _ in range(3):
                    client.get(path)
                times = []
                for _ in range(args.samples):
                    t = time.perf_counter()
                    r = client.get(path)
                    times.append((time.perf_counter() - t) * 1000)
                times.sort()
                p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
                flag = "  over 200 ms" if p95 > TARGET_MS else ""
                print(f"{name:<40} {r.status_code:>6} {statistics.median(times):>8.1f} "
                      f"{p95:>8.1f} {times[-1]:>8.1f}{flag}", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
