"""``pgqueue bench``: every scenario runs through the command line with small sizes.

A scenario only a benchmark run exercises breaks unnoticed when the SQL it calls
changes (the ``claim`` scenario once failed with a missing query parameter). Each one
runs here against the test database, in its own ``pgqueue bench`` process, and must
report measurements, leave its queue empty and print no verdict on them (the targets
live in ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from pgqueue.bench import bench as bench_command

from .conftest import ROOT

#: every scenario the command offers (``all`` is a set of them)
CHOICES = next(p.type.choices for p in bench_command.params if p.name == "scenarios")
SCENARIOS = [c for c in CHOICES if c != "all"]

#: small sizes: each scenario takes a few seconds at most
SMALL = ("--jobs", "40", "--concurrency", "2", "--samples", "10", "--finished-rows", "300")


def bench(dsn: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("PGQUEUE_DSN", None)
    return subprocess.run([sys.executable, "-m", "pgqueue.cli", "--dsn", dsn, "bench", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_runs_and_prints_measurements_only(dsn, tmp_path, scenario):
    out = tmp_path / "report.json"
    proc = bench(dsn, "--scenario", scenario, *SMALL, "--json-out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["scenario"] == scenario
    assert result["ok"] is True, result
    if scenario in ("enqueue", "bulk", "drain", "chord"):
        assert result["jobs"] == 40 and result["jobs_per_s"] > 0
    if scenario == "latency":
        assert result["samples"] == 10 and result["lost"] == 0
        assert 0 < result["p50_ms"] <= result["max_ms"]
    if scenario == "claim":
        assert result["samples"] == 10 and result["finished_rows"] == 300
        assert 0 < result["empty"]["p50_ms"] and 0 < result["with_finished"]["p50_ms"]
    table = proc.stdout
    assert table.startswith("PostgreSQL ")
    assert any(line.startswith(scenario) for line in table.splitlines()), table
    for verdict in ("target", "floor", "below"):
        assert verdict not in table.lower(), table
    with psycopg.connect(dsn) as c:
        assert c.execute("select count(*) from pgqueue.jobs where queue = 'bench'"
                         ).fetchone()[0] == 0
        assert c.execute("select count(*) from pgqueue.workers").fetchone()[0] == 0


def test_json_report_on_stdout(dsn):
    proc = bench(dsn, "--scenario", "enqueue", "--scenario", "bulk", *SMALL, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["scenario"] for r in report["results"]] == ["enqueue", "bulk"]
    assert report["server_version"]


def test_cpu_per_job_script_splits_a_real_drain(dsn):
    """``benchmarks/cpu_per_job.py`` drains its jobs and reads both sides' CPU time (the
    test database runs on this machine), leaving its queue empty."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([sys.executable, "benchmarks/cpu_per_job.py", dsn, "--jobs", "300",
                           "--concurrency", "5"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()
    assert "worker us/job" in header and "server us/job" in header
    concurrency, rate, worker_us, server_us, *_ = row.replace(",", "").split()
    assert int(concurrency) == 5 and float(rate) > 0
    assert float(worker_us) > 0 and float(server_us) > 0, row
    with psycopg.connect(dsn) as c:
        assert c.execute("select count(*) from pgqueue.jobs "
                         "where queue = 'cpu_per_job'").fetchone()[0] == 0
