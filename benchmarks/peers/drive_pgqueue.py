"""Drive pgqueue for the peer comparison (run with the project's interpreter and the
repository on PYTHONPATH). Prints one JSON line: {"jobs_per_s": ...}, or for latency
{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}.

drain2 and latency run `pgqueue worker` processes that load this module's `app`."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import psycopg

import pgqueue
from pgqueue import App
from pgqueue.bench import NOOP, Bench
from pgqueue.migrate import apply
from _common import percentiles, stop

BULK = 1000
HERE = os.path.dirname(os.path.abspath(__file__))

QUEUE = "peers"

#: the app the worker processes load (`--app drive_pgqueue:app`): the no-op task under
#: the name `Bench.load` enqueues it with, and the latency probe; the database comes from
#: the CLI's `--dsn` there and from $PGQUEUE_DSN in the driver
app = App()


@app.task(name=NOOP, queue=QUEUE, retry=False)
def noop(*args: object, **kwargs: object) -> None:
    return None


@app.task(name="peers.ping", queue=QUEUE, retry=False, max_attempts=1)
def ping() -> float:
    return time.monotonic()       # CLOCK_MONOTONIC: the same clock in every process


def worker_cmd() -> list[str]:
    """The `pgqueue` console script next to this interpreter, else the same CLI via -c."""
    script = os.path.join(os.path.dirname(sys.executable), "pgqueue")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; from pgqueue.cli import main; sys.exit(main())"]


def start_worker(a: argparse.Namespace, name: str, poll_interval: float) -> subprocess.Popen[bytes]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(pgqueue.__file__)))
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([root, HERE, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [*worker_cmd(), "--dsn", a.dsn, "--log-level", "WARNING", "worker",
         "--app", "drive_pgqueue:app", "-q", QUEUE, "-c", str(a.concurrency),
         "--poll-interval", str(poll_interval), "--name", f"pgqueue-bench:{name}"],
        cwd=HERE, env=env, stdout=subprocess.DEVNULL)



def drain2(b: Bench, a: argparse.Namespace) -> dict[str, object]:
    """N jobs loaded, then two worker processes; timed from starting them until the
    N-th job is completed (start-up included), then they are stopped."""
    b.cleanup(vacuum=False)
    b.load(a.jobs)
    with b.connect() as c:
        c.execute("vacuum (analyze) pgqueue.jobs")
    # Completions announce their ids on pgqueue_done: counting those costs the server
    # nothing, where counting completed rows every 5 ms scanned the table each time and
    # took a good part of a core from the drain on 2 cores.
    with psycopg.connect(b.dsn, autocommit=True) as listen:
        listen.execute("listen pgqueue_done")
        t0 = time.perf_counter()
        workers = [start_worker(a, f"peers-{i}", 1.0) for i in (1, 2)]
        deadline = time.monotonic() + max(120.0, a.jobs / 200.0)
        seen: set[str] = set()
        while (len(seen) < a.jobs and time.monotonic() < deadline
               and all(w.poll() is None for w in workers)):
            for n in listen.notifies(timeout=0.05):
                seen.update(n.payload.split(","))
                if len(seen) >= a.jobs:
                    break
        dt = time.perf_counter() - t0
    stop(workers)
    done = b.count("completed")
    b.cleanup()
    return {"jobs_per_s": round(a.jobs / dt), "ok": done == a.jobs}


def wait_done(listen: psycopg.Connection, job_id: int, timeout: float) -> None:
    """Block on `pgqueue_done` until `job_id` is announced (or `timeout` passes)."""
    end = time.monotonic() + timeout
    me = str(job_id)
    while (left := end - time.monotonic()) > 0:
        for n in listen.notifies(timeout=left):
            if me in n.payload.split(","):
                return
            if time.monotonic() >= end:
                return


def latency(b: Bench, a: argparse.Namespace) -> dict[str, object]:
    """Commit -> handler start with an idle worker process (poll interval 60 s, so only
    NOTIFY wakes it): one job enqueued and committed at a time; the handler returns
    time.monotonic() taken at its start, the driver takes it right after enqueue()
    returns. 20 warm-up samples, then `samples`."""
    b.cleanup()
    w = start_worker(a, "peers-latency", 60.0)
    lat: list[float] = []
    lost = 0
    try:
        with psycopg.connect(a.dsn, autocommit=True) as listen:
            listen.execute("listen pgqueue_done")
            for seq in range(-1, a.samples + 20):
                job = ping.enqueue()            # its own transaction, committed
                t_commit = time.monotonic()
                # the first job also waits for the worker to start
                wait_done(listen, job.id, 60.0 if seq < 0 else 5.0)
                job.refresh()
                if job.state != "completed":
                    lost += 1
                    continue
                if seq >= 20:
                    lat.append((job.row["result"] - t_commit) * 1000.0)
                time.sleep(0.5 if seq < 0 else 0.002)
    finally:
        stop([w])
        b.cleanup()
    return {**percentiles(lat), "ok": lost == 0}



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dsn", required=True)
    p.add_argument("--scenario", choices=["enqueue", "bulk", "drain", "drain2", "latency"],
                   required=True)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--samples", type=int, default=200)
    a = p.parse_args()
    os.environ["PGQUEUE_DSN"] = a.dsn      # for `app` (its tasks enqueue from here)
    with psycopg.connect(a.dsn, autocommit=True) as c:
        apply(c)
    b = Bench(a.dsn, queue="peers", concurrency=a.concurrency)
    out: dict[str, object]
    try:
        b.cleanup()
        if a.scenario == "enqueue":
            out = {"jobs_per_s": b.enqueue(a.jobs)["jobs_per_s"]}
        elif a.scenario == "bulk":
            b.noop.enqueue_many([(0,)] * 10)
            b.cleanup()
            t0 = time.perf_counter()
            for start in range(0, a.jobs, BULK):
                b.noop.enqueue_many((i,) for i in range(start, min(a.jobs, start + BULK)))
            out = {"jobs_per_s": round(a.jobs / (time.perf_counter() - t0))}
            b.cleanup()
        elif a.scenario == "drain":
            out = {"jobs_per_s": b.drain(a.jobs)["jobs_per_s"]}
        elif a.scenario == "drain2":
            out = drain2(b, a)
        else:
            out = latency(b, a)
    finally:
        b.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
