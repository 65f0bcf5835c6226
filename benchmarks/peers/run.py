"""Peer comparison: pgqueue against pgqueuer, procrastinate and Celery + Redis.

Installs each peer into its own virtual environment (pip, from the package index)
under --venvs (default: a directory in the system's temp dir, kept for the next run),
creates one scratch database per PostgreSQL peer, then runs every scenario against
every system in turn, round after round (the order rotates each round), and prints the
median of each (jobs/s; commit -> handler start p50 and p99 in ms for latency) and how
pgqueue compares (pgqueue / peer for jobs/s, peer / pgqueue for ms: above 1x pgqueue
is better either way). Each run is a fresh process.

    python benchmarks/peers/run.py --rounds 3 --jobs 5000

Run it with an interpreter that can import pgqueue (the repository's virtual
environment, or PYTHONPATH=<repo>); the peers never see pgqueue's packages.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import venv
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEERS = {
    "pgqueuer": ["pgqueuer", "asyncpg", "uvloop"],
    "procrastinate": ["procrastinate"],
    "celery": ["celery[redis]"],
}
SCENARIOS = ["enqueue", "bulk", "drain", "drain2", "latency"]
#: scenarios reporting commit -> handler start percentiles (ms) instead of jobs/s, and
#: the percentiles the table shows
LATENCY = {"latency"}
PERCENTILES = ["p50_ms", "p99_ms"]


def sh(cmd: list[str], **kw: object) -> None:
    subprocess.run(cmd, check=True, **kw)


def ensure_venv(root: str, name: str) -> str:
    path = os.path.join(root, name)
    py = os.path.join(path, "bin", "python")
    marker = os.path.join(path, ".installed")
    if not os.path.exists(marker):
        venv.create(path, with_pip=True, clear=True)
        sh([py, "-m", "pip", "install", "-q", *PEERS[name]])
        with open(marker, "w") as f:
            f.write("\n".join(PEERS[name]))
    return py


def ensure_db(admin_dsn: str, name: str) -> None:
    out = subprocess.run(["psql", admin_dsn, "-Atc",
                          f"select 1 from pg_database where datname = '{name}'"],
                         check=True, capture_output=True, text=True).stdout
    if not out.strip():
        sh(["psql", admin_dsn, "-qc", f'create database "{name}"'])


def version(py: str, dist: str) -> str:
    return subprocess.run([py, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                          capture_output=True, text=True).stdout.strip() or "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venvs", default=os.path.join(tempfile.gettempdir(), "pgqueue-peers"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--user", default=os.environ.get("PGUSER", "root"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--samples", type=int, default=200,
                   help="latency samples per run (after 20 warm-up samples)")
    p.add_argument("--peers", default="pgqueuer,procrastinate,celery")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--json-out")
    a = p.parse_args()
    peers = [x for x in a.peers.split(",") if x]
    scenarios = [x for x in a.scenarios.split(",") if x]
    os.makedirs(a.venvs, exist_ok=True)
    admin = f"host={a.host} user={a.user} dbname=postgres"
    systems: dict[str, tuple[str, str, dict[str, str]]] = {
        "pgqueue": (sys.executable, os.path.join(HERE, "drive_pgqueue.py"),
                    {"PYTHONPATH": REPO}),
    }
    for name in peers:
        systems[name] = (ensure_venv(a.venvs, name), os.path.join(HERE, f"drive_{name}.py"), {})
    for name in systems:
        if name != "celery":
            ensure_db(admin, f"peers_{name}")
    versions = {n: version(py, "pgqueue-jobs" if n == "pgqueue" else n)
                for n, (py, _, _) in systems.items()}
    results: dict[str, dict[str, list]] = {s: {n: [] for n in systems} for s in scenarios}
    order = list(systems)
    for r in range(a.rounds):
        rot = order[r % len(order):] + order[:r % len(order)]
        for s in scenarios:
            for name in rot:
                py, script, env = systems[name]
                dsn = f"postgresql://{a.user}@{a.host}/peers_{name}"
                cmd = [py, script, "--dsn", dsn, "--scenario", s, "--jobs", str(a.jobs),
                       "--samples", str(a.samples)]
                # pgqueuer's knob for jobs in flight is the batch it fetches and runs
                cmd += ["--batch-size" if name == "pgqueuer" else "--concurrency",
                        str(a.concurrency)]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, **env}, timeout=900)
                try:
                    out = json.loads(proc.stdout.strip().splitlines()[-1])
                    value = ({k: out[k] for k in ("p50_ms", "p95_ms", "p99_ms")}
                             if s in LATENCY else out["jobs_per_s"])
                    if out.get("ok") is False:
                        raise ValueError("incomplete run")
                except (IndexError, ValueError, KeyError) as e:
                    print(f"round {r + 1} {s} {name}: failed ({e})\n{proc.stderr[-2000:]}",
                          file=sys.stderr)
                    continue
                results[s][name].append(value)
                shown = (f"p50 {value['p50_ms']:.2f} ms, p95 {value['p95_ms']:.2f} ms, "
                         f"p99 {value['p99_ms']:.2f} ms" if s in LATENCY
                         else f"{value:>9,.0f} jobs/s")
                print(f"round {r + 1} {s:8} {name:14} {shown}", file=sys.stderr)
    med: dict[str, dict[str, Any]] = {}
    for s, d in results.items():
        if s in LATENCY:
            med[s] = {n: ({k: statistics.median(x[k] for x in v)
                           for k in ("p50_ms", "p95_ms", "p99_ms")} if v else None)
                      for n, v in d.items()}
        else:
            med[s] = {n: (statistics.median(v) if v else None) for n, v in d.items()}
    names = list(systems)
    # one row per throughput scenario (jobs/s, higher is better, ratio pgqueue / peer)
    # and one per latency percentile (ms, lower is better, ratio peer / pgqueue)
    rows: list[tuple[str, dict[str, float | None], bool]] = []
    for s in scenarios:
        if s in LATENCY:
            for k in PERCENTILES:
                rows.append((f"{s} {k[:-3]} (ms)",
                             {n: m[k] if m else None for n, m in med[s].items()}, True))
        else:
            rows.append((f"{s} (jobs/s)", med[s], False))
    print("| scenario (median) | " + " | ".join(f"{n} {versions[n]}" for n in names)
          + " | " + " | ".join(f"pgqueue vs {n}" for n in names[1:]) + " |")
    print("|---" + "|---:" * (2 * len(names) - 1) + "|")
    for label, v, lower_better in rows:
        cells = [("–" if v[n] is None else f"{v[n]:,.2f}" if lower_better else f"{v[n]:,.0f}")
                 for n in names]
        ratios = []
        for n in names[1:]:
            mine, theirs = v["pgqueue"], v[n]
            if not mine or not theirs:
                ratios.append("–")
            else:
                ratios.append(f"{(theirs / mine if lower_better else mine / theirs):.2f}×")
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print("\n\"pgqueue vs peer\": pgqueue / peer for jobs/s (higher is better), peer / "
          "pgqueue for latency in ms (lower is better); above 1× pgqueue is better in "
          "every row.")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"jobs": a.jobs, "rounds": a.rounds, "samples": a.samples,
                       "versions": versions, "runs": results, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
