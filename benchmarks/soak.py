#!/usr/bin/env python3
"""Soak benchmark (case B23): churn plus a long open transaction, for minutes.

A producer enqueues no-op jobs at a fixed rate (default 500/s) while ``--workers``
``pgqueue worker`` processes run them, and another session holds a REPEATABLE READ
transaction open on an unrelated table for the whole load phase, so vacuum cannot remove
the dead rows the churn leaves behind. Every 10 s the script prints:

- claim latency: p95 of the workers' own claim round trips (their
  ``pgqueue_claim_duration_seconds`` histograms, scraped from ``--metrics-port``; p95
  interpolated within a bucket); p50/p95 of ``started_at - run_at`` of the jobs claimed
  in the window (database clock: how long a due job waited to be claimed); and p95 of a
  probe that times a claim *without* positions (reading the queue from the start of
  the claim index, as every claim did before schema version 4) every second, which
  shows what the dead index entries cost;
- backlog (due, unclaimed jobs), throughput, the size of ``pgqueue.jobs`` and of each of
  its indexes, live and dead tuples.

Then it ends the long transaction and keeps the load going for ``--after`` seconds, so
autovacuum and the workers' retention pruning (``--retention``) can catch up, and
measures again. Worker backends idle in a transaction for more than 1 s are counted
(should be 0), and the workers' long-transaction warnings too.

    .venv/bin/python benchmarks/soak.py                  # throwaway embedded PostgreSQL
    .venv/bin/python benchmarks/soak.py --dsn "host=... dbname=scratch" --duration 300

Not a unit test: no pass/fail except the printed checks of case B23 (backlog < 1,000,
p95 at the end <= 5x the start and < 50 ms, no worker idle in transaction > 1 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pgqueue  # noqa: E402
from pgqueue import migrate  # noqa: E402

APP_MODULE = '''
import pgqueue
app = pgqueue.App(pool_max_size=2)

@app.task(name="soak.noop")
def noop(n=0):
    return None
'''


def p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def claim_buckets(ports: list[int]) -> dict[float, float]:
    """Cumulative ``pgqueue_claim_duration_seconds`` bucket counts, summed over the
    workers' /metrics."""
    out: dict[float, float] = {}
    for port in ports:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5
                                          ).read().decode()
        except OSError:
            continue
        for fam in text_string_to_metric_families(text):
            if fam.name != "pgqueue_claim_duration_seconds":
                continue
            for sample in fam.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    out[le] = out.get(le, 0.0) + sample.value
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Quantile ``q`` in ms of the observations between two scrapes, interpolated
    linearly within its bucket (as Prometheus's histogram_quantile does)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            if b == float("inf"):
                return prev_bound * 1000
            frac = (rank - prev_count) / (c - prev_count) if c > prev_count else 1.0
            return (prev_bound + (b - prev_bound) * frac) * 1000
        prev_bound, prev_count = b, c
    return float("nan")


class Probe(threading.Thread):
    """Times one position-free ``pgqueue.claim`` of one job every second (client side,
    ms): the cost of reading the queue from the start of the claim index."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.samples: list[tuple[float, float]] = []   # (monotonic, ms)
        self.stop = threading.Event()
        self.worker_id = uuid.uuid4()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("select pgqueue.heartbeat(%s, 'soak-probe', 'probe', 0, null, "
                      "array['soak.noop'], 1)", (self.worker_id,)).fetchall()
            last_hb = time.monotonic()
            while not self.stop.wait(1.0):
                t = time.perf_counter()
                got = c.execute("select id, attempt from pgqueue.claim(%s, array['default'], "
                                "array['soak.noop'], 1)", (self.worker_id,),
                                prepare=True).fetchall()
                ms = (time.perf_counter() - t) * 1000
                self.samples.append((time.monotonic(), ms))
                if got:
                    c.execute("select pgqueue.complete(%s, %s, %s, array['null'::jsonb])",
                              (self.worker_id, [got[0][0]], [got[0][1]]))
                if time.monotonic() - last_hb > 1:
                    c.execute("select pgqueue.heartbeat(%s, 'soak-probe', 'probe', 0, null, "
                              "array['soak.noop'], 1)", (self.worker_id,)).fetchall()
                    last_hb = time.monotonic()

    def p95_since(self, since: float) -> float:
        return p([ms for t, ms in self.samples if t >= since], 0.95)


class Producer:
    """Enqueues one job per transaction at ``rate`` per second, from ``threads`` threads
    (one commit per job: a single thread cannot keep up on a busy machine)."""

    def __init__(self, dsn: str, rate: float, threads: int = 4):
        self.app = pgqueue.App(dsn, pool_max_size=threads)
        self.task = self.app.task(name="soak.noop")(lambda n=0: None)
        self.rate = rate
        self.sent = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._start = 0.0
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(threads)]

    def start(self) -> None:
        self._start = time.monotonic()
        for t in self._threads:
            t.start()

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)
        self.app.close()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                due = int((time.monotonic() - self._start) * self.rate)
                n = self.sent
                if n < due:
                    self.sent += 1
            if n < due:
                self.task.enqueue(n)
            else:
                time.sleep(0.002)


def sizes(c: psycopg.Connection) -> dict:
    out = {"table_bytes": c.execute("select pg_relation_size('pgqueue.jobs')").fetchone()[0]}
    for name, size in c.execute(
            "select indexrelid::regclass::text, pg_relation_size(indexrelid) "
            "from pg_index where indrelid = 'pgqueue.jobs'::regclass order by 1"):
        out[name] = size
    live, dead, vacuums = c.execute(
        "select n_live_tup, n_dead_tup, autovacuum_count + vacuum_count "
        "from pg_stat_user_tables where relid = 'pgqueue.jobs'::regclass").fetchone()
    out.update(live_tuples=live, dead_tuples=dead, vacuums=vacuums,
               rows=c.execute("select count(*) from pgqueue.jobs").fetchone()[0])
    return out


KEYS = ("wait_p95_ms", "claim_p95_ms", "no_position_claim_p95_ms", "backlog")


def mb(n: int) -> str:
    return f"{n / 1048576:.1f} MB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default=None, help="a scratch database (default: a throwaway "
                                                "embedded PostgreSQL)")
    ap.add_argument("--rate", type=float, default=500.0, help="jobs enqueued per second")
    ap.add_argument("--duration", type=float, default=180.0,
                    help="seconds of load with the long transaction open")
    ap.add_argument("--after", type=float, default=40.0,
                    help="seconds of load after the long transaction ends")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--retention", default="60s", help="workers' --retention")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    server = None
    tmp = Path(tempfile.mkdtemp(prefix="pgqueue-soak-"))
    if args.dsn:
        dsn = args.dsn
    else:
        from pgqueue.embedded import EmbeddedServer
        # synchronous_commit off: the figures are about bloat and claiming, not the disk
        server = EmbeddedServer(tmp / "pg", settings={"synchronous_commit": "off"})
        dsn = server.start()
    procs: list[subprocess.Popen] = []
    report: dict = {"rate": args.rate, "duration": args.duration, "workers": args.workers,
                    "concurrency": args.concurrency, "windows": []}
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            migrate.apply(c)
            c.execute("drop table if exists public.soak_other")
            c.execute("create table public.soak_other as select g as id from "
                      "generate_series(1, 1000) g")
            c.execute("delete from pgqueue.jobs where task = 'soak.noop'")
        (tmp / "soak_app.py").write_text(APP_MODULE)
        env = dict(os.environ, PGQUEUE_DSN=dsn,
                   PYTHONPATH=f"{tmp}{os.pathsep}{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        logs = []
        ports = [free_port() for _ in range(args.workers)]
        for i in range(args.workers):
            log = open(tmp / f"worker-{i}.log", "w")
            logs.append(tmp / f"worker-{i}.log")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pgqueue.cli", "--log-level", "WARNING", "worker",
                 "--app", "soak_app", "-c", str(args.concurrency), "--retention",
                 args.retention, "--maintenance-interval", "10", "--xmin-warn-after", "60",
                 "--metrics-port", str(ports[i]), "--metrics-interval", "5"],
                cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=log))
        mon = psycopg.connect(dsn, autocommit=True)
        deadline = time.monotonic() + 30
        while mon.execute("select count(*) from pgqueue.workers where name <> 'soak-probe'"
                          ).fetchone()[0] < args.workers:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not start")
            time.sleep(0.1)

        holder = psycopg.connect(dsn)
        holder.execute("begin isolation level repeatable read")
        holder.execute("select count(*) from public.soak_other").fetchone()
        holder_open = True
        start_sizes = sizes(mon)
        producer, probe = Producer(dsn, args.rate), Probe(dsn)
        producer.start()
        probe.start()
        t0 = time.monotonic()
        buckets = claim_buckets(ports)
        idle_tx_max = 0
        print(f"soak: {args.rate:.0f} jobs/s, {args.workers} workers x {args.concurrency}, "
              f"REPEATABLE READ transaction open for {args.duration:.0f} s, then "
              f"{args.after:.0f} s without it; retention {args.retention}")
        print(f"{'t':>5} {'phase':>6} {'sent':>7} {'done/s':>7} {'backlog':>7} "
              f"{'wait p50':>9} {'wait p95':>9} {'claim p95':>9} {'no-pos p95':>10} "
              f"{'table':>9} {'claim idx':>9} {'dead':>8} {'rows':>8}")
        end = args.duration + args.after
        window = 10.0
        next_at = t0 + window
        while time.monotonic() - t0 < end:
            time.sleep(max(0.0, min(1.0, next_at - time.monotonic())))
            idle_tx_max = max(idle_tx_max, mon.execute(
                "select count(*) from pg_stat_activity where application_name like "
                "'pgqueue-worker:%' and state like 'idle in transaction%' "
                "and now() - state_change > interval '1 second'").fetchone()[0])
            if holder_open and time.monotonic() - t0 >= args.duration:
                holder.rollback()
                holder.close()
                holder_open = False
            if time.monotonic() < next_at:
                continue
            elapsed = next_at - t0
            since = next_at - window
            next_at += window
            waits = [float(r[0]) for r in mon.execute(
                "select extract(epoch from started_at - run_at) * 1000 from pgqueue.jobs "
                "where started_at > now() - make_interval(secs => %s) "
                "and task = 'soak.noop'", (window,))]
            backlog = mon.execute(
                "select count(*) from pgqueue.jobs where state = 'available' "
                "and run_at <= now()").fetchone()[0]
            s = sizes(mon)
            now_buckets = claim_buckets(ports)
            worker_p95 = bucket_quantile(buckets, now_buckets, 0.95)
            claims = (now_buckets.get(float("inf"), 0.0) - buckets.get(float("inf"), 0.0))
            buckets = now_buckets
            claim_idx = s.get("pgqueue.jobs_claim_idx", 0)
            row = {"t": round(elapsed), "phase": "held" if elapsed <= args.duration else "after",
                   "sent": producer.sent, "backlog": backlog,
                   "wait_p50_ms": p(waits, 0.5), "wait_p95_ms": p(waits, 0.95),
                   "claim_p95_ms": worker_p95, "worker_claims": claims,
                   "no_position_claim_p95_ms": probe.p95_since(since), "claimed": len(waits),
                   **s}
            report["windows"].append(row)
            print(f"{row['t']:>5} {row['phase']:>6} {producer.sent:>7} "
                  f"{len(waits) / window:>7.0f} {backlog:>7} {row['wait_p50_ms']:>7.1f}ms "
                  f"{row['wait_p95_ms']:>7.1f}ms {row['claim_p95_ms']:>7.2f}ms "
                  f"{row['no_position_claim_p95_ms']:>8.2f}ms {mb(s['table_bytes']):>9} {mb(claim_idx):>9} {s['dead_tuples']:>8} "
                  f"{s['rows']:>8}")
        producer.stop.set()
        producer.join(10)
        probe.stop.set()
        probe.join(10)
        end_sizes = sizes(mon)
        warnings = sum(Path(f).read_text().count("holds back vacuum") for f in logs)
        held = [w for w in report["windows"] if w["phase"] == "held"]
        after = [w for w in report["windows"] if w["phase"] == "after"]
        first, last = held[0], held[-1]
        summary = {
            "start": {k: first[k] for k in KEYS},
            "end_of_long_transaction": {k: last[k] for k in KEYS},
            "after": ({k: after[-1][k] for k in KEYS}
                      if after else None),
            "sizes_start": start_sizes, "sizes_end": end_sizes,
            "worker_idle_in_transaction_over_1s": idle_tx_max,
            "long_transaction_warnings": warnings,
            "enqueued": producer.sent,
        }
        report["summary"] = summary
        print("\nsummary:")
        print(json.dumps(summary, indent=2, default=str))
        checks = {
            "backlog < 1000 at the end of the long transaction": last["backlog"] < 1000,
            "worker claim p95 at the end <= 5x the start and < 50 ms":
                last["claim_p95_ms"] <= 5 * max(first["claim_p95_ms"], 0.5)
                and last["claim_p95_ms"] < 50,
            "no worker idle in transaction > 1 s": idle_tx_max == 0,
            "long-transaction warning emitted": warnings > 0 or args.duration < 70,
        }
        for name, ok in checks.items():
            print(f"{'ok  ' if ok else 'MISS'} {name}")
        report["checks"] = checks
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))
        return 0
    finally:
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(Exception):
                proc.wait(30)
        if server is not None:
            server.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
