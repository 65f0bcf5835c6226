"""Drive pgqueue for the peer comparison (run with the project's interpreter and the
repository on PYTHONPATH). Prints one JSON line: {"jobs_per_s": ...}."""
from __future__ import annotations

import argparse
import json
import time

from pgqueue.bench import Bench
from pgqueue.migrate import apply

BULK = 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain"], required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    a = p.parse_args()
    import psycopg
    with psycopg.connect(a.dsn, autocommit=True) as c:
        apply(c)
    b = Bench(a.dsn, queue="peers", concurrency=a.concurrency)
    try:
        b.cleanup()
        if a.scenario == "enqueue":
            rate = b.enqueue(a.jobs)["jobs_per_s"]
        elif a.scenario == "bulk":
            b.noop.enqueue_many([(0,)] * 10)
            b.cleanup()
            t0 = time.perf_counter()
            for start in range(0, a.jobs, BULK):
                b.noop.enqueue_many([(i,)] for i in range(start, min(a.jobs, start + BULK)))
            rate = a.jobs / (time.perf_counter() - t0)
            b.cleanup()
        else:
            rate = b.drain(a.jobs)["jobs_per_s"]
    finally:
        b.close()
    print(json.dumps({"jobs_per_s": round(rate)}))


if __name__ == "__main__":
    main()
