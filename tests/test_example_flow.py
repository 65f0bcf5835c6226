"""The map-reduce example runs as a user runs it: a real process against a real database."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT
from .test_examples import env_for

FLOW = ROOT / "examples" / "wordcount_flow.py"
COUNT = "examples.wordcount_flow.count_words"
MERGE = "examples.wordcount_flow.merge_counts"
REPORT = "examples.wordcount_flow.write_report"

pytestmark = pytest.mark.slow


def test_wordcount_flow_map_reduce(dsn, conn, tmp_path):
    out = tmp_path / "report.txt"
    proc = subprocess.run([sys.executable, str(FLOW), "--limit", "100", "--out", str(out)],
                          cwd=ROOT, env=env_for(dsn), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"

    # one run row, its workflow completed: 100 file jobs + the merge + the report
    (run_id, wf_id, files), = conn.execute(
        "select id, workflow_id, files from wordcount_runs").fetchall()
    assert files == 100
    assert conn.execute(
        "select state, total, remaining, completed, failed_job_ids from pgqueue.workflows "
        "where id = %s", (wf_id,)).fetchone() == ("completed", 102, 0, 102, [])
    states = dict(((t, s), n) for t, s, n in conn.execute(
        "select task, state, count(*) from pgqueue.jobs where workflow_id = %s "
        "group by task, state", (wf_id,)).fetchall())
    assert states == {(COUNT, "completed"): 100, (MERGE, "completed"): 1,
                      (REPORT, "completed"): 1}

    # exactly one callback, run once, after every member finished
    (merge_id, merge_attempt, merge_started, merge_result), = conn.execute(
        "select id, attempt, started_at, result from pgqueue.jobs "
        "where workflow_id = %s and task = %s", (wf_id, MERGE)).fetchall()
    assert merge_attempt == 1
    assert conn.execute(
        "select max(finished_at) <= %s from pgqueue.jobs where workflow_id = %s and task = %s",
        (merge_started, wf_id, COUNT)).fetchone()[0]
    assert conn.execute("select count(*) from pgqueue.job_dependencies where job_id = %s "
                        "and satisfied and outcome = 'completed'", (merge_id,)).fetchone()[0] == 100

    # the totals equal the sum of the per-file counts (read from the file jobs' results)
    files_words, = conn.execute(
        "select sum((result ->> 'words')::bigint) from pgqueue.jobs "
        "where workflow_id = %s and task = %s", (wf_id, COUNT)).fetchone()
    per_word = dict(conn.execute(
        "select c.key, sum(c.value::bigint) from pgqueue.jobs j, "
        "jsonb_each_text(j.result -> 'counts') c where j.workflow_id = %s and j.task = %s "
        "group by c.key", (wf_id, COUNT)).fetchall())
    assert files_words > 10_000 and files_words == sum(per_word.values())
    assert merge_result["files"] == 100
    assert merge_result["words"] == files_words
    assert merge_result["distinct_words"] == len(per_word)
    for word, n in merge_result["top_words"]:
        assert per_word[word] == n

    # the report row, written once by the report step in its own transaction
    (r_files, r_words, r_distinct, r_top, r_job), = conn.execute(
        "select files, words, distinct_words, top_words, job_id from wordcount_reports "
        "where run_id = %s", (run_id,)).fetchall()
    (report_job, report_attempt), = conn.execute(
        "select id, attempt from pgqueue.jobs where workflow_id = %s and task = %s",
        (wf_id, REPORT)).fetchall()
    assert (r_files, r_words, r_distinct, r_job, report_attempt) == (
        100, files_words, len(per_word), report_job, 1)
    assert r_top == merge_result["top_words"]
    assert out.read_text().startswith(f"run {run_id}: 100 files, {files_words} words")

    assert f"wordcount run {run_id} (workflow {wf_id}): completed" in proc.stdout
    assert f"words:          {files_words}" in proc.stdout
