"""Drive pgqueuer (asyncpg) for the peer comparison, in its own virtual environment.
Prints one JSON line: {"jobs_per_s": ...}."""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
from pgqueuer import Queries, QueueManager
from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.types import QueueExecutionMode

BULK = 1000


async def run(a: argparse.Namespace) -> float:
    conn = await asyncpg.connect(a.dsn)
    q = Queries(AsyncpgDriver(conn))
    if not await q.schema_is_installed():
        await q.install()
    await conn.execute("delete from pgqueuer; delete from pgqueuer_log")
    try:
        if a.scenario == "enqueue":
            for _ in range(50):
                await q.enqueue("noop", None)
            t0 = time.perf_counter()
            for _ in range(a.jobs):
                await q.enqueue("noop", None)     # autocommit: one job per transaction
            return a.jobs / (time.perf_counter() - t0)
        if a.scenario == "bulk":
            t0 = time.perf_counter()
            for start in range(0, a.jobs, BULK):
                k = min(BULK, a.jobs - start)
                await q.enqueue(["noop"] * k, [str(i).encode() for i in range(k)], [0] * k)
            return a.jobs / (time.perf_counter() - t0)
        for start in range(0, a.jobs, BULK):
            k = min(BULK, a.jobs - start)
            await q.enqueue(["noop"] * k, [None] * k, [0] * k)
        await conn.execute("vacuum analyze pgqueuer")
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: object) -> None:
            return None

        t0 = time.perf_counter()
        await qm.run(mode=QueueExecutionMode.drain, batch_size=a.batch_size)
        return a.jobs / (time.perf_counter() - t0)
    finally:
        await conn.execute("delete from pgqueuer; delete from pgqueuer_log")
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain"], required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=10)
    a = p.parse_args()
    try:
        import uvloop
        rate = uvloop.run(run(a))
    except ImportError:
        rate = asyncio.run(run(a))
    print(json.dumps({"jobs_per_s": round(rate)}))


if __name__ == "__main__":
    main()
