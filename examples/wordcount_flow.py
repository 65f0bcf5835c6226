"""Word count of the Python standard library as a pgqueue workflow (map-reduce).

The map-reduce version of ``scan_stdlib.py``::

    python examples/wordcount_flow.py                  # every .py file of the stdlib
    python examples/wordcount_flow.py --limit 100      # the first 100 files
    python examples/wordcount_flow.py --path ~/src --out report.txt

The workflow::

    chain(
        chord(group(count_words.s(path) for each file),   # map: one job per file
              merge_counts.s(run_id)),                     # reduce: the chord callback
        write_report.s(run_id),                            # then: store the report
    )

What it does:

1. applies pgqueue's migrations and creates the example's tables ``wordcount_runs`` and
   ``wordcount_reports`` (if missing);
2. in ONE transaction, inserts a ``wordcount_runs`` row and enqueues the whole workflow
   on that same connection (``flow.using(connection=conn).enqueue()``): the run, its
   workflow, one job per file, the callback and the report step commit together, or
   none of them exists;
3. runs an in-process :class:`pgqueue.Worker` (8 threads) until the workflow has
   finished. Each ``count_words`` job returns its file's word counts; the callback
   ``merge_counts`` becomes runnable in the transaction that completes the last file
   job and receives every file's result, in file order; ``write_report`` receives the
   totals and writes the ``wordcount_reports`` row in the job's own transaction
   (``transactional=True``), exactly once;
4. prints the report read back with SQL.

While it runs, watch it from psql::

    select state, count(*) from pgqueue.workflow_steps where workflow_id = 1 group by state;

Split across processes: ``--enqueue-only`` enqueues and exits, and
``pgqueue worker --app examples.wordcount_flow`` runs the jobs.

Importing this module only defines ``app`` and the tasks; nothing runs until ``main()``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import re
import sys
import sysconfig
import threading
import time
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

import pgqueue

#: pool connections serve the transactional report step and the watcher
app = pgqueue.App(pool_max_size=12)

SCHEMA = """
create table if not exists wordcount_runs (
    id           bigint generated always as identity primary key,
    path         text not null,
    files        integer not null,
    workflow_id  bigint,
    started_at   timestamptz not null default now()
);
create table if not exists wordcount_reports (
    run_id          bigint primary key references wordcount_runs (id) on delete cascade,
    files           integer not null,
    words           bigint not null,
    distinct_words  integer not null,
    top_words       jsonb not null,
    job_id          bigint not null,
    written_at      timestamptz not null default now()
);
"""

#: a word: a run of ASCII letters, counted in lower case
_WORD = re.compile(r"[A-Za-z]+")
TOP = 20


@app.task(name="examples.wordcount_flow.count_words", max_attempts=3, timeout=60)
def count_words(path: str) -> dict:
    """Map: the word counts of one file."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise pgqueue.Discard(f"{path} does not exist on this worker") from None
    counts = collections.Counter(w.lower() for w in _WORD.findall(text))
    return {"path": path, "words": sum(counts.values()), "counts": dict(counts)}


@app.task(name="examples.wordcount_flow.merge_counts", max_attempts=3)
def merge_counts(results: list[dict], run_id: int) -> dict:
    """Reduce (the chord callback): merge every file's counts into totals."""
    totals: collections.Counter[str] = collections.Counter()
    words = 0
    for r in results:
        totals.update(r["counts"])
        words += r["words"]
    assert words == sum(totals.values())
    return {"run_id": run_id, "files": len(results), "words": words,
            "distinct_words": len(totals), "top_words": totals.most_common(TOP)}


@app.task(name="examples.wordcount_flow.write_report", transactional=True, max_attempts=3)
def write_report(ctx: pgqueue.JobContext, totals: dict, run_id: int,
                 out: str | None = None) -> dict:
    """Then: store the report row in the job's own transaction (and a text file if asked)."""
    ctx.connection.execute(
        """insert into wordcount_reports (run_id, files, words, distinct_words, top_words, job_id)
           values (%s, %s, %s, %s, %s, %s)
           on conflict (run_id) do update
              set files = excluded.files, words = excluded.words,
                  distinct_words = excluded.distinct_words, top_words = excluded.top_words,
                  job_id = excluded.job_id, written_at = now()""",
        (run_id, totals["files"], totals["words"], totals["distinct_words"],
         Jsonb(totals["top_words"]), ctx.job_id))
    if out:
        lines = [f"run {run_id}: {totals['files']} files, {totals['words']} words, "
                 f"{totals['distinct_words']} distinct"]
        lines += [f"{w:<20} {n}" for w, n in totals["top_words"]]
        Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"run_id": run_id, "words": totals["words"], "out": out}


# -- the program -------------------------------------------------------------------

def find_files(root: Path, limit: int | None) -> list[Path]:
    """``.py`` files under ``root`` in a stable order (third-party packages skipped)."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py")
                   if p.is_file() and not skip & set(p.relative_to(root).parts))
    return files[:limit] if limit is not None else files


def setup(conn: psycopg.Connection) -> None:
    """Apply pgqueue's migrations and create the example's tables."""
    app.migrate()
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('examples.wordcount_flow'))")
        conn.execute(SCHEMA)


def enqueue_run(conn: psycopg.Connection, root: Path, files: list[Path],
                out: str | None) -> tuple[int, pgqueue.WorkflowHandle]:
    """Insert the run and its whole workflow in one transaction."""
    with conn.transaction():
        (run_id,) = conn.execute(
            "insert into wordcount_runs (path, files) values (%s, %s) returning id",
            (str(root), len(files))).fetchone()
        flow = pgqueue.chain(
            pgqueue.chord([count_words.s(str(p)) for p in files], merge_counts.s(run_id)),
            write_report.s(run_id, out),
        )
        handle = flow.using(connection=conn, name=f"wordcount run {run_id}").enqueue()
        conn.execute("update wordcount_runs set workflow_id = %s where id = %s",
                     (handle.id, run_id))
    return run_id, handle


def run_until_done(workflow_id: int, concurrency: int) -> None:
    """Run a worker in this process until the workflow is no longer running."""
    worker = pgqueue.Worker(app, concurrency=concurrency, shutdown_grace=10.0)

    def watch() -> None:
        with psycopg.connect(app.conninfo, autocommit=True) as conn:
            last = time.monotonic()
            while True:
                state, total, remaining = conn.execute(
                    "select state, total, remaining from pgqueue.workflows where id = %s",
                    (workflow_id,)).fetchone()
                if state != "running":
                    break
                if time.monotonic() - last >= 2.0:
                    print(f"  {total - remaining}/{total} steps finished", flush=True)
                    last = time.monotonic()
                time.sleep(0.1)
        worker.stop()

    watcher = threading.Thread(target=watch, name="wordcount-watcher", daemon=True)
    watcher.start()
    worker.run()   # returns after worker.stop(), or after Ctrl-C / SIGTERM


def report(conn: psycopg.Connection, run_id: int, seconds: float) -> str:
    """Print the report, read back with SQL; return the workflow state."""
    wf_id, wf_state, steps, took = conn.execute(
        """select w.id, w.state, w.total,
                  extract(epoch from w.finished_at - w.created_at)::float8
             from wordcount_runs r join pgqueue.workflows w on w.id = r.workflow_id
            where r.id = %s""", (run_id,)).fetchone()
    by_task = conn.execute(
        """select task, state, count(*) from pgqueue.workflow_steps
            where workflow_id = %s group by task, state order by min(job_id), state""",
        (wf_id,)).fetchall()
    row = conn.execute(
        """select files, words, distinct_words, top_words, job_id
             from wordcount_reports where run_id = %s""", (run_id,)).fetchone()
    print(f"\nwordcount run {run_id} (workflow {wf_id}): {wf_state}")
    for task, state, n in by_task:
        print(f"  {task.rsplit('.', 1)[-1]:<14} {state:<10} {n}")
    if row is None:
        print("  no report row")
    else:
        files, words, distinct, top, job_id = row
        print(f"  files:          {files}")
        print(f"  words:          {words}")
        print(f"  distinct words: {distinct}")
        print(f"  top words (report row written by job {job_id}):")
        for w, n in top[:10]:
            print(f"    {w:<20} {n}")
    if took is not None:
        rate = steps / took if took > 0 else float("inf")
        print(f"  workflow: {steps} steps in {took:.2f} s (database clock, {rate:.0f} steps/s)")
    print(f"  elapsed:  {seconds:.2f} s")
    return wf_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Count the words of .py files with a pgqueue map-reduce workflow.")
    parser.add_argument("--path", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="directory to scan (default: this Python's standard library)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="count at most N files")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="worker threads (default 8)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="the report step also writes the report to FILE")
    parser.add_argument("--enqueue-only", action="store_true",
                        help="enqueue the workflow and exit; `pgqueue worker --app "
                             "examples.wordcount_flow` runs it")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    root = opts.path.expanduser().resolve()
    if not root.is_dir():
        parser.error(f"--path {root} is not a directory")
    if opts.limit is not None and opts.limit < 0:
        parser.error("--limit must be >= 0")
    out = str(Path(opts.out).resolve()) if opts.out else None

    with psycopg.connect(app.conninfo, autocommit=True) as conn:
        setup(conn)
        files = find_files(root, opts.limit)
        t0 = time.monotonic()
        run_id, handle = enqueue_run(conn, root, files, out)
        print(f"run {run_id}: enqueued workflow {handle.id} ({len(files)} file jobs, "
              f"1 merge, 1 report) for {root} in {time.monotonic() - t0:.2f} s", flush=True)
        if opts.enqueue_only:
            return 0
        t1 = time.monotonic()
        run_until_done(handle.id, opts.concurrency)
        state = report(conn, run_id, time.monotonic() - t1)
    app.close()
    if state == "running":
        print(f"\ninterrupted: workflow {handle.id} is not finished; `pgqueue worker --app "
              "examples.wordcount_flow` finishes it", file=sys.stderr)
        return 1
    return 0 if state == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
