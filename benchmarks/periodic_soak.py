"""Periodic jobs over a long run: slots fired vs expected, duplicates, lateness.

Starts N ``pgqueue worker`` processes of ``tests.apps.periodic`` (an ``every=1`` s
schedule) against a fresh database for DURATION seconds, then reads the jobs table:

    python benchmarks/periodic_soak.py --dsn 'host=127.0.0.1 dbname=postgres user=root' \\
        --workers 3 --duration 300

It prints, from database times only: slots expected in the window (one per second),
slots enqueued, duplicates (must be 0), missing slots, and the lateness of the
enqueue (created_at - schedule_slot): p50, p99, worst.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", required=True, help="a server where a database can be created")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--duration", type=float, default=300.0)
    a = ap.parse_args()
    from pgqueue import migrate
    from tests.conftest import SIDE_DDL
    db = f"pgqueue_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(a.dsn, autocommit=True) as c:
        c.execute(f'create database "{db}"')
    params = conninfo_to_dict(a.dsn)
    params["dbname"] = db
    dsn = make_conninfo(**params)
    procs = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate.apply(conn)
            conn.execute(SIDE_DDL)
        env = dict(os.environ, PGQUEUE_DSN=dsn, PERIODIC_EVERY="1",
                   PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        for _ in range(a.workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pgqueue.cli", "--log-level", "WARNING", "worker",
                 "--app", "tests.apps.periodic:app", "-c", "2"], cwd=ROOT, env=env))
        with psycopg.connect(dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while conn.execute("select count(*) from pgqueue.workers").fetchone()[0] < a.workers:
                if time.monotonic() > deadline:
                    sys.exit("workers did not start")
                time.sleep(0.2)
            start = conn.execute("select now()").fetchone()[0]
            time.sleep(a.duration)
            end = conn.execute("select now()").fetchone()[0]
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
            expected, fired, distinct, late = conn.execute("""
                select (select count(*) from generate_series(
                            date_trunc('second', %(s)s::timestamptz) + interval '1 second',
                            %(e)s::timestamptz, interval '1 second')),
                       count(*), count(distinct schedule_slot),
                       array_agg(extract(epoch from created_at - schedule_slot)
                                 order by created_at - schedule_slot)
                  from pgqueue.jobs
                 where schedule_name = 'beat' and schedule_slot > %(s)s
                   and schedule_slot <= %(e)s""", {"s": start, "e": end}).fetchone()
            ran = conn.execute("select count(*) from public.side where event = 'beat'"
                               ).fetchone()[0]
        late = late or [0.0]
        pct = lambda p: late[min(len(late) - 1, int(p * len(late)))]  # noqa: E731
        print(f"workers={a.workers} window={(end - start).total_seconds():.1f}s "
              f"expected_slots={expected} enqueued={fired} distinct={distinct} "
              f"duplicates={fired - distinct} missing={expected - distinct} "
              f"runs_recorded={ran}")
        print(f"lateness (created_at - slot): p50={pct(0.5) * 1000:.1f} ms "
              f"p99={pct(0.99) * 1000:.1f} ms worst={late[-1] * 1000:.1f} ms")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        with psycopg.connect(a.dsn, autocommit=True) as c:
            c.execute(f'drop database if exists "{db}" with (force)')


if __name__ == "__main__":
    main()
