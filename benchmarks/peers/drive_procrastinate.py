"""Drive procrastinate (psycopg 3) for the peer comparison, in its own virtual
environment. Prints one JSON line: {"jobs_per_s": ...}, or for latency
{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}.

drain2 starts this script twice more with --drain-worker: each child runs
run_worker_async(wait=False) and prints the time.monotonic() at which it returned."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import procrastinate
import psycopg
from _common import percentiles

BULK = 1000
#: handler start times of the latency probe, by sequence number (same process), and
#: the event its handler sets
STARTED: dict[int, float] = {}
PINGED = asyncio.Event()


def make_app(connector: object) -> procrastinate.App:
    app = procrastinate.App(connector=connector)

    @app.task(name="noop", queue="peers")
    async def noop(i: int = 0) -> None:
        return None

    @app.task(name="ping", queue="peers")
    async def ping(seq: int) -> None:
        STARTED[seq] = time.perf_counter()
        PINGED.set()

    return app


def clear(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("delete from procrastinate_events")
        c.execute("delete from procrastinate_jobs")


def load(task: procrastinate.tasks.Task, n: int) -> None:
    for start in range(0, n, BULK):
        task.batch_defer(*({"i": i} for i in range(start, min(n, start + BULK))))


def vacuum(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("vacuum analyze procrastinate_jobs")


async def drain_worker(a: argparse.Namespace) -> float:
    """One drain2 worker process: exits once it has caught up with the queue."""
    wapp = make_app(procrastinate.PsycopgConnector(conninfo=a.dsn))
    async with wapp.open_async():
        await wapp.run_worker_async(queues=["peers"], concurrency=a.concurrency,
                                    wait=False, install_signal_handlers=False)
        return time.monotonic()


def drain2(a: argparse.Namespace) -> dict:
    """N jobs loaded (by the caller), then two worker processes; timed from starting them
    until the later one's worker returned (start-up included, interpreter exit not)."""
    vacuum(a.dsn)
    cmd = [sys.executable, os.path.abspath(__file__), "--dsn", a.dsn, "--scenario", "drain2",
           "--concurrency", str(a.concurrency), "--drain-worker"]
    t0 = time.monotonic()
    children = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    ends = []
    for c in children:
        out, _ = c.communicate(timeout=900)
        if c.returncode == 0:
            ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    with psycopg.connect(a.dsn, autocommit=True) as c:
        done = c.execute("select count(*) from procrastinate_jobs"
                         " where status = 'succeeded'").fetchone()[0]
    return {"jobs_per_s": round(a.jobs / (max(ends) - t0)) if ends else 0,
            "ok": len(ends) == 2 and done == a.jobs}


async def latency(a: argparse.Namespace) -> dict:
    """Commit -> handler start with an idle worker running as a task of this event loop;
    jobs are deferred through a second app (its own connection pool), one at a time."""
    wapp = make_app(procrastinate.PsycopgConnector(conninfo=a.dsn))
    dapp = make_app(procrastinate.PsycopgConnector(conninfo=a.dsn))
    ping = dapp.tasks["ping"]
    lat: list[float] = []
    lost = 0
    async with wapp.open_async(), dapp.open_async():
        runner = asyncio.create_task(wapp.run_worker_async(
            queues=["peers"], concurrency=a.concurrency, install_signal_handlers=False))
        poll = await psycopg.AsyncConnection.connect(a.dsn, autocommit=True)
        try:
            await asyncio.sleep(0.5)
            for seq in range(a.samples + 20):
                PINGED.clear()
                job_id = await ping.defer_async(seq=seq)      # committed
                t_commit = time.perf_counter()
                try:
                    await asyncio.wait_for(PINGED.wait(), 30.0 if seq == 0 else 5.0)
                except asyncio.TimeoutError:
                    lost += 1
                    continue
                if seq >= 20:
                    lat.append((STARTED[seq] - t_commit) * 1000.0)
                # let the completion be recorded so the next job finds the worker idle
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    cur = await poll.execute(
                        "select status from procrastinate_jobs where id = %s", (job_id,))
                    if (await cur.fetchone())[0] == "succeeded":
                        break
                    await asyncio.sleep(0.002)
                await asyncio.sleep(0.002)
        finally:
            await poll.close()
            runner.cancel()                 # the worker stops gracefully
            try:
                await runner
            except asyncio.CancelledError:
                pass
    return {**percentiles(lat), "ok": lost == 0}



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain", "drain2", "latency"],
                   required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--drain-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.drain_worker:
        print(json.dumps({"end": asyncio.run(drain_worker(a))}))
        return
    with psycopg.connect(a.dsn, autocommit=True) as c:
        installed = c.execute("select to_regclass('procrastinate_jobs')").fetchone()[0]
    app = make_app(procrastinate.SyncPsycopgConnector(conninfo=a.dsn))
    task = app.tasks["noop"]
    with app.open():
        if installed is None:
            app.schema_manager.apply_schema()
        clear(a.dsn)
        if a.scenario == "enqueue":
            for _ in range(50):
                task.defer()
            t0 = time.perf_counter()
            for _ in range(a.jobs):
                task.defer()                      # autocommit: one job per transaction
            out = {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
        elif a.scenario == "bulk":
            t0 = time.perf_counter()
            load(task, a.jobs)
            out = {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
        elif a.scenario in ("drain", "drain2"):
            load(task, a.jobs)
    if a.scenario == "drain":
        vacuum(a.dsn)
        wapp = make_app(procrastinate.PsycopgConnector(conninfo=a.dsn))

        async def drain() -> float:
            async with wapp.open_async():
                t0 = time.perf_counter()
                await wapp.run_worker_async(queues=["peers"], concurrency=a.concurrency,
                                            wait=False, install_signal_handlers=False)
                return a.jobs / (time.perf_counter() - t0)

        out = {"jobs_per_s": round(asyncio.run(drain()))}
    elif a.scenario == "drain2":
        out = drain2(a)
    elif a.scenario == "latency":
        out = asyncio.run(latency(a))
    clear(a.dsn)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
