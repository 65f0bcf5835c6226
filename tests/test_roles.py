"""The role split of sql/roles.sql, proven by connecting as each role.

A fresh owner role migrates an empty database and applies the grants with
``pgqueue roles --apply``; every test then clones that database and connects as the
producer, the worker or the operator. Role names are unique per run and dropped after.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgqueue
from pgqueue import chain, migrate
from pgqueue._sql import read_text
from pgqueue.cli import main

from .conftest import ROOT, WorkerThread, wait_until

ROLE_KEYS = ("owner", "producer", "worker", "operator")


@dataclass
class RoleDb:
    names: dict[str, str]
    password: str
    template: str


def _as(dsn: str, user: str, password: str) -> str:
    params = conninfo_to_dict(dsn)
    params.update(user=user, password=password)
    return make_conninfo(**params)


@pytest.fixture(scope="module")
def role_db(pg_server) -> Iterator[RoleDb]:
    """Roles owner/producer/worker/operator, and a template migrated by the owner."""
    tag = secrets.token_hex(4)
    names = {k: f"pgq_{tag}_{k}" for k in ROLE_KEYS}
    password = secrets.token_hex(12)
    template = f"pgqueue_roles_{tag}"
    with pg_server.admin() as admin:
        for name in names.values():
            admin.execute(sql.SQL("create role {} login password {}").format(
                sql.Identifier(name), sql.Literal(password)))
    try:
        pg_server.create_db(template)
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("grant create on database {} to {}").format(
                sql.Identifier(template), sql.Identifier(names["owner"])))
        owner_dsn = _as(pg_server.dsn_for(template), names["owner"], password)
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            migrate.apply(conn)
        result = CliRunner().invoke(main, [
            "--dsn", owner_dsn, "roles", "--producer", names["producer"],
            "--worker", names["worker"], "--operator", names["operator"], "--apply"])
        assert result.exit_code == 0, result.output
        yield RoleDb(names, password, template)
    finally:
        pg_server.drop_db(template)
        with pg_server.admin() as admin:
            for name in names.values():
                admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


@dataclass
class Dsns:
    admin: str
    owner: str
    producer: str
    worker: str
    operator: str


@pytest.fixture
def dsns(pg_server, role_db: RoleDb) -> Iterator[Dsns]:
    name = f"pgqueue_r_{uuid.uuid4().hex[:12]}"
    admin = pg_server.create_db(name, template=role_db.template)
    yield Dsns(admin, *(_as(admin, role_db.names[k], role_db.password) for k in ROLE_KEYS))
    pg_server.drop_db(name)


def snapshot(dsn: str) -> dict[str, list]:
    """Every row of every pgqueue table, read as the superuser."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for table in ("jobs", "workers", "queues", "schedules", "workflows",
                      "job_dependencies", "migrations"):
            out[table] = conn.execute(sql.SQL("select * from pgqueue.{} order by 1").format(
                sql.Identifier(table))).fetchall()
    return out


def seed(dsn: str) -> dict[str, int]:
    """A committed job in each interesting state, a workflow, a queue row, a schedule."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = {}
        ids["available"] = conn.execute("select pgqueue.enqueue('t.a')").fetchone()[0]
        ids["discarded"] = conn.execute("select pgqueue.enqueue('t.b')").fetchone()[0]
        conn.execute("update pgqueue.jobs set state = 'discarded', finished_at = now(), "
                     "attempt = 1 where id = %s", (ids["discarded"],))
        wf, steps = conn.execute(
            """select * from pgqueue.enqueue_workflow('[{"task": "t.s1"},
                   {"task": "t.s2", "depends_on": [0]}]')""").fetchone()
        ids["workflow"], ids["step"] = wf, steps[1]
        conn.execute("insert into pgqueue.queues (name) values ('q1')")
        conn.execute("select pgqueue.add_schedule('s1', 't.tick', every => interval '1 hour')")
        return ids


# -- the grants: one place, every function classified ----------------------------------

def _granted_names() -> set[str]:
    text = read_text("roles.sql")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return set(re.findall(r"pgqueue\.(\w+)", body))


def test_every_function_and_relation_of_the_schema_is_classified(conn):
    """A function or table a migration adds must be given to some role (or, for a
    trigger function, listed in the common block): nothing is granted by default."""
    functions = {r[0] for r in conn.execute(
        "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'pgqueue'")}
    relations = {r[0] for r in conn.execute(
        "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = 'pgqueue' and c.relkind in ('r', 'v', 'm', 'p')")}
    named = _granted_names()
    assert functions - named == set(), "functions in no role's list of sql/roles.sql"
    assert relations - named == set(), "tables and views in no role's list of sql/roles.sql"
    # and the lists name nothing that does not exist
    assert named - functions - relations == set()


def test_cli_prints_the_grants_with_quoted_role_names():
    runner = CliRunner()
    result = runner.invoke(main, ["roles", "--producer", 'app"; drop table x; --'])
    assert result.exit_code == 0, result.output
    assert 'to "app""; drop table x; --";' in result.output
    assert "grant execute on function pgqueue.enqueue, pgqueue.enqueue_workflow" in result.output
    assert "claim" not in result.output
    none = runner.invoke(main, ["roles"])
    assert none.exit_code == 2 and "name at least one role" in none.output
    empty = runner.invoke(main, ["roles", "--worker", ""])
    assert empty.exit_code == 2 and "worker role name is empty" in empty.output


def test_readme_role_section_is_the_command_output():
    runner = CliRunner()
    result = runner.invoke(main, ["roles", "--producer", "app_producer", "--worker",
                                  "app_worker", "--operator", "app_operator"])
    assert result.exit_code == 0
    readme = (ROOT / "README.md").read_text()
    assert result.output in readme, "README's role script differs from `pgqueue roles`"


def test_apply_of_an_unknown_role_rolls_back(dsns):
    result = CliRunner().invoke(main, ["--dsn", dsns.owner, "roles", "--producer",
                                       "no_such_role_" + secrets.token_hex(4), "--apply"])
    assert result.exit_code == 1 and "create the role first" in result.output
    with psycopg.connect(dsns.admin) as conn:
        # the common revoke of the same transaction was rolled back too: the
        # template's grants stand
        assert conn.execute("select has_function_privilege(%s, p.oid, 'execute') "
                            "from pg_proc p where p.oid = 'pgqueue.enqueue'::regproc",
                            (conninfo_to_dict(dsns.producer)["user"],)).fetchone()[0]


# -- owner -----------------------------------------------------------------------------

def test_owner_owns_every_object_and_the_schema_is_current(dsns, role_db):
    with psycopg.connect(dsns.owner) as conn:
        assert migrate.status(conn) and all(applied for _, applied in migrate.status(conn))
        owners = {r[0] for r in conn.execute(
            "select c.relowner::regrole::text from pg_class c join pg_namespace n "
            "on n.oid = c.relnamespace where n.nspname = 'pgqueue'")}
        owners |= {r[0] for r in conn.execute(
            "select p.proowner::regrole::text from pg_proc p join pg_namespace n "
            "on n.oid = p.pronamespace where n.nspname = 'pgqueue'")}
    assert owners == {role_db.names["owner"]}


# -- producer --------------------------------------------------------------------------

def test_producer_enqueues_through_every_api_and_reads_jobs(dsns):
    app = pgqueue.App(dsns.producer)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def double(x: int) -> int:
        return 2 * x

    try:
        app.check_schema()
        job = add.enqueue(1, 2)
        assert job.row["state"] == "available" and job.args == [1, 2]
        assert add.using(unique_key="k1").enqueue(3, 4).id == \
            add.using(unique_key="k1").enqueue(3, 4).id
        assert add.enqueue_many([(i, i) for i in range(5)]) == 5                # COPY
        assert add.using(delay=60).enqueue_many([(i, i) for i in range(3)]) == 3  # staged
        flow = chain(add.s(1, 1), double.s()).enqueue()
        assert len(flow.job_ids) == 2
        batch = app.batch(callback=double.s())                    # open, fill, seal
        batch.add(add.s(2, 2))
        batch.seal()
        with psycopg.connect(dsns.producer) as conn:
            (sql_id,) = conn.execute("select pgqueue.enqueue('other.task', '[1]', "
                                     "queue => 'q2', unique_key => 'k2')").fetchone()
            wf = conn.execute("select workflow_id from pgqueue.enqueue_workflow("
                              "'[{\"task\": \"x\"}, {\"task\": \"y\", \"depends_on\": [0]}]')"
                              ).fetchone()[0]
            conn.commit()
            assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 18
            assert conn.execute("select count(*) from pgqueue.workflow_steps "
                                "where workflow_id = %s", (wf,)).fetchone()[0] == 2
            assert conn.execute("select count(*) from pgqueue.queue_stats").fetchone()[0] >= 2
    finally:
        app.close()
    with psycopg.connect(dsns.admin) as conn:
        assert conn.execute("select task, queue, args from pgqueue.jobs where id = %s",
                            (sql_id,)).fetchone() == ("other.task", "q2", [1])


FORBIDDEN_FOR_PRODUCER = [
    "select * from pgqueue.claim(gen_random_uuid(), null, array['t.a'], 10)",
    "select pgqueue.complete(gen_random_uuid(), array[{available}::bigint], array[1], array['1'::jsonb])",
    "select pgqueue.fail(gen_random_uuid(), {available}, 1, '{{}}')",
    "select pgqueue.hand_back(gen_random_uuid(), array[{available}::bigint], array[1])",
    "select pgqueue.retry({discarded})",
    "select pgqueue.cancel({available})",
    "select pgqueue.cancel_workflow({workflow})",
    "select * from pgqueue.retry_discarded()",
    "select pgqueue.prune(interval '0 s')",
    "select * from pgqueue.rescue(interval '0 s')",
    "select pgqueue.heartbeat(gen_random_uuid(), 'w', 'h', 1, null, '{{}}', 1, interval '10 s')",
    "select pgqueue.release_unknown(gen_random_uuid(), '{{}}', '{{}}')",
    "select pgqueue.job_inputs({step})",
    "select pgqueue.next_due(null, array['t.a'])",
    "select pgqueue.backoff(1)",
    "select pgqueue.pause_schedule('s1')",
    "select pgqueue.trigger_schedule('s1')",
    "select pgqueue.add_schedule('s2', 't.x', every => interval '1 hour')",
    "select pgqueue.fire_schedule('s1', null, array[now()], now())",
    "update pgqueue.jobs set state = 'completed', finished_at = now() where id = {available}",
    "update pgqueue.jobs set args = '[666]' where id = {available}",
    "delete from pgqueue.jobs where id = {available}",
    "truncate pgqueue.jobs",
    "insert into pgqueue.jobs (task, state, worker_id, started_at, attempt) "
    "values ('t.evil', 'running', gen_random_uuid(), now(), 1)",
    "insert into pgqueue.jobs (task, state, finished_at) values ('t.evil', 'completed', now())",
    "insert into pgqueue.jobs (task, state, workflow_id, deps_pending) "
    "values ('t.evil', 'pending', {workflow}, 1)",
    "insert into pgqueue.jobs (id, task) overriding system value values (-1, 't.evil')",
    "insert into pgqueue.job_dependencies (job_id, depends_on) values ({step}, {available})",
    "update pgqueue.job_dependencies set satisfied = true",
    "update pgqueue.workflows set state = 'cancelled', remaining = 0, finished_at = now()",
    "insert into pgqueue.workers (id, name, hostname, pid, concurrency) "
    "values (gen_random_uuid(), 'w', 'h', 1, 1)",
    "insert into pgqueue.queues (name, paused) values ('default', true)",
    "update pgqueue.queues set paused = true",
    "delete from pgqueue.queues",
    "insert into pgqueue.schedules (name, task, every) values ('s3', 't.x', interval '1 h')",
    "update pgqueue.schedules set paused = true",
    "delete from pgqueue.schedules",
    "insert into pgqueue.migrations (version, name) values (99, 'x')",
    "delete from pgqueue.migrations",
    "create table pgqueue.evil (x int)",
    "alter table pgqueue.jobs add column evil int",
    "drop function pgqueue.claim_candidates",
    "create or replace function pgqueue.backoff(attempt integer, base double precision default 1.0, "
    "cap double precision default 3600.0, jitter double precision default 0.1) returns interval "
    "language sql as $$ select interval '0' $$",
]


def test_producer_forbidden_actions_fail_with_a_permission_error_and_change_nothing(dsns):
    ids = seed(dsns.admin)
    before = snapshot(dsns.admin)
    with psycopg.connect(dsns.producer) as conn:
        for stmt in FORBIDDEN_FOR_PRODUCER:
            with pytest.raises((psycopg.errors.InsufficientPrivilege,
                                psycopg.errors.CheckViolation)) as e:
                with conn.transaction():
                    conn.execute(stmt.format(**ids))
            assert e.type is psycopg.errors.InsufficientPrivilege or \
                "pgqueue.evil" not in stmt, stmt
            # the connection stays usable after each refusal
            assert conn.execute("select count(*) from pgqueue.jobs").fetchone()[0] == 4
        conn.commit()
    assert snapshot(dsns.admin) == before


def test_producer_cannot_claim_through_the_python_worker(dsns):
    app = pgqueue.App(dsns.producer)

    @app.task
    def t() -> None: ...

    try:
        t.enqueue()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            pgqueue.Worker(app, heartbeat_interval=0.2, stale_after=1.0).run(
                install_signal_handlers=False)
    finally:
        app.close()
    with psycopg.connect(dsns.admin) as conn:
        assert conn.execute("select state from pgqueue.jobs").fetchall() == [("available",)]


# -- worker ----------------------------------------------------------------------------

def test_worker_role_runs_every_worker_path_end_to_end(dsns):
    seen: list[str] = []
    app = pgqueue.App(dsns.worker)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def double(x: int) -> int:
        return 2 * x

    @app.task(max_attempts=2, retry=pgqueue.RetryPolicy(base=0, cap=0))
    def boom() -> None:
        raise RuntimeError("boom")

    @app.task
    def fan_out(n: int) -> list[int]:
        chain(add.s(n, n), double.s()).enqueue()        # a task that enqueues a workflow
        return [n]

    @app.task
    def tick() -> None:
        seen.append("tick")

    app.periodic(tick, every=1, name="every-second")

    producer = pgqueue.App(dsns.producer)
    with psycopg.connect(dsns.admin, autocommit=True) as admin:
        ok = producer.enqueue(add.name, (2, 3)).id
        bad = producer.enqueue(boom.name).id
        with producer.connection() as pc:
            (flow_ids,) = pc.execute(
                "select job_ids from pgqueue.enqueue_workflow(jsonb_build_array("
                "jsonb_build_object('task', %s::text, 'args', '[1, 2]'::jsonb), "
                "jsonb_build_object('task', %s::text, 'depends_on', '[0]'::jsonb, "
                "'inputs', 'previous')))", (add.name, double.name)).fetchone()
        fan = producer.enqueue(fan_out.name, (5,)).id
        # a job of a dead worker, for this worker's rescue; and an old finished job to prune
        dead = uuid.uuid4()
        admin.execute("insert into pgqueue.workers (id, name, hostname, pid, tasks, "
                      "concurrency, heartbeat_at) values (%s, 'dead', 'h', 1, %s, 1, "
                      "now() - interval '1 hour')", (dead, [add.name]))
        orphan = admin.execute(
            "insert into pgqueue.jobs (task, args, state, attempt, max_attempts, worker_id, "
            "started_at) values (%s, '[20, 22]', 'running', 1, 3, %s, now()) returning id",
            (add.name, dead)).fetchone()[0]
        old = admin.execute(
            "insert into pgqueue.jobs (task, state, finished_at) values ('t.old', "
            "'completed', now() - interval '30 days') returning id").fetchone()[0]
        w = WorkerThread(pgqueue.Worker(app, heartbeat_interval=0.2, stale_after=1.0,
                                        poll_interval=0.2, prune_after=86400.0,
                                        maintenance_interval=0.5, shutdown_grace=5))
        try:
            w.start()

            def states() -> dict[int, str]:
                return dict(admin.execute("select id, state from pgqueue.jobs").fetchall())

            def done() -> bool:
                s = states()
                return (s.get(ok) == "completed" and s.get(bad) == "discarded"
                        and s.get(orphan) == "completed" and old not in s
                        and all(s.get(i) == "completed" for i in flow_ids)
                        and s.get(fan) == "completed"
                        and sum(v == "completed" for v in s.values()) >= 8
                        and bool(seen))
            wait_until(done, 20, message=f"every worker path ({states()})")
        finally:
            w.stop()
        results = dict(admin.execute("select id, result from pgqueue.jobs where state = "
                                     "'completed'").fetchall())
        assert results[ok] == 5 and results[orphan] == 42 and results[flow_ids[-1]] == 6
        (attempts, errors) = admin.execute("select attempt, jsonb_array_length(errors) "
                                           "from pgqueue.jobs where id = %s", (bad,)).fetchone()
        assert (attempts, errors) == (2, 2)
        assert admin.execute("select last_job_id is not null from pgqueue.schedules "
                             "where name = 'every-second'").fetchone()[0]
        # the worker deregistered itself and removed the dead worker's row (rescue)
        assert admin.execute("select count(*) from pgqueue.workers where id <> %s",
                             (dead,)).fetchone()[0] == 0
    producer.close()
    app.close()


FORBIDDEN_FOR_WORKER = [
    "create table pgqueue.evil (x int)",
    "alter table pgqueue.jobs add column evil int",
    "alter table pgqueue.jobs drop constraint jobs_state_valid",
    "drop view pgqueue.queue_stats",
    "create index evil on pgqueue.jobs (task)",
    "create or replace function pgqueue.backoff(attempt integer, base double precision default 1.0, "
    "cap double precision default 3600.0, jitter double precision default 0.1) returns interval "
    "language sql as $$ select interval '0' $$",
    "insert into pgqueue.migrations (version, name) values (99, 'x')",
    "delete from pgqueue.migrations",
    "truncate pgqueue.jobs",
    "insert into pgqueue.queues (name, paused) values ('default', true)",
    "update pgqueue.queues set paused = true",
    "alter table pgqueue.jobs owner to current_user",
    "alter function pgqueue.claim_candidates security definer",
    "select pgqueue.cancel({available})",
    "select pgqueue.retry({discarded})",
    "select pgqueue.pause_schedule('s1')",
]


def test_worker_role_cannot_change_the_schema_or_operate(dsns):
    ids = seed(dsns.admin)
    before = snapshot(dsns.admin)
    with psycopg.connect(dsns.worker) as conn:
        for stmt in FORBIDDEN_FOR_WORKER:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="."), \
                    conn.transaction():
                conn.execute(stmt.format(**ids))
                pytest.fail(f"the worker role may run {stmt}")
    assert snapshot(dsns.admin) == before


# -- operator --------------------------------------------------------------------------

def test_operator_retries_cancels_pauses_and_triggers_but_changes_no_schema(dsns):
    ids = seed(dsns.admin)
    runner = CliRunner()

    def cli(*argv: str) -> str:
        result = runner.invoke(main, ["--dsn", dsns.operator, *argv])
        assert result.exit_code == 0, (argv, result.output)
        return result.output

    cli("jobs", "retry", str(ids["discarded"]))
    cli("jobs", "cancel", str(ids["available"]))
    cli("queues", "pause", "q1")
    cli("schedules", "pause", "s1")
    cli("schedules", "trigger", "s1")
    cli("jobs", "list")
    cli("workers")
    with psycopg.connect(dsns.operator) as conn:
        assert conn.execute("select pgqueue.cancel_workflow(%s)", (ids["workflow"],)
                            ).fetchone()[0] == "cancelled"
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("alter table pgqueue.jobs add column evil int")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from pgqueue.claim(gen_random_uuid(), null, array['t.a'], 1)")
    with psycopg.connect(dsns.admin) as conn:
        states = dict(conn.execute("select id, state from pgqueue.jobs").fetchall())
        assert states[ids["discarded"]] == "available"
        assert states[ids["available"]] == "cancelled"
        assert states[ids["step"]] == "cancelled"
        assert conn.execute("select paused from pgqueue.queues where name = 'q1'"
                            ).fetchone()[0]
        assert conn.execute("select paused, last_job_id is not null from pgqueue.schedules "
                            "where name = 's1'").fetchone() == (True, True)


def test_a_permission_error_in_the_cli_is_one_line_naming_the_command(dsns):
    seed(dsns.admin)
    result = CliRunner().invoke(main, ["--dsn", dsns.producer, "queues", "pause", "q1"])
    assert result.exit_code == 1
    assert "permission denied" in result.output and "pgqueue roles" in result.output
    assert "Traceback" not in result.output


# -- the security definer function -----------------------------------------------------

def test_security_definer_functions_pin_their_search_path_and_build_no_sql(conn):
    rows = conn.execute(
        "select p.proname, p.proconfig, p.prosrc, p.proacl::text[] from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'pgqueue' and p.prosecdef").fetchall()
    assert sorted(r[0] for r in rows) == ["add_to_batch", "enqueue_workflow", "open_batch",
                                         "seal_batch"]
    for name, config, src, acl in rows:
        assert "search_path=pg_catalog, pgqueue, pg_temp" in config, name
        assert not re.search(r"\bexecute\b", src, re.IGNORECASE), name
        assert not any(a.startswith("=") for a in acl or []), f"{name} executable by PUBLIC"


def test_enqueue_workflow_as_definer_writes_only_its_own_rows(dsns):
    ids = seed(dsns.admin)
    before = snapshot(dsns.admin)
    with psycopg.connect(dsns.producer) as conn:
        # a caller's temporary tables cannot stand in for pgqueue's
        conn.execute("create temporary table jobs (id bigint, task text)")
        conn.execute("create temporary table workflows (id bigint)")
        # dependencies on other workflows' jobs (by id or by out-of-range index) are refused
        for steps in (f'[{{"task": "x", "depends_on": [{ids["step"]}]}}]',
                      f'[{{"task": "x"}}, {{"task": "y", "after": [{ids["available"]}]}}]',
                      '[{"task": "x", "depends_on": [-1]}]'):
            with pytest.raises(psycopg.errors.InvalidParameterValue), conn.transaction():
                conn.execute("select pgqueue.enqueue_workflow(%s)", (steps,))
        # no state, owner or workflow can be injected through a step's fields: a key a
        # step does not take is refused, naming it
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown key 'id'"), \
                conn.transaction():
            conn.execute(
                "select * from pgqueue.enqueue_workflow(%s)",
                ('[{"task": "x", "state": "completed", "worker_id": "' + str(uuid.uuid4()) +
                 '", "workflow_id": ' + str(ids["workflow"]) + ', "id": '
                 + str(ids["available"]) + '}]',))
        (wf, job_ids) = conn.execute("select * from pgqueue.enqueue_workflow(%s)",
                                     ('[{"task": "x"}]',)).fetchone()
        assert conn.execute("select count(*) from pg_temp.jobs").fetchone()[0] == 0
        conn.commit()
    after = snapshot(dsns.admin)
    new_jobs = [r for r in after["jobs"] if r not in before["jobs"]]
    assert [r[0] for r in new_jobs] == job_ids
    with psycopg.connect(dsns.admin) as conn:
        assert conn.execute("select state, worker_id, workflow_id from pgqueue.jobs "
                            "where id = %s", (job_ids[0],)).fetchone() == ("available", None, wf)
    for table in ("queues", "schedules", "workers", "migrations", "job_dependencies"):
        assert after[table] == before[table], table
    assert [r for r in after["workflows"] if r[0] != wf] == before["workflows"]
    assert [r for r in after["jobs"] if r[0] not in job_ids] == before["jobs"]
