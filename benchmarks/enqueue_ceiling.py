"""Single enqueue against the SQL ceiling, interleaved: what one job per transaction
costs through pgqueue compared with a one-row INSERT into a table of the same width.

Variants, each timed over ``--seconds`` of autocommitted single-job transactions on
one connection, run round-robin (the order rotates every round) so that drift of the
machine falls on each alike:

- ``pgbench_width``: ``pgbench -M prepared -c 1`` running a one-row INSERT into
  ``public.pgqueue_width_jobs``, a table with the columns and defaults of
  ``pgqueue.jobs`` and its primary key, nothing else (the ceiling: a C client, no
  indexes, constraints or triggers);
- ``pgbench_jobs``: the same client running the INSERT that ``task.enqueue()`` sends
  (``enqueue_plain``) into ``pgqueue.jobs``: the server's share of the cost;
- ``psycopg_width``: the ceiling's INSERT sent from Python by psycopg (prepared,
  autocommit): the client's share of the cost;
- ``enqueue``: ``task.enqueue()`` on the app's pool (argument binding, tagged JSON,
  hooks check, pool checkout, the INSERT, commit).

Usage: ``python benchmarks/enqueue_ceiling.py DSN [--seconds 5] [--rounds 3]``.
Prints the median jobs/s of each variant and its ratio to ``pgbench_width``. Point it
at a scratch database: it creates ``public.pgqueue_width_jobs`` and deletes the
``bench`` queue's jobs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

import psycopg

import pgqueue
from pgqueue import migrate

WIDTH = "public.pgqueue_width_jobs"
# pgbench reads ':name' as a variable, so the task name has no colon
VALUES = "('bench.noop', '[]', '{}', 'bench', 0, null, null, '{}')"
COLUMNS = "(task, args, kwargs, queue, priority, max_attempts, partition_key, meta)"

def noop() -> None:
    return None


def pgbench(dsn: str, table: str, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(f"insert into {table} {COLUMNS} values {VALUES} returning id;\n")
    try:
        out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c", "1", "-T",
                              str(int(seconds)), "-f", f.name, dsn],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    return float(re.search(r"^tps = ([0-9.]+)", out, re.M).group(1))


def psycopg_width(dsn: str, seconds: float) -> float:
    sql = f"insert into {WIDTH} {COLUMNS} values (%s, %s, %s, %s, %s, %s, %s, %s) returning id"
    with psycopg.connect(dsn, autocommit=True) as c:
        n = 0
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            c.execute(sql, ("bench.noop", "[]", "{}", "bench", 0, None, None, "{}"),
                      prepare=True).fetchone()
            n += 1
        return n / (time.perf_counter() - t0)


def enqueue(task: pgqueue.Task, seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        task.enqueue()
        n += 1
    return n / (time.perf_counter() - t0)


def cleanup(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"truncate {WIDTH}")
        c.execute("delete from pgqueue.jobs where queue = 'bench'")
        c.execute(f"vacuum (analyze) {WIDTH}, pgqueue.jobs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dsn")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with psycopg.connect(a.dsn, autocommit=True) as c:
        migrate.apply(c)
        c.execute(f"create table if not exists {WIDTH} "
                  "(like pgqueue.jobs including defaults including identity)")
        if not c.execute(f"select 1 from pg_index where indrelid = '{WIDTH}'::regclass "
                         "and indisprimary").fetchone():
            c.execute(f"alter table {WIDTH} add primary key (id)")
    app = pgqueue.App(a.dsn)
    task = app.task(name="bench.noop", queue="bench")(noop)
    variants = {
        "pgbench_width": lambda: pgbench(a.dsn, WIDTH, a.seconds),
        "pgbench_jobs": lambda: pgbench(a.dsn, "pgqueue.jobs", a.seconds),
        "psycopg_width": lambda: psycopg_width(a.dsn, a.seconds),
        "enqueue": lambda: enqueue(task, a.seconds),
    }
    enqueue(task, 0.5)    # warm up the pool and the prepared statement
    rates: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    try:
        for r in range(a.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                cleanup(a.dsn)
                rate = variants[name]()
                rates[name].append(rate)
                print(f"round {r + 1} {name:<14} {rate:9.0f} jobs/s", flush=True)
    finally:
        cleanup(a.dsn)
        app.close()
    base = statistics.median(rates["pgbench_width"])
    print(f"\n{'variant':<14} {'jobs/s (median)':>16} {'ratio to pgbench_width':>24}")
    for name, v in rates.items():
        m = statistics.median(v)
        print(f"{name:<14} {m:16,.0f} {m / base:23.2f}x")


if __name__ == "__main__":
    main()
