"""Peer comparison: pgqueue against pgqueuer, procrastinate and Celery + Redis.

Installs each peer into its own virtual environment (pip, from the package index)
under --venvs (default: a directory in the system's temp dir, kept for the next run),
creates one scratch database per PostgreSQL peer, then runs every scenario against
every system in turn, round after round (the order rotates each round), and prints the
median jobs/s of each and pgqueue's ratio to it. Each run is a fresh process.

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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEERS = {
    "pgqueuer": ["pgqueuer", "asyncpg", "uvloop"],
    "procrastinate": ["procrastinate"],
    "celery": ["celery[redis]"],
}
SCENARIOS = ["enqueue", "bulk", "drain"]


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
    versions = {n: version(py, "pgqueue" if n == "pgqueue" else n)
                for n, (py, _, _) in systems.items()}
    results: dict[str, dict[str, list[float]]] = {s: {n: [] for n in systems} for s in scenarios}
    order = list(systems)
    for r in range(a.rounds):
        rot = order[r % len(order):] + order[:r % len(order)]
        for s in scenarios:
            for name in rot:
                py, script, env = systems[name]
                dsn = f"postgresql://{a.user}@{a.host}/peers_{name}"
                cmd = [py, script, "--dsn", dsn, "--scenario", s, "--jobs", str(a.jobs)]
                if name != "pgqueuer":
                    cmd += ["--concurrency", str(a.concurrency)]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, **env}, timeout=900)
                try:
                    rate = json.loads(proc.stdout.strip().splitlines()[-1])["jobs_per_s"]
                except (IndexError, ValueError, KeyError):
                    print(f"round {r + 1} {s} {name}: failed\n{proc.stderr[-2000:]}",
                          file=sys.stderr)
                    continue
                results[s][name].append(rate)
                print(f"round {r + 1} {s:8} {name:14} {rate:>9,.0f} jobs/s", file=sys.stderr)
    med = {s: {n: (statistics.median(v) if v else None) for n, v in d.items()}
           for s, d in results.items()}
    names = list(systems)
    head = "| scenario (jobs/s, median) | " + " | ".join(
        f"{n} {versions[n]}" for n in names) + " | " + " | ".join(
        f"pgqueue / {n}" for n in names[1:]) + " |"
    print(head)
    print("|---" * (2 * len(names)) + "|")
    for s in scenarios:
        cells = [f"{med[s][n]:,.0f}" if med[s][n] else "–" for n in names]
        ratios = [f"{med[s]['pgqueue'] / med[s][n]:.2f}×" if med[s][n] and med[s]["pgqueue"]
                  else "–" for n in names[1:]]
        print(f"| {s} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"jobs": a.jobs, "rounds": a.rounds, "versions": versions,
                       "runs": results, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
