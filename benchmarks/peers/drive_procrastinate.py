"""Drive procrastinate (psycopg 3) for the peer comparison, in its own virtual
environment. Prints one JSON line: {"jobs_per_s": ...}."""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import procrastinate
import psycopg

BULK = 1000


def make_app(connector: object) -> procrastinate.App:
    app = procrastinate.App(connector=connector)

    @app.task(name="noop", queue="peers")
    async def noop(i: int = 0) -> None:
        return None

    return app


def clear(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("delete from procrastinate_events")
        c.execute("delete from procrastinate_jobs")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain"], required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    a = p.parse_args()
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
            rate = a.jobs / (time.perf_counter() - t0)
        elif a.scenario == "bulk":
            t0 = time.perf_counter()
            for start in range(0, a.jobs, BULK):
                task.batch_defer(*({"i": i} for i in range(start, min(a.jobs, start + BULK))))
            rate = a.jobs / (time.perf_counter() - t0)
        else:
            for start in range(0, a.jobs, BULK):
                task.batch_defer(*({"i": i} for i in range(start, min(a.jobs, start + BULK))))
    if a.scenario == "drain":
        with psycopg.connect(a.dsn, autocommit=True) as c:
            c.execute("vacuum analyze procrastinate_jobs")
        wapp = make_app(procrastinate.PsycopgConnector(conninfo=a.dsn))

        async def drain() -> float:
            async with wapp.open_async():
                t0 = time.perf_counter()
                await wapp.run_worker_async(queues=["peers"], concurrency=a.concurrency,
                                            wait=False, install_signal_handlers=False)
                return a.jobs / (time.perf_counter() - t0)

        rate = asyncio.run(drain())
    clear(a.dsn)
    print(json.dumps({"jobs_per_s": round(rate)}))


if __name__ == "__main__":
    main()
