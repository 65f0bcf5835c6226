"""Drive Celery with Redis (broker and result backend) for the peer comparison, in its
own virtual environment. Prints one JSON line: {"jobs_per_s": ...}, or for latency
{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}.

The broker uses Redis database 14 and results database 15 of --redis; both are
flushed before and after each run."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import redis
from celery import Celery, group
from celery.exceptions import TimeoutError as ResultTimeout
from _common import percentiles, stop

BULK = 1000
HERE = os.path.dirname(os.path.abspath(__file__))
REDIS = os.environ.get("PEERS_REDIS", "redis://127.0.0.1:6379")
app = Celery("drive_celery", broker=f"{REDIS}/14", backend=f"{REDIS}/15")
app.conf.update(task_default_queue="peers", worker_prefetch_multiplier=10,
                broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop(i: int = 0) -> None:
    return None


@app.task(name="ping")
def ping() -> float:
    return time.monotonic()       # CLOCK_MONOTONIC: the same clock in every process


def flush() -> None:
    for db in (14, 15):
        redis.Redis.from_url(f"{REDIS}/{db}").flushdb()


def load(n: int) -> None:
    for start in range(0, n, BULK):
        group(noop.s(i) for i in range(start, min(n, start + BULK))).apply_async()


def start_worker(concurrency: int, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "drive_celery", "worker", "-Q", "peers",
         "-P", "threads", "-c", str(concurrency), "-n", f"{name}@%h", "--without-mingle",
         "--without-gossip", "--without-heartbeat", "-l", "WARNING"],
        cwd=HERE, env={**os.environ, "PYTHONPATH": HERE}, stdout=subprocess.DEVNULL)



def drain(n: int, concurrency: int, processes: int) -> dict:
    """N jobs loaded, then `processes` worker processes; timed from starting them until
    the result backend holds N results (start-up included), then they are stopped."""
    load(n)
    results = redis.Redis.from_url(f"{REDIS}/15")
    t0 = time.perf_counter()
    workers = [start_worker(concurrency, f"peers{i}") for i in range(1, processes + 1)]
    deadline = time.monotonic() + 600
    while (done := results.dbsize()) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    rate = n / (time.perf_counter() - t0)
    stop(workers)
    return {"jobs_per_s": round(rate), "ok": done >= n}


def latency(samples: int, concurrency: int) -> dict:
    """Commit -> handler start with an idle worker process: one task at a time; the task
    returns time.monotonic() taken at its start, the driver takes it right after delay()
    returns. 20 warm-up samples, then `samples`."""
    w = start_worker(concurrency, "peers-latency")
    lat: list[float] = []
    lost = 0
    try:
        ping.delay().get(timeout=60)         # the worker is up
        time.sleep(0.5)
        for seq in range(samples + 20):
            r = ping.delay()
            t_sent = time.monotonic()
            try:
                started = r.get(timeout=5)
            except ResultTimeout:
                lost += 1
                continue
            if seq >= 20:
                lat.append((started - t_sent) * 1000.0)
            time.sleep(0.002)
    finally:
        stop([w])
    return {**percentiles(lat), "ok": lost == 0}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain", "drain2", "latency"],
                   required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--dsn", default="")           # unused: Celery runs on Redis
    a = p.parse_args()
    flush()
    if a.scenario == "enqueue":
        for _ in range(50):
            noop.delay()
        t0 = time.perf_counter()
        for _ in range(a.jobs):
            noop.delay()
        out = {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
    elif a.scenario == "bulk":
        t0 = time.perf_counter()
        load(a.jobs)
        out = {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
    elif a.scenario in ("drain", "drain2"):
        out = drain(a.jobs, a.concurrency, 1 if a.scenario == "drain" else 2)
    else:
        out = latency(a.samples, a.concurrency)
    flush()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
