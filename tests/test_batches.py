"""Batches filled over time, and workflow steps that replace themselves (ctx.replace).

Every assertion reads rows: pgqueue.jobs, pgqueue.workflows, pgqueue.job_dependencies
and public.side (one row per execution of the tasks in tests/apps/flows.py).
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from click.testing import CliRunner

import pgqueue
from pgqueue import BatchSealed, EnqueueError, WorkflowFailed, chain
from tests.apps.flows import register
from tests.conftest import wait_until, wait_worker_registered


@pytest.fixture
def t(app):
    """The flows.* tasks registered on the test's app."""
    return register(app)


def side(conn, event):
    rows = conn.execute("select job_id, attempt, note, at from public.side where event = %s "
                        "order by id", (event,)).fetchall()
    return [(j, a, json.loads(n) if n else None, at) for j, a, n, at in rows]


def callbacks(conn):
    return [note["results"] for _, _, note, _ in side(conn, "callback")]


def seal_row(conn, batch_id):
    return conn.execute("select sealed_at, finished_at, state from pgqueue.workflows "
                        "where id = %s", (batch_id,)).fetchone()


def batch_view(conn, batch_id):
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("select * from pgqueue.batches where batch_id = %s",
                           (batch_id,)).fetchone()


def assert_edges_consistent(conn, wf_id):
    """deps_pending equals the unsatisfied edges of every step."""
    bad = conn.execute("""
        select j.id, j.deps_pending,
               (select count(*) from pgqueue.job_dependencies d
                 where d.job_id = j.id and not d.satisfied)
          from pgqueue.jobs j where j.workflow_id = %s
           and j.deps_pending <> (select count(*) from pgqueue.job_dependencies d
                                   where d.job_id = j.id and not d.satisfied)""",
                       (wf_id,)).fetchall()
    assert bad == []


# -- batches ------------------------------------------------------------------------------

def test_batch_filled_in_three_transactions_runs_its_callback_once_after_the_seal_50_times(
        app, t, conn, dsn, start_worker):
    """50 batches side by side, each filled in three transactions 0.5 s apart; hot
    workers finish each part before the next is added (every member done, batch still
    open: the callback must wait); then each is sealed, half of them while their third
    part is still running (the seal races the last completions)."""
    start_worker(app, concurrency=8)
    runs, part = 50, 4
    batches = [app.batch(callback=t.collect.s(tag=r)) for r in range(runs)]
    expected: list[list[int]] = [[] for _ in range(runs)]
    callback_ids = []
    for k in range(3):
        added = []
        for r, batch in enumerate(batches):
            with psycopg.connect(dsn) as tx:
                values = [r * 1000 + k * 100 + i for i in range(part)]
                added += batch.using(connection=tx).add(*[t.add.s(v) for v in values])
                expected[r] += values
        if k == 0:
            callback_ids = [conn.execute("select batch_callback_job_id from pgqueue.workflows "
                                         "where id = %s", (b.id,)).fetchone()[0] for b in batches]
        if k == 2:
            added = [i for r in range(0, runs, 2) for i in added[r * part:(r + 1) * part]]
        wait_until(lambda ids=added: conn.execute(
            "select count(*) from pgqueue.jobs where id = any(%s) and state = 'completed'",
            (ids,)).fetchone()[0] == len(ids), 20, interval=0.01, message="part finished")
        assert conn.execute("select count(*) from pgqueue.jobs where id = any(%s) "
                            "and state <> 'pending'", (callback_ids,)).fetchone()[0] == 0
        if k < 2:
            time.sleep(0.5)   # the gap between the parts is the scenario, not a wait
    assert {batch_view(conn, b.id)["state"] for b in batches} == {"open"}
    for batch in batches:
        batch.seal()
    for batch in batches:
        assert batch.result(timeout=20) == 3 * part
    cb = side(conn, "callback")
    assert sorted(note["tag"] for _, _, note, _ in cb) == list(range(runs))   # once each
    for _, _, note, at in cb:
        assert note["results"] == expected[note["tag"]]
        sealed_at, _, state = seal_row(conn, batches[note["tag"]].id)
        assert state == "completed" and at >= sealed_at
    for batch in batches:
        assert_edges_consistent(conn, batch.id)


def test_a_batch_sealed_before_its_members_finish_runs_the_callback_after_the_last(
        app, t, conn, start_worker):
    release = time.time() + 1.0
    batch = app.batch(callback=t.collect.s(tag="early"))
    batch.add(*[t.member.s(i, release_at=release, log=True) for i in range(5)])
    assert batch.seal() is True
    assert batch.seal() is False            # sealing twice is harmless
    assert batch_view(conn, batch.id)["state"] == "sealed"
    start_worker(app, concurrency=5)
    assert batch.result(timeout=15) == 5
    cb = side(conn, "callback")
    last = max(at for _, _, _, at in side(conn, "member"))
    assert len(cb) == 1 and cb[0][2]["results"] == [0, 1, 2, 3, 4] and cb[0][3] > last
    v = batch_view(conn, batch.id)
    assert (v["state"], v["members"], v["completed"], v["unfinished"],
            v["callback_state"]) == ("finished", 5, 5, 0, "completed")


def test_an_empty_batch_sealed_runs_its_callback_at_once_with_an_empty_list(
        app, t, conn, start_worker):
    start_worker(app, concurrency=2)
    batch = app.batch(callback=t.collect.s(tag="empty"))
    batch.seal()
    assert batch.result(timeout=10) == 0
    assert callbacks(conn) == [[]]


def test_a_batch_without_callback_has_its_members_results_in_order(app, t, conn, start_worker):
    start_worker(app, concurrency=4)
    batch = app.batch(name="plain")
    batch.add(t.add.s(3), t.add.s(1))
    batch.add(t.add.s(2))
    batch.seal()
    assert batch.result(timeout=10) == [3, 1, 2]


def test_adding_to_a_sealed_batch_raises_and_a_rolled_back_add_adds_nothing(
        app, t, conn, dsn):
    batch = app.batch(callback=t.collect.s())
    batch.add(t.add.s(1))
    with psycopg.connect(dsn) as tx:
        batch.using(connection=tx).add(t.add.s(2), t.add.s(3))
        tx.rollback()
    v = batch_view(conn, batch.id)
    assert v["members"] == 1 and v["unfinished"] == 1
    assert conn.execute("select deps_pending from pgqueue.jobs where id = %s",
                        (v["callback_job_id"],)).fetchone()[0] == 2    # seal + 1 member
    batch.seal()
    with pytest.raises(BatchSealed, match=f"batch {batch.id} is sealed"):
        batch.add(t.add.s(4))
    other = app.batch_by_id(batch.id)      # from anywhere that knows the id
    with pytest.raises(BatchSealed):
        other.add(t.add.s(5))
    assert batch_view(conn, batch.id)["members"] == 1
    with pytest.raises(EnqueueError):
        batch.add(t.add)                     # not a signature
    with pytest.raises(TypeError):
        batch.add(t.add.s())                 # arguments that do not bind


def test_a_batch_opened_in_a_rolled_back_transaction_does_not_exist(app, t, conn, dsn):
    batch = app.batch(callback=t.collect.s())
    with psycopg.connect(dsn) as tx:
        bid = batch.using(connection=tx).open()
        batch.using(connection=tx).add(t.add.s(1))
        tx.rollback()
    assert conn.execute("select count(*) from pgqueue.workflows where id = %s",
                        (bid,)).fetchone()[0] == 0


def test_a_failed_member_cancels_the_callback_and_runs_on_error_once(
        app, t, conn, start_worker):
    start_worker(app, concurrency=4)
    batch = app.batch(callback=t.collect.s(), on_error=t.on_error.s(tag="batch"))
    ids = batch.add(t.add.s(1), t.flaky.s(0, fail_attempts=5).set(max_attempts=1))
    batch.seal()
    with pytest.raises(WorkflowFailed):
        batch.result(timeout=10)
    wait_until(lambda: len(side(conn, "on_error")) == 1, 10)
    assert side(conn, "on_error")[0][2]["failed_job_id"] == ids[1]
    assert callbacks(conn) == []
    assert batch_view(conn, batch.id)["callback_state"] == "cancelled"


def test_a_member_killed_after_finishing_is_rerun_and_the_callback_runs_once(
        app, t, conn, spawn_worker):
    a = spawn_worker("tests.apps.flows", "-c", "4", "--heartbeat-interval", "0.3",
                     "--stale-after", "1")
    wait_worker_registered(conn, 1)
    n = 10
    batch = app.batch(callback=t.collect.s(tag="kill"))
    ids = batch.add(t.victim.s(0, hold=60))
    ids += batch.add(*[t.victim.s(i) for i in range(1, n)])
    batch.seal()
    wait_until(lambda: conn.execute(
        "select count(*) from public.side where event = 'victim' and job_id = %s",
        (ids[0],)).fetchone()[0] == 1, 20, message="victim started")
    wait_until(lambda: conn.execute(
        "select count(*) from pgqueue.jobs where id = any(%s) and state = 'completed'",
        (ids[1:],)).fetchone()[0] == n - 1, 20, message="other members completed")
    a.kill()
    assert conn.execute("select state from pgqueue.jobs where id = %s",
                        (ids[0],)).fetchone()[0] == "running"
    spawn_worker("tests.apps.flows", "-c", "4", "--heartbeat-interval", "0.3",
                 "--stale-after", "1")
    assert batch.result(timeout=30) == n
    assert conn.execute("select array_agg(attempt order by id) from public.side "
                        "where event = 'victim' and job_id = %s", (ids[0],)).fetchone()[0] == [1, 2]
    assert callbacks(conn) == [list(range(n))]
    assert_edges_consistent(conn, batch.id)


def test_batches_from_sql_and_in_the_views_and_the_cli(app, t, conn, dsn, start_worker):
    (bid,) = conn.execute(
        "select pgqueue.open_batch(jsonb_build_object('task', 'flows.total'), null, 'sql')"
    ).fetchone()
    conn.execute("select pgqueue.add_to_batch(%s, '[{\"task\": \"flows.add\", \"args\": [2]},"
                 " {\"task\": \"flows.add\", \"args\": [5]}]')", (bid,))
    roles = conn.execute("select batch_role, batch_state from pgqueue.workflow_steps "
                         "where workflow_id = %s order by job_id", (bid,)).fetchall()
    assert roles == [("seal", "open"), ("callback", "open"), ("member", "open"),
                     ("member", "open")]
    out = CliRunner().invoke(_cli(), ["--dsn", dsn, "workflows", "show", str(bid)])
    assert out.exit_code == 0, out.output
    assert "batch: open, 2 members" in out.output and "flows.total" in out.output
    assert conn.execute("select pgqueue.seal_batch(%s)", (bid,)).fetchone()[0] is True
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        conn.execute("select pgqueue.add_to_batch(%s, '[{\"task\": \"flows.add\"}]')", (bid,))
    start_worker(app, concurrency=2)
    assert pgqueue.WorkflowHandle(app, bid).result(timeout=10) == 7
    out = CliRunner().invoke(_cli(), ["--dsn", dsn, "workflows", "show", str(bid)])
    assert "batch: finished" in out.output


def _cli():
    from pgqueue.cli import main
    return main


# -- ctx.replace --------------------------------------------------------------------------

@pytest.mark.parametrize("n", [5, 0])
def test_a_step_that_replaces_itself_with_a_group_feeds_the_next_step(
        app, t, conn, start_worker, n):
    start_worker(app, concurrency=4)
    h = chain(t.split.s(n), t.collect.s(tag="split")).enqueue()
    assert h.result(timeout=15) == n
    assert callbacks(conn) == [list(range(n))]
    split = conn.execute("select state, result, replaced_by from pgqueue.jobs where id = %s",
                         (h.job_ids[0],)).fetchone()
    assert split[0] == "completed" and split[1] is None and len(split[2]) == n
    row = conn.execute("select total, remaining, completed from pgqueue.workflows "
                       "where id = %s", (h.id,)).fetchone()
    assert row == (2 + n, 0, 2 + n)
    assert_edges_consistent(conn, h.id)


def test_nested_replacement_and_a_replaced_last_step_give_the_workflow_result(
        app, t, conn, start_worker):
    start_worker(app, concurrency=4)
    h = chain(t.split.s(3, nest=2), t.collect.s()).enqueue()
    assert h.result(timeout=15) == 3
    assert callbacks(conn) == [[[[0, 1], 1], 1, 2]]
    # a replaced step that is the workflow's last: its replacement's result is the result
    assert t.split.s(3).enqueue().result(timeout=15) == [0, 1, 2]
    assert chain(t.add.s(1), t.split.si(2)).enqueue().result(timeout=15) == [0, 1]


def test_replace_outside_a_workflow_step_raises_a_clear_error(app, t, conn, start_worker):
    start_worker(app, concurrency=1)
    j = t.replace_outside.enqueue()
    with pytest.raises(pgqueue.JobFailed):
        j.result(timeout=10)
    err = conn.execute("select errors -> -1 from pgqueue.jobs where id = %s", (j.id,)).fetchone()[0]
    assert err["type"] == "pgqueue.errors.EnqueueError" and "not a workflow step" in err["message"]


def test_a_rolled_back_completing_transaction_adds_nothing(app, t, conn, start_worker):
    """The transaction that records the replacement fails twice (after the replacement's
    rows were written): nothing of it stays, and the step retries as usual."""
    conn.execute("create sequence public.boom")
    conn.execute("""
        create function public.boom() returns trigger language plpgsql as $$
        begin
            if nextval('public.boom') <= 2 then
                raise exception 'completing transaction fails';
            end if;
            return null;
        end $$""")
    conn.execute("""
        create trigger boom after update of state on pgqueue.jobs for each row
        when (new.task = 'flows.split' and new.state = 'completed')
        execute function public.boom()""")
    start_worker(app, concurrency=2)
    h = chain(t.split.s(4), t.collect.s()).enqueue()
    assert h.result(timeout=15) == 4
    assert callbacks(conn) == [[0, 1, 2, 3]]
    split = conn.execute("select attempt, errors from pgqueue.jobs where id = %s",
                         (h.job_ids[0],)).fetchone()
    assert split[0] == 2 and "completing transaction fails" in split[1][0]["message"]
    assert [a for _, a, _, _ in side(conn, "split")] == [1, 2]
    # one replacement only: 4 members, the split and the callback
    assert conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s",
                        (h.id,)).fetchone()[0] == 6
    assert conn.execute("select count(*) from pgqueue.workflows").fetchone()[0] == 1


def test_a_runaway_replacement_is_stopped_by_the_step_bound(app, t, conn, start_worker):
    start_worker(app, concurrency=2)
    h = chain(t.split.s(3), t.collect.s()).enqueue()
    conn.execute("update pgqueue.workflows set max_steps = 4 where id = %s", (h.id,))
    with pytest.raises(WorkflowFailed) as e:
        h.result(timeout=10)
    assert e.value.failures[0]["error"]["type"] == "pgqueue.StepLimitExceeded"
    assert conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s",
                        (h.id,)).fetchone()[0] == 2


def test_a_replaced_batch_member_feeds_the_batch_callback(app, t, conn, start_worker):
    start_worker(app, concurrency=4)
    batch = app.batch(callback=t.collect.s())
    batch.add(t.add.s(7), t.split.s(2), t.add.s(9))
    batch.seal()
    assert batch.result(timeout=15) == 3
    assert callbacks(conn) == [[7, [0, 1], 9]]
