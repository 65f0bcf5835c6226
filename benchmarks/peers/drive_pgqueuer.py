"""Drive pgqueuer (asyncpg) for the peer comparison, in its own virtual environment.
Prints one JSON line: {"jobs_per_s": ...}, or for latency
{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}.

drain2 starts this script twice more with --drain-worker: each child runs a
QueueManager in drain mode and prints the time.monotonic() at which it returned."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

import asyncpg
from pgqueuer import Queries, QueueManager
from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.types import QueueExecutionMode
from _common import percentiles

BULK = 1000


async def clear(conn: asyncpg.Connection) -> None:
    await conn.execute("delete from pgqueuer; delete from pgqueuer_log")


async def load(q: Queries, conn: asyncpg.Connection, n: int) -> None:
    for start in range(0, n, BULK):
        k = min(BULK, n - start)
        await q.enqueue(["noop"] * k, [None] * k, [0] * k)
    await conn.execute("vacuum analyze pgqueuer")


def noop_manager(conn: asyncpg.Connection) -> QueueManager:
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: object) -> None:
        return None

    return qm


async def drain_worker(a: argparse.Namespace) -> float:
    """One drain2 worker process: drain mode, exits when the queue is empty."""
    conn = await asyncpg.connect(a.dsn)
    try:
        await noop_manager(conn).run(mode=QueueExecutionMode.drain, batch_size=a.batch_size)
        return time.monotonic()
    finally:
        await conn.close()


async def drain2(a: argparse.Namespace, q: Queries, conn: asyncpg.Connection) -> dict:
    """N jobs loaded, then two worker processes; timed from starting them until the
    later one's QueueManager returned (start-up included, interpreter exit not)."""
    await load(q, conn, a.jobs)
    cmd = [sys.executable, os.path.abspath(__file__), "--dsn", a.dsn, "--scenario", "drain2",
           "--batch-size", str(a.batch_size), "--drain-worker"]
    t0 = time.monotonic()
    children = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    ends = []
    for c in children:
        out, _ = c.communicate(timeout=900)
        if c.returncode == 0:
            ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    left = await conn.fetchval("select count(*) from pgqueuer")
    return {"jobs_per_s": round(a.jobs / (max(ends) - t0)) if ends else 0,
            "ok": len(ends) == 2 and left == 0}


async def latency(a: argparse.Namespace, conn: asyncpg.Connection) -> dict:
    """Commit -> handler start with an idle QueueManager (continuous mode) running as a
    task of this event loop; jobs are enqueued on a second connection, one at a time."""
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    started: dict[int, float] = {}
    event = asyncio.Event()

    @qm.entrypoint("ping")
    async def ping(job: object) -> None:
        started[job.id] = time.perf_counter()       # type: ignore[attr-defined]
        event.set()

    runner = asyncio.create_task(qm.run(batch_size=a.batch_size))
    econn = await asyncpg.connect(a.dsn)
    eq = Queries(AsyncpgDriver(econn))
    lat: list[float] = []
    lost = 0
    try:
        await asyncio.sleep(0.5)
        for seq in range(a.samples + 20):
            event.clear()
            (job_id,) = await eq.enqueue("ping", None)   # autocommit: committed
            t_commit = time.perf_counter()
            try:
                await asyncio.wait_for(event.wait(), 30.0 if seq == 0 else 5.0)
            except asyncio.TimeoutError:
                lost += 1
                continue
            if seq >= 20:
                lat.append((started[job_id] - t_commit) * 1000.0)
            # let the completion be recorded (the status log is flushed in batches or
            # after a timeout) so the next job finds the manager idle
            end = time.monotonic() + 1.0
            while time.monotonic() < end and await econn.fetchval(
                    "select count(*) from pgqueuer where id = $1", job_id):
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.002)
    finally:
        qm.shutdown.set()
        await asyncio.wait_for(runner, 30)
        await econn.close()
    return {**percentiles(lat), "ok": lost == 0}



async def run(a: argparse.Namespace) -> dict:
    if a.drain_worker:
        return {"end": await drain_worker(a)}
    conn = await asyncpg.connect(a.dsn)
    q = Queries(AsyncpgDriver(conn))
    if not await q.schema_is_installed():
        await q.install()
    await clear(conn)
    try:
        if a.scenario == "enqueue":
            for _ in range(50):
                await q.enqueue("noop", None)
            t0 = time.perf_counter()
            for _ in range(a.jobs):
                await q.enqueue("noop", None)     # autocommit: one job per transaction
            return {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
        if a.scenario == "bulk":
            t0 = time.perf_counter()
            for start in range(0, a.jobs, BULK):
                k = min(BULK, a.jobs - start)
                await q.enqueue(["noop"] * k, [str(i).encode() for i in range(k)], [0] * k)
            return {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
        if a.scenario == "drain2":
            return await drain2(a, q, conn)
        if a.scenario == "latency":
            # the manager gets a connection of its own; `conn` stays for the cleanup
            mconn = await asyncpg.connect(a.dsn)
            try:
                return await latency(a, mconn)
            finally:
                if not mconn.is_closed():
                    await mconn.close()
        await load(q, conn, a.jobs)
        qm = noop_manager(conn)
        t0 = time.perf_counter()
        await qm.run(mode=QueueExecutionMode.drain, batch_size=a.batch_size)
        return {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
    finally:
        await clear(conn)
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain", "drain2", "latency"],
                   required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--drain-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    try:
        import uvloop
        out = uvloop.run(run(a))
    except ImportError:
        out = asyncio.run(run(a))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
