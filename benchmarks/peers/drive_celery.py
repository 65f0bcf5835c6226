"""Drive Celery with Redis (broker and result backend) for the peer comparison, in its
own virtual environment. Prints one JSON line: {"jobs_per_s": ...}.

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

BULK = 1000
REDIS = os.environ.get("PEERS_REDIS", "redis://127.0.0.1:6379")
app = Celery("drive_celery", broker=f"{REDIS}/14", backend=f"{REDIS}/15")
app.conf.update(task_default_queue="peers", worker_prefetch_multiplier=10,
                broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop(i: int = 0) -> None:
    return None


def flush() -> None:
    for db in (14, 15):
        redis.Redis.from_url(f"{REDIS}/{db}").flushdb()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain"], required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--dsn", default="")           # unused: Celery runs on Redis
    a = p.parse_args()
    flush()
    if a.scenario == "enqueue":
        for _ in range(50):
            noop.delay()
        t0 = time.perf_counter()
        for _ in range(a.jobs):
            noop.delay()
        rate = a.jobs / (time.perf_counter() - t0)
    elif a.scenario == "bulk":
        t0 = time.perf_counter()
        for start in range(0, a.jobs, BULK):
            group(noop.s(i) for i in range(start, min(a.jobs, start + BULK))).apply_async()
        rate = a.jobs / (time.perf_counter() - t0)
    else:
        for start in range(0, a.jobs, BULK):
            group(noop.s(i) for i in range(start, min(a.jobs, start + BULK))).apply_async()
        results = redis.Redis.from_url(f"{REDIS}/15")
        here = os.path.dirname(os.path.abspath(__file__))
        t0 = time.perf_counter()
        w = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "drive_celery", "worker", "-Q", "peers",
             "-P", "threads", "-c", str(a.concurrency), "--without-mingle",
             "--without-gossip", "--without-heartbeat", "-l", "WARNING"],
            cwd=here, env={**os.environ, "PYTHONPATH": here})
        deadline = time.monotonic() + 600
        while results.dbsize() < a.jobs and time.monotonic() < deadline:
            time.sleep(0.005)
        rate = a.jobs / (time.perf_counter() - t0)
        w.terminate()
        w.wait(30)
    flush()
    print(json.dumps({"jobs_per_s": round(rate)}))


if __name__ == "__main__":
    main()
