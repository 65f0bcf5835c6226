"""The examples run as a user runs them: real processes against a real database."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import psycopg
import pytest

from .conftest import ROOT, wait_until

SCAN = ROOT / "examples" / "scan_stdlib.py"
TASK = "examples.scan_stdlib.count_file"

pytestmark = pytest.mark.slow


def env_for(dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PGQUEUE_DSN"] = dsn
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def run_scan(dsn: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCAN), *args], cwd=ROOT, env=env_for(dsn),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def job_states(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute(
        "select state, count(*) from pgqueue.jobs where task = %s group by state",
        (TASK,)).fetchall())


def test_scan_stdlib_main_job(dsn, conn):
    proc = run_scan(dsn, "--limit", "200")

    assert job_states(conn) == {"completed": 200}
    assert conn.execute("select count(*) from scans").fetchone()[0] == 1
    assert conn.execute("select count(*) from file_stats").fetchone()[0] == 200
    # every file_stats row was written by the job that completed it, with the same numbers
    assert conn.execute("""
        select count(*) from file_stats s join pgqueue.jobs j on j.id = s.job_id
         where j.state = 'completed' and j.attempt = 1
           and (j.result ->> 'lines')::int = s.lines
           and (j.result ->> 'words')::int = s.words
           and j.result ->> 'path' = s.path
           and j.args = jsonb_build_array(s.scan_id, s.path)""").fetchone()[0] == 200
    assert conn.execute(
        "select count(distinct path) from file_stats where lines > 0").fetchone()[0] > 150
    assert "scan 1 summary" in proc.stdout
    assert "files:       200" in proc.stdout
    assert "jobs by state: completed=200" in proc.stdout
    assert "jobs/s" in proc.stdout


def test_scan_stdlib_enqueue_only_then_cli_worker(dsn, conn, spawn_worker):
    """The docker-compose split: a producer process enqueues, a `pgqueue worker` runs."""
    proc = run_scan(dsn, "--enqueue-only", "--limit", "30")
    assert "enqueued 30 jobs" in proc.stdout
    assert job_states(conn) == {"available": 30}
    assert conn.execute("select count(*) from file_stats").fetchone()[0] == 0

    worker = spawn_worker("examples.scan_stdlib", "-c", "4")
    wait_until(lambda: job_states(conn) == {"completed": 30}, 60,
               message="30 completed jobs")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log()
    assert conn.execute("select count(*) from file_stats").fetchone()[0] == 30


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not on PATH")
def test_enqueue_sql_with_psql(dsn, conn, spawn_worker):
    run_scan(dsn, "--setup-only")
    target = str(SCAN)
    proc = subprocess.run(
        ["psql", dsn, "-X", "-v", f"file={target}", "-f", str(ROOT / "examples" / "enqueue.sql")],
        cwd=ROOT, env=env_for(dsn), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    rows = conn.execute(
        "select state, priority, unique_key, args from pgqueue.jobs where task = %s order by id",
        (TASK,)).fetchall()
    (scan_id,) = conn.execute("select id from scans").fetchone()
    assert rows == [
        ("available", 10, None, [scan_id, target]),
        ("scheduled", 0, f"rescan:{target}", [scan_id, target]),
    ]
    assert " deduplicated \n--------------\n t\n" in proc.stdout

    worker = spawn_worker("examples.scan_stdlib", "-c", "2")
    wait_until(lambda: job_states(conn) == {"completed": 1, "scheduled": 1}, 60,
               message="the due job completed")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log()
    lines, job_state = conn.execute(
        "select s.lines, j.state from file_stats s join pgqueue.jobs j on j.id = s.job_id "
        "where s.path = %s", (target,)).fetchone()
    assert job_state == "completed"
    assert lines == len(SCAN.read_text().splitlines())


def test_wordcount_dynamic_lists_files_then_replaces_itself_with_a_group(dsn, conn):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "wordcount_dynamic.py"),
                           "--limit", "30"], cwd=ROOT, env=env_for(dsn), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    (wf_id, state, total), = conn.execute(
        "select id, state, total from pgqueue.workflows").fetchall()
    assert (state, total) == ("completed", 32)     # list_files, 30 files, merge_totals
    lister, = conn.execute(
        "select replaced_by from pgqueue.jobs where workflow_id = %s "
        "and task = 'examples.wordcount_dynamic.list_files'", (wf_id,)).fetchone()
    assert len(lister) == 30
    words, = conn.execute(
        "select sum((result ->> 'words')::bigint) from pgqueue.jobs where workflow_id = %s "
        "and task = 'examples.wordcount_flow.count_words'", (wf_id,)).fetchone()
    merged, = conn.execute(
        "select result from pgqueue.jobs where workflow_id = %s "
        "and task = 'examples.wordcount_dynamic.merge_totals'", (wf_id,)).fetchone()
    assert merged["files"] == 30 and merged["words"] == words
    assert f"30 files, {words} words" in proc.stdout
