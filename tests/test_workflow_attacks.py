"""Workflow failure cases: prune, kills, cancels and odd results while workflows run.

Every assertion reads rows: pgqueue.jobs, pgqueue.workflows, pgqueue.job_dependencies
and public.side (one row per execution of the tasks in tests/apps/flows.py).
"""

from __future__ import annotations

import json
import time

import pytest

import pgqueue
from pgqueue import chord
from tests.apps.flows import register
from tests.conftest import wait_until


@pytest.fixture
def t(app):
    return register(app)


def callbacks(conn):
    return [json.loads(n) for (n,) in conn.execute(
        "select note from public.side where event = 'callback' order by id").fetchall()]


def test_prune_while_a_chord_runs_keeps_the_results_the_callback_needs(app, t, conn,
                                                                        start_worker):
    start_worker(app, concurrency=4, prune_after=None)
    h = chord([t.member.s(0), t.member.s(1), t.member.s(2, release_at=time.time() + 2.0)],
              t.collect.s(tag="prune")).enqueue()
    wait_until(lambda: conn.execute(
        "select count(*) from pgqueue.jobs where id = any(%s) and state = 'completed'",
        (h.job_ids[:2],)).fetchone()[0] == 2, 10, message="two members completed")
    # "pgqueue prune --older-than 0s" while the third member still runs
    conn.execute("select pgqueue.prune(interval '0 s')")
    assert conn.execute("select count(*) from pgqueue.job_dependencies where job_id = %s",
                        (h.job_ids[3],)).fetchone()[0] == 3
    assert h.result(timeout=15) == 3
    assert callbacks(conn) == [{"results": [0, 1, 2], "tag": "prune"}]
    # once the workflow is finished, its jobs may go
    conn.execute("select pgqueue.prune(interval '0 s')")
    assert conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s",
                        (h.id,)).fetchone()[0] == 0


def test_callback_whose_inputs_cannot_be_built_fails_instead_of_blocking_the_queue(
        app, t, conn, start_worker):
    """Eighteen 15 MiB results (each under the 16 MiB document limit) make a list larger
    than jsonb allows (256 MB): reading the callback's inputs fails. The callback must
    fail for good, not stay claimable while every claim of its queue errors."""
    @app.task(name="atk.big")
    def big(mb: int) -> str:
        return "x" * (mb * 1024 * 1024)

    start_worker(app, concurrency=3, prune_after=None)
    h = chord([big.s(15) for _ in range(18)], t.collect.s(tag="big"),
              ).enqueue(on_error=t.on_error.s())
    cb = h.job_ids[18]
    wait_until(lambda: conn.execute("select state from pgqueue.jobs where id = %s",
                                    (cb,)).fetchone()[0] == "discarded", 50,
               message="callback discarded")
    err = conn.execute("select errors -> -1 ->> 'message' from pgqueue.jobs where id = %s",
                       (cb,)).fetchone()[0]
    assert "inputs" in err
    # the queue is not blocked, and the workflow ended failed with its error callback run
    plain = t.add.enqueue(1, 2)
    wait_until(lambda: conn.execute("select state from pgqueue.jobs where id = %s",
                                    (plain.id,)).fetchone()[0] == "completed", 10,
               message="a plain job behind the callback completed")
    wait_until(lambda: conn.execute(
        "select count(*) from public.side where event = 'on_error'").fetchone()[0] == 1, 10,
        message="error callback ran")
    assert conn.execute("select state, remaining from pgqueue.workflows where id = %s",
                        (h.id,)).fetchone() == ("failed", 0)
    assert callbacks(conn) == []


def test_prune_removes_finished_workflows_once_their_steps_are_gone(app, start_worker, conn):
    @app.task(name="wfa.one")
    def one(x):
        return x

    start_worker(app, concurrency=2)
    handle = pgqueue.chain(one.s(1), one.s()).enqueue()
    assert handle.result(timeout=20) == 1
    wait_until(lambda: conn.execute("select finished_at is not null from pgqueue.workflows "
                                    "where id = %s", (handle.id,)).fetchone()[0], 10)
    assert conn.execute("select pgqueue.prune('0 seconds')").fetchone()[0] == 2
    conn.execute("select pgqueue.prune('0 seconds')")
    assert conn.execute("select count(*) from pgqueue.workflows where id = %s",
                        (handle.id,)).fetchone()[0] == 0
