"""Helpers for your own tests: find enqueued jobs, run queued jobs to completion.

They work against a real PostgreSQL (the one your tests use) with the ordinary SQL
paths, so they prove what production does::

    from pgqueue import testing

    def test_signup_sends_welcome(app, db):
        signup(db, "a@b.c")                         # enqueues send_welcome in its transaction
        job = testing.assert_enqueued(app, send_welcome, kwargs={"email": "a@b.c"})
        stats = testing.drain(app)                  # runs every due job, then returns
        assert stats["completed"] == 1
        assert job.refresh().state == "completed"
"""

from __future__ import annotations

import threading
import time
from typing import Any

from . import serialization
from .app import App, Task
from .job import Job
from .worker import Worker

__all__ = ["enqueued_jobs", "assert_enqueued", "drain"]

_OPEN = ("pending", "scheduled", "available", "retryable", "running")


def enqueued_jobs(app: App, task: Task | str | None = None, *, queue: str | None = None,
                  connection: Any = None) -> list[Job]:
    """Unfinished jobs (pending..running), oldest first, optionally of one task/queue.

    :param connection: read through this psycopg connection (e.g. inside the test's
        own uncommitted transaction); default: the app's pool (committed jobs only).
    """
    name = task.name if isinstance(task, Task) else task
    sql = ("select id, queue, task, args, kwargs, state from pgqueue.jobs "
           "where state = any(%s) and (%s::text is null or task = %s) "
           "and (%s::text is null or queue = %s) order by id")
    params = (list(_OPEN), name, name, queue, queue)
    if connection is not None:
        rows = connection.execute(sql, params).fetchall()
    else:
        with app.connection() as conn:
            rows = conn.execute(sql, params).fetchall()
    return [Job(app, r[0], {"id": r[0], "queue": r[1], "task": r[2], "args": r[3],
                            "kwargs": r[4], "state": r[5]}) for r in rows]


def assert_enqueued(app: App, task: Task | str, *, args: list[Any] | tuple[Any, ...] | None = None,
                    kwargs: dict[str, Any] | None = None, queue: str | None = None,
                    connection: Any = None) -> Job:
    """Return the first unfinished job of ``task`` whose arguments match, or fail.

    ``args``/``kwargs`` compare after decoding (so ``Decimal("1.0")`` matches what was
    sent); omitted ones match anything. Raises ``AssertionError`` listing what is queued.
    """
    found = enqueued_jobs(app, task, queue=queue, connection=connection)
    for job in found:
        if args is not None and serialization.decode(job._get("args")) != list(args):
            continue
        if kwargs is not None and serialization.decode(job._get("kwargs")) != kwargs:
            continue
        return job
    name = task.name if isinstance(task, Task) else task
    listing = ", ".join(f"#{j.id} args={j._get('args')} kwargs={j._get('kwargs')}"
                        for j in found) or "none"
    raise AssertionError(f"no unfinished {name} job with args={args!r} kwargs={kwargs!r} "
                         f"(queue={queue!r}); unfinished jobs of that task: {listing}")


def drain(app: App, *, queues: list[str] | None = None, concurrency: int = 1,
          timeout: float = 60.0) -> dict[str, int]:
    """Run every due job (and what they enqueue) with a real worker, then stop it.

    Returns the worker's counters: ``claimed``, ``completed``, ``failed`` (attempts
    that failed, retried or not), ``rescued``. Jobs scheduled for later are left alone;
    retries due within the drain run too.

    :param queues: queues to drain (default every queue).
    :param concurrency: worker threads (default 1: jobs run one by one, in order).
    :param timeout: seconds before giving up (``TimeoutError``).
    """
    worker = Worker(app, queues=queues, concurrency=concurrency, poll_interval=0.05,
                    listen=False, schema_wait=0, shutdown_grace=timeout)
    error: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(install_signal_handlers=False)
        except BaseException as e:  # noqa: BLE001
            error.append(e)

    thread = threading.Thread(target=run, name="pgqueue-drain", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    sql = ("select count(*) from pgqueue.jobs where (%(q)s::text[] is null or queue = any(%(q)s)) "
           "and ((state in ('available', 'scheduled', 'retryable') and run_at <= now() "
           "      and task = any(%(t)s)) or (state = 'running' and worker_id = %(w)s))")
    try:
        while thread.is_alive():
            if worker.last_heartbeat is not None:
                with app.connection() as conn:
                    (left,) = conn.execute(sql, {"q": queues, "t": list(app.tasks),
                                                 "w": worker.id}).fetchone()
                if left == 0 and worker._busy == 0 and not worker._running:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"drain did not finish within {timeout} s")
            time.sleep(0.02)
    finally:
        worker.stop()
        thread.join(timeout)
    if error:
        raise error[0]
    return dict(worker.stats)
