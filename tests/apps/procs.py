"""Tasks of the process-executor tests (children import ``tests.apps.procs:app``).

Tests make their own App with :func:`register` (same task names, the test database),
and pass ``app_spec="tests.apps.procs:app"``: each child imports this module and uses
the worker's connection string. Every task writes a ``start`` row into
``public.side`` with its process id (and ``end`` when it returns).
"""

from __future__ import annotations

import os
import time

import pgqueue

SPEC = "tests.apps.procs:app"

#: memory the `procs.alloc` task keeps alive in its child
_held: list[bytes] = []


def record(ctx: pgqueue.JobContext, event: str = "start", note: str | None = None) -> None:
    with ctx.app.connection() as conn:
        conn.execute(
            "insert into public.side (job_id, attempt, worker, pid, event, note) "
            "values (%s, %s, %s, %s, %s, %s)",
            (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid(), event, note))


def register(app: pgqueue.App, executor: str | None = "process") -> pgqueue.App:
    @app.task(name="procs.spin", pass_context=True, executor=executor, max_attempts=5)
    def spin(ctx: pgqueue.JobContext, seconds: float) -> int:
        """Pure Python for ``seconds``: holds its interpreter's GIL the whole time."""
        record(ctx)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            for _ in range(10_000):
                n += 1
        record(ctx, "end")
        return os.getpid()

    @app.task(name="procs.hang", pass_context=True, executor=executor, timeout=2,
              max_attempts=2)
    def hang(ctx: pgqueue.JobContext) -> None:
        """Never returns (and never looks at cancellation)."""
        record(ctx)
        while True:
            pass

    @app.task(name="procs.stubborn", pass_context=True, executor=executor, max_attempts=3)
    def stubborn(ctx: pgqueue.JobContext) -> None:
        """Never returns, whatever its cancellation flag says."""
        record(ctx)
        while True:
            time.sleep(0.01)

    @app.task(name="procs.nap", pass_context=True, executor=executor, max_attempts=3)
    def nap(ctx: pgqueue.JobContext, first: float, later: float = 0.0) -> int:
        """Sleeps ``first`` seconds on the first attempt, ``later`` on the others."""
        record(ctx)
        time.sleep(first if ctx.attempt == 1 else later)
        record(ctx, "end")
        return os.getpid()

    @app.task(name="procs.pid", executor=executor)
    def pid() -> int:
        return os.getpid()

    @app.task(name="procs.alloc", executor=executor)
    def alloc(mib: int) -> int:
        """Keeps ``mib`` MiB resident in this process."""
        _held.append(b"x" * (mib * 2**20))
        return os.getpid()

    @app.task(name="procs.add", executor=executor, transactional=True)
    def add(ctx: pgqueue.JobContext, a: int, b: int) -> int:
        ctx.connection.execute("insert into public.side (job_id, attempt, worker, pid, "
                               "event) values (%s, %s, %s, %s, 'tx')",
                               (ctx.job_id, ctx.attempt, str(ctx.worker_id), os.getpid()))
        return a + b

    return app


app = register(pgqueue.App(pool_max_size=2))
