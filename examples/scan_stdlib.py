"""Scan every ``.py`` file of the Python standard library with pgqueue.

The main job of pgqueue's README, start to finish::

    python examples/scan_stdlib.py                 # the whole standard library
    python examples/scan_stdlib.py --limit 200     # the first 200 files
    python examples/scan_stdlib.py --path ~/src    # any directory

What it does:

1. applies pgqueue's migrations and creates the example's own tables ``scans`` and
   ``file_stats`` (if missing);
2. in ONE transaction, inserts a ``scans`` row and bulk-enqueues one job per file on
   that same connection (``count_file.using(connection=conn).enqueue_many(...)``): the
   scan and its jobs commit together, or neither exists;
3. runs an in-process :class:`pgqueue.Worker` (8 threads) until every job of the scan
   has finished. Each job reads its file, counts lines, words and identifiers, and
   writes a ``file_stats`` row *in the job's own transaction* (``transactional=True``),
   so the row and the job's completion commit together, exactly once;
4. prints a summary read back with SQL.

With no ``PGQUEUE_DSN`` (and no libpq environment such as ``PGHOST``) it uses the
embedded PostgreSQL, started on first use.

Split across processes (as ``docker-compose.yml`` does)::

    python examples/scan_stdlib.py --enqueue-only          # producer: enqueue, exit
    pgqueue worker --app examples.scan_stdlib              # worker: run the jobs

Importing this module only defines ``app`` and the task; nothing runs until ``main()``.
"""

from __future__ import annotations

import argparse
import collections
import keyword
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

#: pool connections serve the transactional tasks: one per worker thread, plus spare
app = pgqueue.App(pool_max_size=12)

TASK_NAME = "examples.scan_stdlib.count_file"
TERMINAL = ("completed", "discarded", "cancelled")

SCHEMA = """
create table if not exists scans (
    id          bigint generated always as identity primary key,
    path        text not null,
    started_at  timestamptz not null default now()
);
create table if not exists file_stats (
    scan_id          bigint not null references scans (id) on delete cascade,
    path             text not null,
    lines            integer not null,
    words            integer not null,
    bytes            bigint not null,
    top_identifiers  jsonb not null,
    job_id           bigint not null,
    primary key (scan_id, path)
);
"""

#: string literals and comments match (and are skipped) before identifiers can; a
#: regular expression rather than ``tokenize``, which is ten times slower
_TOKEN = re.compile(r'''
    [rRbBuUfF]{0,2}(?:"""(?:\\.|[^\\])*?"""|\'\'\'(?:\\.|[^\\])*?\'\'\'
                      |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')   # string literals
  | \#[^\n]*                                                      # comments
  | ([A-Za-z_][A-Za-z0-9_]*)                                      # identifiers
''', re.VERBOSE)
_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist)


def analyse(text: str) -> tuple[int, int, list[tuple[str, int]]]:
    """Lines, words and the 5 most frequent identifiers of ``text`` (keywords, strings
    and comments excluded)."""
    counts = collections.Counter(w for w in _TOKEN.findall(text) if w and w not in _KEYWORDS)
    return len(text.splitlines()), len(text.split()), counts.most_common(5)


@app.task(name=TASK_NAME, transactional=True, max_attempts=3, timeout=60)
def count_file(ctx: pgqueue.JobContext, scan_id: int, path: str) -> dict:
    """Count one file; store its ``file_stats`` row in the job's own transaction."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise pgqueue.Discard(f"{path} does not exist on this worker") from None
    lines, words, top = analyse(data.decode("utf-8", errors="replace"))
    top_obj = dict(top)
    ctx.connection.execute(
        """insert into file_stats (scan_id, path, lines, words, bytes, top_identifiers, job_id)
           values (%s, %s, %s, %s, %s, %s, %s)
           on conflict (scan_id, path) do update
              set lines = excluded.lines, words = excluded.words, bytes = excluded.bytes,
                  top_identifiers = excluded.top_identifiers, job_id = excluded.job_id""",
        (scan_id, path, lines, words, len(data), Jsonb(top_obj), ctx.job_id))
    return {"path": path, "lines": lines, "words": words, "bytes": len(data),
            "top_identifiers": top_obj}


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
        conn.execute("select pg_advisory_xact_lock(hashtext('examples.scan_stdlib'))")
        conn.execute(SCHEMA)


def enqueue_scan(conn: psycopg.Connection, root: Path, files: list[Path]) -> int:
    """Insert the scan and one job per file in one transaction; return the scan id."""
    with conn.transaction():
        (scan_id,) = conn.execute("insert into scans (path) values (%s) returning id",
                                  (str(root),)).fetchone()
        n = count_file.using(connection=conn).enqueue_many(
            (scan_id, str(p)) for p in files)
    assert n == len(files)
    return scan_id


def unfinished(conn: psycopg.Connection, scan_id: int) -> tuple[int, int]:
    """(jobs of the scan not yet in a terminal state, all jobs of the scan)."""
    return conn.execute(
        """select count(*) filter (where state <> all(%s)), count(*)
             from pgqueue.jobs where task = %s and args -> 0 = to_jsonb(%s::bigint)""",
        (list(TERMINAL), TASK_NAME, scan_id)).fetchone()


def run_until_done(scan_id: int, concurrency: int) -> None:
    """Run a worker in this process until every job of ``scan_id`` has finished."""
    worker = pgqueue.Worker(app, concurrency=concurrency, shutdown_grace=10.0)

    def watch() -> None:
        with psycopg.connect(app.conninfo, autocommit=True) as conn:
            last = time.monotonic()
            while True:
                left, total = unfinished(conn, scan_id)
                if left == 0:
                    break
                if time.monotonic() - last >= 2.0:
                    print(f"  {total - left}/{total} jobs finished", flush=True)
                    last = time.monotonic()
                time.sleep(0.1)
        worker.stop()

    watcher = threading.Thread(target=watch, name="scan-watcher", daemon=True)
    watcher.start()
    worker.run()   # returns after worker.stop(), or after Ctrl-C / SIGTERM


def summary(conn: psycopg.Connection, scan_id: int, seconds: float) -> None:
    """Print what the scan found, read back from the database."""
    files, lines, words, size = conn.execute(
        """select count(*), coalesce(sum(lines), 0), coalesce(sum(words), 0),
                  coalesce(sum(bytes), 0)
             from file_stats where scan_id = %s""", (scan_id,)).fetchone()
    top = conn.execute(
        """select t.key, sum(t.value::bigint) as n
             from file_stats s, jsonb_each_text(s.top_identifiers) t
            where s.scan_id = %s
            group by t.key order by n desc, t.key limit 10""", (scan_id,)).fetchall()
    biggest = conn.execute(
        """select path, lines from file_stats where scan_id = %s
            order by lines desc, path limit 3""", (scan_id,)).fetchall()
    states = conn.execute(
        """select state, count(*) from pgqueue.jobs
            where task = %s and args -> 0 = to_jsonb(%s::bigint)
            group by state order by state""", (TASK_NAME, scan_id)).fetchall()
    (db_seconds,) = conn.execute(
        """select extract(epoch from max(finished_at) - min(started_at))::float8
             from pgqueue.jobs where task = %s and args -> 0 = to_jsonb(%s::bigint)""",
        (TASK_NAME, scan_id)).fetchone()
    jobs = sum(n for _, n in states)
    print(f"\nscan {scan_id} summary")
    print(f"  files:       {files}")
    print(f"  lines:       {lines}")
    print(f"  words:       {words}")
    print(f"  bytes:       {size}")
    print("  largest:     " + ", ".join(f"{Path(p).name} ({n} lines)" for p, n in biggest))
    print("  top identifiers (sum of each file's top 5):")
    for name, n in top:
        print(f"    {name:<20} {n}")
    print("  jobs by state: " + ", ".join(f"{s}={n}" for s, n in states))
    rate = jobs / seconds if seconds > 0 else float("inf")
    print(f"  elapsed:     {seconds:.2f} s  ({rate:.0f} jobs/s)")
    if db_seconds is not None:
        print(f"  first start to last finish (database clock): {db_seconds:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Count lines, words and identifiers of .py files with pgqueue jobs.")
    parser.add_argument("--path", type=Path, default=Path(sysconfig.get_paths()["stdlib"]),
                        help="directory to scan (default: this Python's standard library)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="scan at most N files")
    parser.add_argument("--concurrency", type=int, default=8, metavar="N",
                        help="worker threads (default 8)")
    parser.add_argument("--enqueue-only", action="store_true",
                        help="enqueue the scan and exit; `pgqueue worker --app "
                             "examples.scan_stdlib` runs the jobs")
    parser.add_argument("--setup-only", action="store_true",
                        help="apply migrations and create the example's tables, then exit")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    root = opts.path.expanduser().resolve()
    if not opts.setup_only and not root.is_dir():
        parser.error(f"--path {root} is not a directory")
    if opts.limit is not None and opts.limit < 0:
        parser.error("--limit must be >= 0")

    with psycopg.connect(app.conninfo, autocommit=True) as conn:
        setup(conn)
        if opts.setup_only:
            print("schema ready")
            return 0
        files = find_files(root, opts.limit)
        t0 = time.monotonic()
        scan_id = enqueue_scan(conn, root, files)
        t_enqueue = time.monotonic() - t0
        print(f"scan {scan_id}: enqueued {len(files)} jobs for {root} in {t_enqueue:.2f} s",
              flush=True)
        if opts.enqueue_only:
            return 0

        t1 = time.monotonic()
        run_until_done(scan_id, opts.concurrency)
        run_seconds = time.monotonic() - t1
        left, _ = unfinished(conn, scan_id)
        summary(conn, scan_id, run_seconds)
        if left:
            print(f"\ninterrupted: {left} jobs of scan {scan_id} are not finished yet; "
                  "`pgqueue worker --app examples.scan_stdlib` finishes them", file=sys.stderr)
            return 1
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
