"""CPU time per job of a draining worker, split between the worker's process and the
server backends of its connections.

With no-op tasks on a machine of few cores, the worker and the server share the CPU:
this says which side a drain spends it on, and how the split moves with the claim
batch (``--concurrency``). CPU time, unlike throughput, hardly moves with other load on
the machine.

For each concurrency: ``--jobs`` no-op jobs loaded with ``enqueue_many`` into the queue
``cpu_per_job``, ``VACUUM ANALYZE pgqueue.jobs``, then one in-process ``pgqueue.Worker``
drains them. The worker's CPU is this process's (``time.process_time()``, which also
counts the thread that waits for the drain's end, a poll every 5 ms); the server's is
the user and system time in ``/proc/PID/stat`` of every other backend of the database,
read before the worker starts and again before it stops (a backend that ends in
between is not counted: the worker's connections stay open until it stops). The server
must run on this machine.

Usage: ``python benchmarks/cpu_per_job.py DSN [--jobs 30000] [--concurrency 10 200]``.
Point it at a scratch database: it deletes the ``cpu_per_job`` queue's jobs.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import psycopg

import pgqueue
from pgqueue import migrate

QUEUE = "cpu_per_job"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0.0 once it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def backends(mon: psycopg.Connection) -> list[int]:
    return [p for (p,) in mon.execute(
        "select pid from pg_stat_activity where datname = current_database() "
        "and pid <> pg_backend_pid() and backend_type = 'client backend'")]


def run(dsn: str, jobs: int, concurrency: int) -> dict[str, float]:
    app = pgqueue.App(dsn)

    @app.task(name="cpu_per_job.noop", queue=QUEUE)
    def noop(i: int) -> None:
        return None

    with psycopg.connect(dsn, autocommit=True) as mon:
        mon.execute("delete from pgqueue.jobs where queue = %s", (QUEUE,))
        noop.enqueue_many([i] for i in range(jobs))
        mon.execute("vacuum analyze pgqueue.jobs")
        worker = pgqueue.Worker(app, queues=[QUEUE], concurrency=concurrency,
                                poll_interval=1.0, scheduler=False)
        thread = threading.Thread(target=worker.run,
                                  kwargs={"install_signal_handlers": False}, daemon=True)
        before = {p: cpu_seconds(p) for p in backends(mon)}
        cpu0, t0 = time.process_time(), time.perf_counter()
        thread.start()
        deadline = time.monotonic() + max(120.0, jobs / 200.0)
        while worker.stats["completed"] + worker.stats["failed"] < jobs:
            if time.monotonic() > deadline or not thread.is_alive():
                raise SystemExit(f"the drain did not finish: {worker.stats}")
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        worker_cpu = time.process_time() - cpu0
        server_cpu = sum(cpu_seconds(p) - before.get(p, 0.0) for p in backends(mon))
        worker.stop()
        thread.join(30)
        mon.execute("delete from pgqueue.jobs where queue = %s", (QUEUE,))
    app.close()
    return {"jobs_per_s": jobs / wall, "worker_us": worker_cpu / jobs * 1e6,
            "server_us": server_cpu / jobs * 1e6, "worker_cores": worker_cpu / wall,
            "server_cores": server_cpu / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dsn")
    ap.add_argument("--jobs", type=int, default=30000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[10, 200])
    a = ap.parse_args()
    with psycopg.connect(a.dsn, autocommit=True) as c:
        migrate.apply(c)
    print(f"{'concurrency':>11}  {'jobs/s':>8}  {'worker us/job':>13}  {'server us/job':>13}"
          f"  {'worker cores':>12}  {'server cores':>12}")
    for c in a.concurrency:
        r = run(a.dsn, a.jobs, c)
        print(f"{c:>11}  {r['jobs_per_s']:>8,.0f}  {r['worker_us']:>13.1f}  "
              f"{r['server_us']:>13.1f}  {r['worker_cores']:>12.2f}  {r['server_cores']:>12.2f}")


if __name__ == "__main__":
    main()
