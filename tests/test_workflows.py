"""Workflows: chain, group, chord, DAG; fan-in at commit, exactly-once callbacks.

Cases B17, B19, B20 and B22 of ../shared/cases/README.md, plus a 1,000-member chord on
four worker processes, a chord committed late, and a member killed with SIGKILL.
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
from pgqueue import EnqueueError, WorkflowFailed, chain, chord, group
from tests.apps.flows import register
from tests.conftest import wait_until, wait_worker_registered

TERMINAL = ("completed", "discarded", "cancelled")


@pytest.fixture
def t(app):
    """The flows.* tasks registered on the test's app."""
    return register(app)


def wf_row(conn, wf_id):
    return conn.execute("select state, remaining, completed, discarded, cancelled, "
                        "failed_job_ids, failures, finished_at from pgqueue.workflows "
                        "where id = %s", (wf_id,)).fetchone()


def wf_state(conn, wf_id):
    return conn.execute("select state from pgqueue.workflows where id = %s",
                        (wf_id,)).fetchone()[0]


def wf_done(conn, wf_id):
    return conn.execute("select finished_at is not null from pgqueue.workflows where id = %s",
                        (wf_id,)).fetchone()[0]


def side(conn, event, job_id=None):
    rows = conn.execute(
        "select job_id, attempt, note, at from public.side where event = %s "
        "and (%s::bigint is null or job_id = %s) order by id",
        (event, job_id, job_id)).fetchall()
    return [(j, a, json.loads(n) if n else None, at) for j, a, n, at in rows]


def job(conn, job_id):
    return conn.execute("select state, attempt, result, errors, started_at, finished_at, "
                        "deps_pending from pgqueue.jobs where id = %s", (job_id,)).fetchone()


def assert_edges_consistent(conn, wf_id):
    """Every edge satisfied once; every counter back to 0, never negative (CHECK)."""
    bad = conn.execute("""
        select j.id, j.deps_pending,
               (select count(*) from pgqueue.job_dependencies d
                 where d.job_id = j.id and not d.satisfied) as open
          from pgqueue.jobs j where j.workflow_id = %s
           and j.deps_pending <> (select count(*) from pgqueue.job_dependencies d
                                   where d.job_id = j.id and not d.satisfied)""",
                       (wf_id,)).fetchall()
    assert bad == []


# -- shapes and the SQL contract (no worker) ------------------------------------------------

def test_enqueue_writes_rows_and_edges_in_one_statement(app, t, conn):
    flow = chain(t.add.s(1, 2), chord([t.add.s(10), t.add.s(20)], t.total.s()), t.ident.s())
    h = flow.enqueue(name="shapes", on_error=t.on_error.s())
    rows = conn.execute("select id, task, state, deps_pending, inputs from pgqueue.jobs "
                        "where workflow_id = %s order by id", (h.id,)).fetchall()
    assert [r[0] for r in rows] == h.job_ids
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("flows.add", "available", 0, "none"),
        ("flows.add", "pending", 1, "previous"),
        ("flows.add", "pending", 1, "previous"),
        ("flows.total", "pending", 2, "results"),
        ("flows.ident", "pending", 1, "previous"),
        ("flows.on_error", "pending", 0, "error"),
    ]
    edges = conn.execute("select job_id, depends_on, position from pgqueue.job_dependencies "
                         "where job_id = any(%s) order by job_id, position", (h.job_ids,)).fetchall()
    a, m1, m2, cb, last, _err = h.job_ids
    assert edges == [(m1, a, 0), (m2, a, 0), (cb, m1, 0), (cb, m2, 1), (last, cb, 0)]
    w = conn.execute("select name, state, total, remaining, on_error_job_id, result_job_ids, "
                     "result_is_list from pgqueue.workflows where id = %s", (h.id,)).fetchone()
    assert w == ("shapes", "running", 5, 5, h.job_ids[-1], [last], False)


def test_bad_shapes_and_arguments_fail_before_sql(app, t, dsn):
    with psycopg.connect(dsn) as c:
        with pytest.raises(EnqueueError):
            group().using(connection=c).enqueue()
        with pytest.raises(EnqueueError):
            chain().using(connection=c).enqueue()
        with pytest.raises(EnqueueError):
            t.add.s(1).set(priority=10**6)
        with pytest.raises(EnqueueError):
            t.add.s(1).set(colour="red")
        with pytest.raises(EnqueueError):
            chain(t.add.s(1), t.add.s()).using(connection=c, on_error=t.on_error.si()).enqueue()
        with pytest.raises(TypeError):  # SerializationError
            chord([t.add.s({1, 2})], t.total.s()).using(connection=c).enqueue()
        wf = pgqueue.Workflow()
        with pytest.raises(EnqueueError):
            wf.add(t.add.s(1), depends_on=["nope"])
        # the caller's transaction is still usable and nothing was written
        assert c.execute("select count(*) from pgqueue.jobs").fetchone() == (0,)
        assert c.execute("select count(*) from pgqueue.workflows").fetchone() == (0,)


def test_sql_producer_gets_a_clear_error_for_a_forward_dependency(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="earlier step"):
        conn.execute("""select pgqueue.enqueue_workflow(
            '[{"task": "a", "depends_on": [1]}, {"task": "b"}]'::jsonb)""")


# -- B20: edge sizes -----------------------------------------------------------------------

def test_b20_edge_sizes_complete(app, t, conn, start_worker):
    start_worker(app, concurrency=4)
    t0 = time.monotonic()
    one = chord([t.ident.s(7)], t.collect.s(tag="a")).enqueue()
    empty = chord([], t.collect.s(tag="b")).enqueue()
    g1 = group(t.ident.s(3)).enqueue()
    c1 = chain(t.ident.s(4)).enqueue()
    for h in (one, empty, g1, c1):
        wait_until(lambda h=h: wf_done(conn, h.id), 5, message=f"workflow {h.id} done")
    assert time.monotonic() - t0 < 5
    assert [wf_state(conn, h.id) for h in (one, empty, g1, c1)] == ["completed"] * 4
    cbs = {n["tag"]: n["results"] for _, _, n, _ in side(conn, "callback")}
    assert cbs == {"a": [7], "b": []}
    assert len(side(conn, "callback")) == 2
    assert one.result(timeout=5) == 1 and empty.result(timeout=5) == 0
    assert g1.result(timeout=5) == [3]
    assert c1.result(timeout=5) == 4


def test_nesting_group_of_chains_dag_and_results(app, t, conn, start_worker):
    start_worker(app, concurrency=8)
    # chain(a, group(b, c), d): d receives the list
    h1 = chain(t.add.s(1, 1), group(t.add.s(10), t.add.s(20)), t.total.s()).enqueue()
    # group of chains, as a chord header
    h2 = chord([chain(t.add.s(1, 0), t.add.s(1)), chain(t.add.s(5, 0), t.add.s(5))],
               t.total.s()).enqueue()
    # a chord inside a chain, then an immutable step
    h3 = chain(t.add.s(2, 0), chord([t.add.s(1), t.add.s(2)], t.total.s()), t.add.s(100),
               t.ident.si("end")).enqueue()
    # a group as the whole workflow, nested groups flattened
    h4 = group(t.add.s(1), group(t.add.s(2), t.add.s(3))).enqueue()
    # DAG builder
    wf = pgqueue.Workflow("dag")
    wf.add(t.add.s(1, 2), name="x")
    wf.add(t.add.s(10, 20), name="y")
    wf.add(t.total.s(), name="sum", depends_on=["x", "y"])
    wf.add(t.add.s(1000), name="plus", depends_on=["sum"])
    wf.add(t.ident.si("side"), name="after-x", after=["x"])
    h5 = wf.enqueue()
    assert h1.result(timeout=10) == 2 + 10 + 2 + 20
    assert h2.result(timeout=10) == 2 + 10
    assert h3.result(timeout=10) == "end"
    assert h4.result(timeout=10) == [1, 2, 3]
    assert h5.result(timeout=10) == [1033, "side"]
    steps = {s["step"]: s for s in h5.steps()}
    assert steps["sum"]["state"] == "completed" and steps["plus"]["depends_on"] == [steps["sum"]["job_id"]]
    for h in (h1, h2, h3, h4, h5):
        assert wf_state(conn, h.id) == "completed"
        assert_edges_consistent(conn, h.id)


def test_delay_counts_from_readiness_on_the_database_clock(app, t, conn, start_worker):
    start_worker(app, concurrency=2)
    h = chain(t.add.s(1, 1), t.add.s(1).set(delay=1.0)).enqueue()
    assert h.result(timeout=10) == 3
    a, b = h.job_ids
    gap = conn.execute("select extract(epoch from b.started_at - a.finished_at) "
                       "from pgqueue.jobs a, pgqueue.jobs b where a.id = %s and b.id = %s",
                       (a, b)).fetchone()[0]
    assert 0.9 <= float(gap) < 5


# -- B22: chains with retries and failures ------------------------------------------------

def _chain5(t, fail_at=None, fail_attempts=0, permanent=False):
    steps = []
    for label in "abcde":
        kw = {}
        if label == fail_at:
            kw["fail_attempts"] = fail_attempts
        sig = t.step.s([], label, **kw) if label == "a" else t.step.s(label, **kw)
        if label == fail_at and permanent:
            sig.set(max_attempts=1)
        steps.append(sig)
    return chain(*steps)


def test_b22_chain_retried_middle_step_and_failures(app, t, conn, start_worker):
    start_worker(app, concurrency=4)
    h1 = _chain5(t, "c", 1).enqueue(on_error=t.on_error.s(tag=1))
    h2 = _chain5(t, "e", 99, permanent=True).enqueue(on_error=t.on_error.s(tag=2))
    h3 = _chain5(t, "b", 99, permanent=True).enqueue(on_error=t.on_error.s(tag=3))
    for h in (h1, h2, h3):
        wait_until(lambda h=h: wf_done(conn, h.id), 30, message=f"chain {h.id} done")
        wait_until(lambda h=h: job(conn, h.job_ids[-1])[0] in TERMINAL, 10,
                   message="error callback finished")

    # Chain 1: every step ran, c twice, e received d's result, completed.
    ids = h1.job_ids[:5]
    assert [job(conn, i)[0] for i in ids] == ["completed"] * 5
    assert [len(side(conn, "step", i)) for i in ids] == [1, 1, 2, 1, 1]
    assert side(conn, "step", ids[4])[0][2]["received"] == ["a", "b", "c", "d"]
    assert h1.result(timeout=5) == ["a", "b", "c", "d", "e"]
    assert wf_state(conn, h1.id) == "completed"
    assert job(conn, h1.job_ids[5])[0] == "cancelled"        # error callback not needed
    c_started, e_started = job(conn, ids[2])[4], job(conn, ids[4])[4]
    assert e_started > c_started

    # Chain 2: a-d completed, e discarded, chain failed, error callback once.
    ids = h2.job_ids[:5]
    assert [job(conn, i)[0] for i in ids] == ["completed"] * 4 + ["discarded"]
    w = wf_row(conn, h2.id)
    assert w[0] == "failed" and w[5] == [ids[4]]
    errs = [n for _, _, n, _ in side(conn, "on_error") if n["tag"] == 2]
    assert len(errs) == 1 and errs[0]["failed_job_id"] == ids[4]
    assert errs[0]["failure"]["state"] == "discarded"
    assert "step e fails" in errs[0]["failure"]["error"]["message"]
    with pytest.raises(WorkflowFailed) as ei:
        h2.result(timeout=5)
    assert ei.value.failures[0]["job_id"] == ids[4]

    # Chain 3: b discarded; c, d, e never ran and are cancelled naming b.
    ids = h3.job_ids[:5]
    assert [job(conn, i)[0] for i in ids] == ["completed", "discarded"] + ["cancelled"] * 3
    assert [len(side(conn, "step", i)) for i in ids] == [1, 1, 0, 0, 0]
    for i in ids[2:]:
        last = job(conn, i)[3][-1]
        assert last["type"] == "pgqueue.DependencyFailed" and last["job_id"] == ids[1]
    w = wf_row(conn, h3.id)
    assert w[0] == "failed" and w[5] == [ids[1]] and w[1] == 0
    assert len([n for _, _, n, _ in side(conn, "on_error") if n["tag"] == 3]) == 1
    for h in (h1, h2, h3):
        assert_edges_consistent(conn, h.id)


# -- B19: retried, cancelled and failed members ---------------------------------------------

def test_b19_retries_cancel_and_failure_in_chords(app, t, conn, start_worker):
    def members(tag):
        return [t.flaky.s(1), t.flaky.s(2), t.flaky.s(3, fail_attempts=2),
                t.flaky.s(4).set(delay=3600),                      # cancelled while queued
                t.flaky.s(5, fail_attempts=99).set(max_attempts=2)]
    x = chord(members("x"), t.outcomes.s(tag="x"), any_outcome=True).enqueue()
    y = chord(members("y"), t.collect.s(tag="y"), on_error=t.on_error.s(tag="y")).enqueue()
    for h in (x, y):
        assert pgqueue.Job(app, h.job_ids[3]).cancel() == "cancelled"
    start_worker(app, concurrency=8)
    for h in (x, y):
        wait_until(lambda h=h: wf_done(conn, h.id), 30, message=f"chord {h.id} done")
    wait_until(lambda: job(conn, y.job_ids[-1])[0] in TERMINAL, 10, message="Y's error callback")

    # X: the any-outcome callback ran once, after m3's third attempt, with every outcome.
    m3 = job(conn, x.job_ids[2])
    assert m3[0] == "completed" and m3[1] == 3
    assert [job(conn, i)[0] for i in x.job_ids[:5]] == [
        "completed", "completed", "completed", "cancelled", "discarded"]
    cb = side(conn, "outcomes")
    assert len(cb) == 1
    outs = cb[0][2]["outcomes"]
    assert [o["state"] for o in outs] == ["completed", "completed", "completed", "cancelled",
                                          "discarded"]
    assert [o["result"] for o in outs] == [1, 2, 3, None, None]
    assert "planned failure" in outs[4]["error"]["message"]
    assert job(conn, x.job_ids[5])[4] >= m3[5]          # callback started after m3 ended
    assert len(side(conn, "flaky", x.job_ids[2])) == 3
    assert len(side(conn, "flaky", x.job_ids[4])) == 2

    # Y: failed naming m4 and m5; the success callback never ran; error callback once.
    w = wf_row(conn, y.id)
    assert w[0] == "failed"
    assert sorted(w[5]) == sorted([y.job_ids[3], y.job_ids[4]])
    assert {f["state"] for f in w[6]} == {"cancelled", "discarded"}
    assert job(conn, y.job_ids[5])[0] == "cancelled"
    assert job(conn, y.job_ids[5])[3][-1]["type"] == "pgqueue.DependencyFailed"
    assert [n for _, _, n, _ in side(conn, "callback") if n["tag"] == "y"] == []
    errs = [n for _, _, n, _ in side(conn, "on_error") if n["tag"] == "y"]
    assert len(errs) == 1 and errs[0]["failed_job_id"] == y.job_ids[3]   # the first failure
    for h in (x, y):
        assert_edges_consistent(conn, h.id)
        assert conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s "
                            "and state = 'pending'", (h.id,)).fetchone() == (0,)


def test_cancel_workflow_stops_what_has_not_started(app, t, conn, start_worker):
    h = chain(t.add.s(1, 1).set(delay=3600), t.add.s(1), t.add.s(1)).enqueue(
        on_error=t.on_error.s())
    assert h.cancel() == "cancelled"
    assert [job(conn, i)[0] for i in h.job_ids] == ["cancelled"] * 4
    w = wf_row(conn, h.id)
    assert w[0] == "cancelled" and w[1] == 0 and w[5] == []
    with pytest.raises(WorkflowFailed):
        h.result(timeout=2)


def test_manual_retry_of_a_failed_member_never_decrements_twice(app, t, conn, start_worker):
    h = chord([t.flaky.s(1, fail_attempts=1).set(max_attempts=1), t.flaky.s(2)],
              t.outcomes.s(), any_outcome=True).enqueue()
    start_worker(app, concurrency=2)
    wait_until(lambda: wf_done(conn, h.id), 10, message="workflow done")
    assert len(side(conn, "outcomes")) == 1
    assert pgqueue.Job(app, h.job_ids[0]).retry() == "available"
    wait_until(lambda: job(conn, h.job_ids[0])[0] == "completed", 10, message="retried member")
    wait_until(lambda: wf_done(conn, h.id), 10, message="workflow done again")
    assert len(side(conn, "outcomes")) == 1
    assert job(conn, h.job_ids[2])[6] == 0
    assert_edges_consistent(conn, h.id)


def test_a_retried_callback_waits_for_members_retried_before_it(app, t, conn, start_worker):
    # A cancelled member cancels the callback (DependencyFailed). Retrying the member,
    # then the callback (as "Retry all" of the cancelled jobs does, in id order), must
    # not start the callback before the members end: it waits, pending, and gets every
    # member's result. Before, the callback became available at once and ran with
    # [None, None, None] while the members were still queued.
    h = chord([t.add.s(1), t.add.s(2), t.add.s(3)], t.collect.s()).enqueue()
    m1, _, _, cb = h.job_ids
    conn.execute("select pgqueue.cancel(%s)", (m1,))
    assert job(conn, cb)[0] == "cancelled"
    # in one statement, in id order: the dashboard's bulk retry
    states = [r[0] for r in conn.execute(
        "select pgqueue.retry(j.id) from pgqueue.jobs j where j.workflow_id = %s "
        "and j.state = 'cancelled' order by j.id", (h.id,))]
    assert states == ["available", "pending"]
    assert job(conn, cb)[0] == "pending" and job(conn, cb)[6] == 3
    assert_edges_consistent(conn, h.id)
    start_worker(app, concurrency=4)
    wait_until(lambda: job(conn, cb)[0] == "completed", 15, message="the callback")
    [(_, _, note, _)] = side(conn, "callback", cb)
    assert note["results"] == [1, 2, 3]
    started = conn.execute("select started_at from pgqueue.jobs where id = %s", (cb,)
                           ).fetchone()[0]
    last_member = conn.execute("select max(finished_at) from pgqueue.jobs where id = any(%s)",
                               (h.job_ids[:3],)).fetchone()[0]
    assert started >= last_member
    assert_edges_consistent(conn, h.id)


def test_retrying_a_step_whose_needed_dependency_stays_failed_is_refused(app, t, conn, dsn):
    h = chord([t.add.s(1), t.add.s(2)], t.collect.s()).enqueue()
    m1, _, cb = h.job_ids
    conn.execute("select pgqueue.cancel(%s)", (m1,))
    before = job(conn, cb)
    with pytest.raises(pgqueue.RetryRefused, match=f"#{m1} flows.add cancelled") as e:
        pgqueue.Job(app, cb).retry()
    assert e.value.job_id == cb and "retry those steps first" in str(e.value)
    assert job(conn, cb) == before
    from pgqueue.cli import main
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "retry", str(cb)])
    assert res.exit_code == 1 and f"#{m1} flows.add cancelled" in res.output
    # the member first, then the step: it waits for the member
    assert pgqueue.Job(app, m1).retry() == "available"
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "retry", str(cb)])
    assert res.exit_code == 0, res.output
    assert "pending (a workflow step: it runs once its dependencies have completed)" \
        in res.output
    # a pending job is not retried again
    res = CliRunner().invoke(main, ["--dsn", dsn, "jobs", "retry", str(cb)])
    assert res.exit_code == 1 and "is pending" in res.output
    assert_edges_consistent(conn, h.id)


def test_a_retried_any_outcome_callback_waits_only_for_unfinished_members(app, t, conn,
                                                                          start_worker):
    h = chord([t.add.s(1), t.add.s(2)], t.outcomes.s(), any_outcome=True).enqueue()
    m1, m2, cb = h.job_ids
    conn.execute("select pgqueue.cancel(%s)", (m1,))
    conn.execute("select pgqueue.cancel(%s)", (m2,))
    assert job(conn, cb)[0] == "available"          # every member ended: it may run
    conn.execute("select pgqueue.cancel(%s)", (cb,))
    assert pgqueue.Job(app, m2).retry() == "available"
    assert pgqueue.Job(app, cb).retry() == "pending"    # m1 stays cancelled: fine here
    start_worker(app, concurrency=2)
    wait_until(lambda: job(conn, cb)[0] == "completed", 15, message="the callback")
    assert job(conn, cb)[2] == ["cancelled", "completed"]
    assert_edges_consistent(conn, h.id)


def test_a_waiting_any_outcome_callback_waits_again_for_a_retried_member(app, t, conn,
                                                                        start_worker):
    # m1 cancelled: the callback (any outcome) still waits for m2. m1 retried: the
    # callback must wait for m1's new outcome, not start when m2 ends with m1 running.
    h = chord([t.add.s(1), t.add.s(2)], t.outcomes.s(), any_outcome=True).enqueue()
    m1, m2, cb = h.job_ids
    conn.execute("select pgqueue.cancel(%s)", (m1,))
    assert job(conn, cb)[0] == "pending" and job(conn, cb)[6] == 1
    assert pgqueue.Job(app, m1).retry() == "available"
    assert job(conn, cb)[6] == 2
    conn.execute("select pgqueue.cancel(%s)", (m2,))
    assert job(conn, cb)[0] == "pending" and job(conn, cb)[6] == 1
    assert_edges_consistent(conn, h.id)
    start_worker(app, concurrency=2)
    wait_until(lambda: job(conn, cb)[0] == "completed", 15, message="the callback")
    assert job(conn, cb)[2] == ["completed", "cancelled"]
    assert_edges_consistent(conn, h.id)


def test_error_callbacks_and_seal_steps_are_retried_only_when_that_means_something(
        app, t, conn):
    # cancel_workflow cancels the error callback: no step failed, so retrying it (the
    # dashboard's "Retry all" of the workflow's cancelled jobs) must not run it
    h = chain(t.add.s(1), t.add.s(2)).enqueue(on_error=t.on_error.s())
    conn.execute("select pgqueue.cancel_workflow(%s)", (h.id,))
    rows = conn.execute("select r.id, r.state, r.refused from pgqueue.retry_many(array("
                        "select j.id from pgqueue.jobs j where j.workflow_id = %s)) r "
                        "order by r.id", (h.id,)).fetchall()
    err = rows[-1]
    assert [r[1] for r in rows[:-1]] == ["available", "pending"]
    assert err[1] == "cancelled" and "error callback" in err[2] and "runs only after" in err[2]
    with pytest.raises(pgqueue.RetryRefused, match="error callback"):
        pgqueue.Job(app, err[0]).retry()
    # a batch cancelled before its seal cannot be reopened: its seal step is refused,
    # so is its callback; its members can still run on their own
    b = conn.execute("select pgqueue.open_batch(%s::jsonb)",
                     ('{"task": "flows.collect"}',)).fetchone()[0]
    members = conn.execute("select pgqueue.add_to_batch(%s, %s::jsonb)",
                           (b, '[{"task": "flows.add", "args": [1]}]')).fetchone()[0]
    conn.execute("select pgqueue.cancel_workflow(%s)", (b,))
    seal, cb = conn.execute("select batch_seal_job_id, batch_callback_job_id "
                            "from pgqueue.workflows where id = %s", (b,)).fetchone()
    from pgqueue._sql import named
    row = conn.cursor(row_factory=psycopg.rows.dict_row).execute(
        named("dashboard.sql")["jobs_bulk_retry"],
        dict(state="cancelled", queue=None, task=None, workflow=b, partition_key=None,
             schedule=None, created_from=None, created_to=None)).fetchone()
    assert (row["count"], row["refused"]) == (len(members), 2)
    assert [job(conn, i)[0] for i in members] == ["available"]
    assert job(conn, seal)[0] == "cancelled" and job(conn, cb)[0] == "cancelled"
    with pytest.raises(pgqueue.RetryRefused, match="seal step of batch"):
        pgqueue.Job(app, seal).retry()


def test_bulk_retry_takes_dependencies_first_whatever_their_ids(app, t, conn, start_worker):
    # A batch's callback has a smaller id than its members: "Retry all" in id order
    # met the callback first, refused it (its members were cancelled), and so failed.
    b = conn.execute("select pgqueue.open_batch(%s::jsonb)",
                     ('{"task": "flows.collect"}',)).fetchone()[0]
    members = conn.execute("select pgqueue.add_to_batch(%s, %s::jsonb)",
                           (b, '[{"task": "flows.add", "args": [1]}, '
                               '{"task": "flows.add", "args": [2]}]')).fetchone()[0]
    conn.execute("select pgqueue.seal_batch(%s)", (b,))
    cb = conn.execute("select batch_callback_job_id from pgqueue.workflows where id = %s",
                      (b,)).fetchone()[0]
    for m in members:
        conn.execute("select pgqueue.cancel(%s)", (m,))
    assert job(conn, cb)[0] == "cancelled" and cb < min(members)
    rows = dict((i, (st, why)) for i, st, why in conn.execute(
        "select * from pgqueue.retry_many(array(select j.id from pgqueue.jobs j "
        "where j.workflow_id = %s and j.state = 'cancelled'))", (b,)))
    assert rows == {**{m: ("available", None) for m in members}, cb: ("pending", None)}
    start_worker(app, concurrency=2)
    wait_until(lambda: job(conn, cb)[0] == "completed", 15, message="the batch callback")
    [(_, _, note, _)] = side(conn, "callback", cb)
    assert sorted(note["results"]) == [1, 2]


def test_a_failed_workflow_repaired_by_retries_is_completed(app, t, conn, start_worker):
    h = chain(t.flaky.s(5, fail_attempts=1).set(max_attempts=1), t.add.s(1)).enqueue()
    start_worker(app, concurrency=2)
    wait_until(lambda: wf_done(conn, h.id), 15, message="the chain to fail")
    assert wf_state(conn, h.id) == "failed"
    with pytest.raises(WorkflowFailed):
        h.result(timeout=5)
    states = [r[0] for r in conn.execute(
        "select state from pgqueue.retry_many(%s) order by id", (h.job_ids,))]
    assert states == ["available", "pending"]
    # failed until every step has completed (h.result raises meanwhile), then completed
    wait_until(lambda: wf_state(conn, h.id) == "completed", 15, message="the repaired chain")
    assert h.result(timeout=5) == 6
    w = wf_row(conn, h.id)
    assert w[:5] == ("completed", 0, 2, 0, 0)
    assert_edges_consistent(conn, h.id)


# -- CLI ------------------------------------------------------------------------------------

def test_cli_workflows_show(app, t, conn, dsn, start_worker):
    start_worker(app, concurrency=2)
    h = chain(t.add.s(1, 1), chord([t.add.s(1), t.add.s(2)], t.total.s())).enqueue(name="cli")
    assert h.result(timeout=10) == 7
    from pgqueue.cli import main
    res = CliRunner().invoke(main, ["--dsn", dsn, "workflows", "show", str(h.id)])
    assert res.exit_code == 0, res.output
    assert f"workflow {h.id} 'cli': completed" in res.output
    assert res.output.count("completed, attempt 1/") == 4
    assert "flows.total" in res.output and "also after" in res.output
    res = CliRunner().invoke(main, ["--dsn", dsn, "workflows", "show", "999999"])
    assert res.exit_code != 0 and "no workflow" in res.output


def test_cli_workflows_show_names_what_waiting_steps_wait_for(app, t, conn, dsn):
    # Nothing has run: steps left max_attempts to the task, the error callback waits
    # for a failure, not for dependencies.
    h = chain(t.add.s(1, 1).set(delay=3600), t.add.s(1)).enqueue(on_error=t.on_error.s())
    from pgqueue.cli import main
    res = CliRunner().invoke(main, ["--dsn", dsn, "workflows", "show", str(h.id)])
    assert res.exit_code == 0, res.output
    assert "None" not in res.output
    assert res.output.count("attempt 0/task default") == 3
    assert "(on error): pending, attempt 0/task default, -, waiting for a step to fail" \
        in res.output
    assert "pending, attempt 0/task default, -, waiting for 1" in res.output


# -- transactions ---------------------------------------------------------------------------

def test_chord_enqueued_in_a_slow_transaction_runs_only_after_commit(app, t, conn, dsn,
                                                                   spawn_worker):
    for _ in range(2):
        spawn_worker("tests.apps.flows", "-c", "20")
    wait_worker_registered(conn, 2)
    # hot: the workers are claiming and running jobs while the transaction is open
    warm = [t.member.enqueue(i, log=True) for i in range(10)]
    with psycopg.connect(dsn) as tx:
        h = chord([t.member.s(i, log=True) for i in range(50)], t.collect.s(tag="late")) \
            .using(connection=tx).enqueue()
        wait_until(lambda: len(side(conn, "member")) >= 10, 10, message="warm jobs ran")
        time.sleep(2.0)   # the scenario: a long transaction before commit
        more = t.member.enqueue(99, log=True)       # committed elsewhere meanwhile
        wait_until(lambda: len(side(conn, "member", more.id)) == 1, 10,
                   message="a job committed meanwhile ran")
        assert conn.execute("select count(*) from pgqueue.workflows").fetchone() == (0,)
        (commit_at,) = tx.execute("select clock_timestamp()").fetchone()
        tx.commit()
    wait_until(lambda: side(conn, "callback"), 20, message="callback")
    assert h.result(timeout=20) == 50
    member_rows = [r for r in side(conn, "member") if r[0] in h.job_ids]
    assert len(member_rows) == 50
    assert min(r[3] for r in member_rows) > commit_at
    cb = side(conn, "callback")
    assert len(cb) == 1 and cb[0][2]["results"] == list(range(50)) and cb[0][3] > commit_at
    assert len(warm) == 10


# -- B17 and the 1,000-member chord: concurrency ----------------------------------------------

def _check_chord(conn, h, n, tag):
    cb_id = h.job_ids[n]
    rows = [r for r in side(conn, "callback") if r[0] == cb_id]
    assert len(rows) == 1, f"chord {tag}: {len(rows)} callback rows"
    assert rows[0][2]["results"] == list(range(n))
    assert job(conn, cb_id)[6] == 0
    assert conn.execute("select count(*) from pgqueue.job_dependencies where job_id = %s "
                        "and satisfied", (cb_id,)).fetchone() == (n,)
    errors = conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s "
                          "and (errors <> '[]' or state <> 'completed')", (h.id,)).fetchone()
    assert errors == (0,)
    assert wf_row(conn, h.id)[:2] == ("completed", 0)


def _fan_in_latency(conn, h, n):
    """Seconds from the last member's completion to the callback's start."""
    (lat,) = conn.execute(
        "select extract(epoch from cb.started_at - (select max(m.finished_at) from pgqueue.jobs m "
        "where m.id = any(%s)))::float8 from pgqueue.jobs cb where cb.id = %s",
        (h.job_ids[:n], h.job_ids[n])).fetchone()
    return lat


def test_b17_members_finishing_at_once_fire_the_callback_once(app, t, conn, spawn_worker):
    procs = [spawn_worker("tests.apps.flows", "-c", "50") for _ in range(4)]
    wait_worker_registered(conn, 4)
    n, runs = 200, 20
    for run in range(runs):
        h = chord([t.member.s(i, release_at=time.time() + 1.0, jitter_ms=10) for i in range(n)],
                  t.collect.s(tag=run)).enqueue()
        assert h.result(timeout=60) == n
        wait_until(lambda h=h: wf_done(conn, h.id), 10, message="workflow finished")
        _check_chord(conn, h, n, run)
    assert len(side(conn, "callback")) == runs
    # Members did finish together: within a few tens of ms for most runs.
    spread = conn.execute(
        "select percentile_cont(0.5) within group (order by s) from ("
        " select extract(epoch from max(finished_at) - min(finished_at)) s from pgqueue.jobs"
        " where task = 'flows.member' group by workflow_id) x").fetchone()[0]
    assert spread < 0.5
    for p in procs:   # no deadlock, even one retried internally
        assert "deadlock" not in p.log().lower() and "Traceback" not in p.log()


def test_chord_of_1000_members_on_four_worker_processes(app, t, conn, spawn_worker):
    procs = [spawn_worker("tests.apps.flows", "-c", "50") for _ in range(4)]
    wait_worker_registered(conn, 4)
    n = 1000
    timings = []
    for run in range(3):
        t0 = time.monotonic()
        h = chord([t.member.s(i) for i in range(n)], t.collect.s(tag=f"k{run}")).enqueue()
        assert h.result(timeout=120) == n
        timings.append((time.monotonic() - t0, _fan_in_latency(conn, h, n)))
        wait_until(lambda h=h: wf_done(conn, h.id), 10, message="workflow finished")
        _check_chord(conn, h, n, run)
    print("\nchord of 1000 on 4 workers x 50: " + ", ".join(
        f"{total:.2f} s (fan-in {lat * 1000:.1f} ms)" for total, lat in timings))
    for p in procs:
        assert "Traceback" not in p.log()


# -- at-least-once: a member killed before its completion is recorded ----------------------------

def test_member_killed_before_completion_runs_again_callback_once(app, t, conn, spawn_worker):
    a = spawn_worker("tests.apps.flows", "-c", "20", "--heartbeat-interval", "0.3",
                     "--stale-after", "1")
    wait_worker_registered(conn, 1)
    n = 20
    h = chord([t.victim.s(0, hold=60)] + [t.victim.s(i) for i in range(1, n)],
              t.collect.s(tag="kill")).enqueue()
    victim = h.job_ids[0]
    wait_until(lambda: len(side(conn, "victim", victim)) == 1, 20, message="victim started")
    wait_until(lambda: conn.execute(
        "select count(*) from pgqueue.jobs where id = any(%s) and state = 'completed'",
        (h.job_ids[1:n],)).fetchone()[0] == n - 1, 20, message="other members completed")
    a.kill()
    assert job(conn, victim)[0] == "running"
    spawn_worker("tests.apps.flows", "-c", "4", "--heartbeat-interval", "0.3",
                 "--stale-after", "1")
    assert h.result(timeout=30) == n
    runs = side(conn, "victim", victim)
    assert [r[1] for r in runs] == [1, 2]
    st = job(conn, victim)
    assert st[0] == "completed" and st[3][-1]["type"] == "pgqueue.WorkerLost"
    cb = side(conn, "callback")
    assert len(cb) == 1 and cb[0][2]["results"] == list(range(n))
    assert_edges_consistent(conn, h.id)


def test_deleting_jobs_or_workflows_deletes_their_edges(app, t, conn):
    """No foreign keys on the edges: statement triggers do what on delete cascade did."""
    h1 = chord([t.add.s(1, 1), t.add.s(2, 2)], t.total.s()).enqueue()
    h2 = chain(t.add.s(1, 2), t.ident.s()).enqueue()
    plain = t.add.enqueue(3, 4)
    edges = "select count(*) from pgqueue.job_dependencies where job_id = any(%s) or depends_on = any(%s)"
    assert conn.execute(edges, (h1.job_ids, h1.job_ids)).fetchone()[0] == 2
    # a member deleted (as prune does): its edge goes with it, the others stay
    conn.execute("delete from pgqueue.jobs where id = any(%s)", ([h1.job_ids[0], plain.id],))
    assert conn.execute("select job_id, depends_on from pgqueue.job_dependencies "
                        "where job_id = %s", (h1.job_ids[2],)).fetchall() == [
        (h1.job_ids[2], h1.job_ids[1])]
    # a workflow deleted: its jobs and edges go with it; the other workflow is untouched
    conn.execute("delete from pgqueue.workflows where id = %s", (h1.id,))
    assert conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s",
                        (h1.id,)).fetchone()[0] == 0
    assert conn.execute(edges, (h1.job_ids, h1.job_ids)).fetchone()[0] == 0
    assert conn.execute(edges, (h2.job_ids, h2.job_ids)).fetchone()[0] == 1
    assert conn.execute("select count(*) from pgqueue.jobs where workflow_id = %s",
                        (h2.id,)).fetchone()[0] == 2
