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
