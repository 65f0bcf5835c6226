"""Attacks on the newest features, with real PostgreSQL, processes and signals."""

from __future__ import annotations

import contextlib
import os
import signal

import psycopg
import pytest

import pgqueue

from .apps import hostile
from .conftest import wait_until


@pytest.fixture
def happ(dsn):
    a = hostile.register(pgqueue.App(dsn))
    yield a
    a.close()


def job(dsn, job_id):
    """(state, attempt, errors) of a job."""
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute("select state, attempt, errors from pgqueue.jobs where id = %s",
                         (job_id,)).fetchone()


def test_a_crashed_child_whose_grandchild_holds_its_pipe_fails_the_attempt(
        happ, dsn, start_worker, tmp_path):
    """The task forks, then its child segfaults: the grandchild still holds the pipe to
    the worker, so no EOF comes; the child's exit alone fails the attempt and frees the
    slot."""
    start_worker(happ, executor="process", concurrency=1, app_spec=hostile.SPEC)
    pid_file = tmp_path / "grandchild"
    j = happ.tasks["hostile.fork_then_segv"].enqueue(60, str(pid_file))
    try:
        wait_until(lambda: job(dsn, j.id)[0] == "discarded", 15, message="attempt failed")
        errors = job(dsn, j.id)[2]
        assert errors[0]["type"] == "pgqueue.ChildProcessDied", errors
        assert "SIGSEGV" in errors[0]["message"], errors
        # the slot came back: the next job runs in a new child
        assert isinstance(happ.tasks["hostile.pid"].enqueue().result(timeout=15), int)
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    return True


def test_busy_children_die_with_a_sigkilled_worker(dsn, spawn_worker):
    """SIGKILL the worker while its children run jobs: each child must die too, or its
    job runs on while a live worker rescues it and runs it again."""
    w = spawn_worker("tests.apps.procs", "--executor", "process", "-c", "2")
    ids = []
    with psycopg.connect(dsn, autocommit=True) as c:
        for _ in range(2):
            ids.append(c.execute("select pgqueue.enqueue('procs.nap', '[60, 0]')"
                                 ).fetchone()[0])
        wait_until(lambda: c.execute("select count(*) from public.side where event = "
                                     "'start'").fetchone()[0] == 2, 30,
                   message="both jobs started in children")
        pids = [r[0] for r in c.execute("select pid from public.side")]
    try:
        w.signal(signal.SIGKILL)
        w.proc.wait(10)
        wait_until(lambda: not any(_alive(p) for p in pids), 5,
                   message="the orphaned children to die")
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
