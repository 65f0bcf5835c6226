"""Django: enqueue on Django's connection inside atomic(), the django.tasks backend run
by pgqueue's worker, migrations through `manage.py migrate`, the admin.

Django is configured in-process (settings.configure) against the test database, with
the psycopg 3 backend; each test re-points the "default" alias at its own database.
Transactions are real: no TestCase wrapping, every assertion reads committed rows
from a separate psycopg connection unless it says otherwise.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgqueue
from pgqueue import migrate

from .conftest import wait_until
from .test_migrations import describe

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

try:
    import django.tasks  # noqa: F401
    TASKS_APPS: list[str] = []
    from django.tasks import TaskResultStatus
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django < 6.0: the backport
    pytest.importorskip("django_tasks")
    TASKS_APPS = ["django_tasks"]
    from django_tasks import TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test",
        USE_TZ=True,
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                               "CONN_MAX_AGE": 0}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django.contrib.sessions", "django.contrib.messages",
                        "django.contrib.admin", "pgqueue.contrib.django", "tests.django_app",
                        *TASKS_APPS],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware",
                    "django.contrib.messages.middleware.MessageMiddleware"],
        ROOT_URLCONF="tests.django_app.urls",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True,
                    "OPTIONS": {"context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages"]}}],
        TASKS={"default": {"BACKEND": "pgqueue.contrib.django.backend.PgQueueBackend",
                           "QUEUES": ["default", "other"]}},
        PGQUEUE={"APP": "tests.django_app.tasks:app"},
    )
    django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402

from pgqueue import _connections  # noqa: E402
from pgqueue.contrib.django import get_app  # noqa: E402
from tests.django_app import tasks  # noqa: E402

# The app's ready() made Django's connection the default for task.enqueue() in this
# process; keep that to the tests below, so other test modules keep the app's pool.
_DJANGO_DEFAULT = _connections._default_provider
_connections.set_default_connection(None)

PARIS = dt.datetime(2026, 11, 29, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
B16_VALUES = [PARIS, dt.date(2026, 11, 29), Decimal("12.30"),
              uuid.UUID("12345678-1234-5678-1234-567812345678")]


class Boom(Exception):
    pass


def point_django_at(dsn: str) -> None:
    connections.close_all()
    p = conninfo_to_dict(dsn)
    db = connections["default"].settings_dict
    db.update(NAME=p["dbname"], HOST=p.get("host", ""), PORT=p.get("port", ""),
              USER=p.get("user", ""), PASSWORD=p.get("password", ""))
    app = get_app()
    app.close()
    app._dsn, app._conninfo = dsn, None


@pytest.fixture
def djdb(dsn):
    point_django_at(dsn)
    _connections.set_default_connection(_DJANGO_DEFAULT)
    yield dsn
    _connections.set_default_connection(None)
    connections.close_all()
    get_app().close()


@pytest.fixture
def djempty(empty_dsn):
    point_django_at(empty_dsn)
    _connections.set_default_connection(_DJANGO_DEFAULT)
    yield empty_dsn
    _connections.set_default_connection(None)
    connections.close_all()
    get_app().close()


def committed(dsn: str, sql: str = "select task, args from pgqueue.jobs order by id"):
    with psycopg.connect(dsn, autocommit=True) as c:
        return c.execute(sql).fetchall()


def committed_args(dsn: str) -> list:
    return [pgqueue.serialization.decode(a)[0] for _, a in committed(dsn)]


# -- enqueue on Django's connection ------------------------------------------------------

def test_atomic_commit_keeps_the_job_rollback_discards_it(djdb):
    with transaction.atomic():
        job = tasks.note.using(connection=connection).enqueue("kept")
        # The row is in this transaction, seen from the same connection before commit,
        # invisible elsewhere, and no on_commit callback was registered for it.
        with connection.cursor() as cur:
            cur.execute("select id from pgqueue.jobs")
            assert cur.fetchall() == [(job.id,)]
        assert committed(djdb) == []
        assert connection.run_on_commit == []
    assert committed_args(djdb) == ["kept"]

    with pytest.raises(Boom), transaction.atomic():
        tasks.note.using(connection=connection).enqueue("rolled back")
        raise Boom
    assert committed_args(djdb) == ["kept"]


def test_inner_atomic_rollback_discards_only_its_own_jobs(djdb):
    with transaction.atomic():
        tasks.note.using(connection=connection).enqueue("outer")
        try:
            with transaction.atomic():
                tasks.note.using(connection=connection).enqueue("inner")
                raise Boom
        except Boom:
            pass
        tasks.note.using(connection=connection).enqueue("after")
    assert committed_args(djdb) == ["outer", "after"]


def test_plain_enqueue_uses_djangos_connection(djdb):
    with pytest.raises(Boom), transaction.atomic():
        tasks.note.enqueue("in a rolled back block")
        raise Boom
    with transaction.atomic():
        tasks.note.enqueue("in a committed block")
        assert committed(djdb) == []
    tasks.note.enqueue("autocommit")   # outside atomic(): Django autocommits
    assert committed_args(djdb) == ["in a committed block", "autocommit"]


def test_aenqueue_with_django_connection_runs_in_djangos_thread(djdb):
    import asyncio

    from asgiref.sync import sync_to_async

    async def view():
        await tasks.note.using(connection=connection).aenqueue("async")

        @sync_to_async(thread_sensitive=True)
        def in_atomic():
            with transaction.atomic():
                tasks.note.using(connection=connection).enqueue("sync in async")
        await in_atomic()
    asyncio.run(view())
    assert committed_args(djdb) == ["async", "sync in async"]


def test_b16_values_through_django_connection(djdb):
    with transaction.atomic():
        with pytest.raises(pgqueue.SerializationError, match="naive datetime"):
            tasks.note.using(connection=connection).enqueue(dt.datetime(2026, 11, 29, 10))
        # still usable: the error was raised before any SQL
        job = tasks.note.using(connection=connection, run_at=PARIS).enqueue(*B16_VALUES)
        delayed = tasks.note.using(connection=connection,
                                   delay=dt.timedelta(seconds=5)).enqueue(1)
    assert job.args == B16_VALUES
    assert [type(a) for a in job.args] == [type(v) for v in B16_VALUES]
    assert str(job.args[2]) == "12.30"
    assert job.row["run_at"] == PARIS
    (secs,) = committed(djdb, f"select extract(epoch from run_at - created_at)::float8 "
                              f"from pgqueue.jobs where id = {delayed.id}")[0]
    assert abs(secs - 5) < 0.5


def test_worker_runs_a_job_enqueued_in_atomic(djdb, start_worker):
    with transaction.atomic():
        job = tasks.note.using(connection=connection).enqueue(*B16_VALUES)
    start_worker(get_app(), concurrency=1)
    assert job.result(timeout=15) == B16_VALUES


# -- django.tasks backend -------------------------------------------------------------

def test_django_tasks_enqueue_run_and_read_results(djdb, start_worker):
    with transaction.atomic():
        ok = tasks.add.enqueue(2, 3)
        assert ok.status == TaskResultStatus.READY
        # visible to Django's API inside the transaction (same connection) ...
        assert tasks.add.get_result(ok.id).status == TaskResultStatus.READY
        # ... and not committed yet
        assert committed(djdb) == []
        assert connection.run_on_commit == []
        bad = tasks.fail.enqueue("no luck")
        ctx = tasks.which_attempt.enqueue("t")
        dbl = tasks.async_double.enqueue(21)
        touch = tasks.touch_db.enqueue()
    rows = committed(djdb, "select task, queue, priority, state from pgqueue.jobs order by id")
    assert rows == [("tests.django_app.tasks.add", "default", 0, "available"),
                    ("tests.django_app.tasks.fail", "other", 7, "available"),
                    ("tests.django_app.tasks.which_attempt", "default", 0, "available"),
                    ("tests.django_app.tasks.async_double", "default", 0, "available"),
                    ("tests.django_app.tasks.touch_db", "default", 0, "available")]

    start_worker(get_app(), concurrency=2)

    def finished(result):
        result.refresh()
        return result.is_finished

    for r in (ok, bad, ctx, dbl, touch):
        wait_until(lambda r=r: finished(r), 20, message=f"task {r.id} finished")

    assert ok.status == TaskResultStatus.SUCCESSFUL and ok.return_value == 5
    got = tasks.add.get_result(ok.id)
    assert got.return_value == 5 and got.attempts == 1 and got.errors == []
    assert got.enqueued_at is not None and got.finished_at >= got.started_at

    assert bad.status == TaskResultStatus.FAILED
    assert len(bad.errors) == 1
    assert bad.errors[0].exception_class is ValueError
    assert "no luck" in bad.errors[0].traceback
    with pytest.raises(ValueError):
        bad.return_value  # noqa: B018

    assert ctx.return_value == {"tag": "t", "attempt": 1, "id": ctx.id}
    assert dbl.return_value == 42
    assert touch.return_value == 5


def test_django_tasks_rollback_and_unknown_ids(djdb):
    with pytest.raises(Boom), transaction.atomic():
        r = tasks.add.enqueue(1, 1)
        raise Boom
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(r.id)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("not-a-number")
    native = tasks.note.enqueue(1)
    with pytest.raises(TaskResultDoesNotExist, match="not a Django task|not importable"):
        tasks.add.get_result(str(native.id))


def test_django_tasks_arguments_follow_djangos_json_contract(djdb):
    """B16 through django.tasks: Django's contract is JSON arguments. Rich values are
    refused at enqueue with TypeError, before any SQL; the transaction stays usable."""
    with transaction.atomic():
        for value in (*B16_VALUES, dt.datetime(2026, 11, 29, 10)):
            with pytest.raises(TypeError):
                tasks.add.enqueue(value, 1)
        r = tasks.add.enqueue(1, 2)
    assert committed(djdb, "select count(*) from pgqueue.jobs") == [(1,)]
    assert tasks.add.get_result(r.id).args == [1, 2]


def test_django_tasks_run_after_and_priority(djdb):
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    r = tasks.add.using(run_after=when, priority=-3).enqueue(1, 2)
    (state, run_at, prio), = committed(
        djdb, f"select state, run_at, priority from pgqueue.jobs where id = {r.id}")
    assert state == "scheduled" and abs((run_at - when).total_seconds()) < 0.001
    assert prio == -3
    assert tasks.add.get_result(r.id).status == TaskResultStatus.READY


# -- migrations -----------------------------------------------------------------------

def test_every_sql_migration_has_a_django_migration():
    from django.db.migrations.loader import MigrationLoader
    loader = MigrationLoader(None, ignore_no_migrations=True)
    names = sorted(name for app, name in loader.disk_migrations if app == "pgqueue")
    assert [n[:4] for n in names] == [f"{m.version:04d}" for m in migrate.migrations()]


def test_manage_py_migrate_from_empty_equals_pgqueue_migrate_and_zero_drops(
        djempty, pg_server):
    call_command("migrate", "pgqueue", verbosity=0)
    ref = f"pgqueue_dj_{uuid.uuid4().hex[:10]}"
    ref_dsn = pg_server.create_db(ref)
    try:
        with psycopg.connect(ref_dsn, autocommit=True) as c:
            migrate.apply(c)
        a, b = describe(djempty), describe(ref_dsn)
        assert len(a) > 50
        assert [r for r in a if r not in b] == [] and [r for r in b if r not in a] == []
    finally:
        pg_server.drop_db(ref)
    with psycopg.connect(djempty, autocommit=True) as c:
        assert migrate.check_schema(c) == migrate.latest_version()

    call_command("migrate", "pgqueue", "zero", verbosity=0)
    with psycopg.connect(djempty, autocommit=True) as c:
        assert c.execute("select to_regnamespace('pgqueue')").fetchone()[0] is None
    call_command("migrate", "pgqueue", verbosity=0)   # and back up
    with psycopg.connect(djempty, autocommit=True) as c:
        assert migrate.check_schema(c) == migrate.latest_version()


def test_migrate_skips_versions_pgqueue_migrate_already_applied(djdb):
    # djdb already has the schema from `pgqueue migrate`: Django records, changes nothing
    before = describe(djdb)
    call_command("migrate", verbosity=0)
    assert describe(djdb) == before
    applied = committed(djdb, "select app, name from django_migrations where app = 'pgqueue' "
                              "order by name")
    assert len(applied) == len(migrate.migrations())


def test_sqlmigrate_shows_the_shipped_sql_and_models_need_no_new_migration(djdb):
    import io
    out = io.StringIO()
    call_command("sqlmigrate", "pgqueue", "0001", stdout=out)
    assert migrate.migrations()[0].sql.strip() in out.getvalue()
    call_command("makemigrations", "pgqueue", "--check", "--dry-run", verbosity=0)


# -- admin ----------------------------------------------------------------------------

def test_admin_lists_filters_and_retries_and_cancels(djdb):
    from django.contrib.auth.models import User
    from django.test import Client

    call_command("migrate", verbosity=0)
    User.objects.create_superuser("admin", "a@example.com", "pw")
    done = tasks.note.enqueue("one")
    waiting = tasks.note.using(delay=3600).enqueue("two")
    with psycopg.connect(djdb, autocommit=True) as c:
        c.execute("update pgqueue.jobs set state = 'discarded', finished_at = now(), "
                  "errors = '[{\"type\": \"builtins.ValueError\", \"message\": \"bad <x>\", "
                  "\"traceback\": \"Traceback ...\", \"attempt\": 1}]' where id = %s",
                  (done.id,))
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    page = client.get("/admin/pgqueue/job/?state__exact=discarded")
    assert page.status_code == 200
    body = page.content.decode()
    assert f">{done.id}<" in body and f">{waiting.id}<" not in body
    detail = client.get(f"/admin/pgqueue/job/{done.id}/change/").content.decode()
    assert "bad &lt;x&gt;" in detail and "Traceback ..." in detail
    assert 'name="_save"' not in detail      # read-only
    assert client.get("/admin/pgqueue/job/add/").status_code == 403

    r = client.post("/admin/pgqueue/job/", {"action": "retry_jobs",
                                            "_selected_action": [done.id]}, follow=True)
    assert r.status_code == 200 and "1 available" in r.content.decode()
    r = client.post("/admin/pgqueue/job/", {"action": "cancel_jobs",
                                            "_selected_action": [waiting.id]}, follow=True)
    assert "1 cancelled" in r.content.decode()
    assert committed(djdb, "select state from pgqueue.jobs order by id") == [
        ("available",), ("cancelled",)]
    # a retry refused by the unique index is counted; the other selected jobs go on
    old = tasks.note.using(unique_key="k").enqueue("three")
    with psycopg.connect(djdb, autocommit=True) as c:
        c.execute("update pgqueue.jobs set state = 'discarded', finished_at = now() "
                  "where id = %s", (old.id,))
    holder = tasks.note.using(unique_key="k").enqueue("four")
    r = client.post("/admin/pgqueue/job/", {"action": "retry_jobs",
                                            "_selected_action": [old.id, waiting.id]},
                    follow=True)
    assert r.status_code == 200
    assert "1 available, 1 skipped (unique_key held)" in r.content.decode()
    assert committed(djdb, "select id, state from pgqueue.jobs where id in "
                           f"({old.id}, {holder.id}, {waiting.id}) order by id") == [
        (waiting.id, "available"), (old.id, "discarded"), (holder.id, "available")]


def test_dashboard_behind_staff_login(djdb):
    import re

    from django.contrib.auth.models import User
    from django.test import Client

    call_command("migrate", verbosity=0)
    User.objects.create_user("visitor", password="pw")
    User.objects.create_user("ops", password="pw", is_staff=True)
    for i in range(3):
        tasks.note.using(queue="mail").enqueue(i)

    def paused() -> list:
        return committed(djdb, "select name, paused from pgqueue.queues")

    r = Client().get("/queue/jobs?state=available")
    assert r.status_code == 302 and r["location"] == (
        "/admin/login/?next=/queue/jobs%3Fstate%3Davailable")
    visitor = Client()
    visitor.force_login(User.objects.get(username="visitor"))
    for r in (visitor.get("/queue/"), visitor.post("/queue/queues/pause", {"name": "mail"})):
        assert r.status_code == 302 and r["location"].startswith("/admin/login/")
        assert b"pgqueue" not in r.content
    assert paused() == []

    ops = Client()
    ops.force_login(User.objects.get(username="ops"))
    page = ops.get("/queue/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "<h1>Overview</h1>" in body and 'href="/queue/static/dashboard.css"' in body
    ready = re.search(r'data-queue="mail">.*?data-count="ready"><a [^>]*>(\d+)<', body,
                      re.S).group(1)
    assert int(ready) == committed(djdb, "select count(*) from pgqueue.jobs where "
                                         "queue = 'mail' and state = 'available'")[0][0] == 3
    assert "script-src 'self'" in page["content-security-policy"]
    assert ops.get("/queue/static/dashboard.css").status_code == 200
    # the dashboard's own CSRF check still guards its actions
    assert ops.post("/queue/queues/pause", {"name": "mail"}).status_code == 403
    token = re.search(r'name="csrf_token" value="([^"]+)"', body).group(1)
    r = ops.post("/queue/queues/pause", {"name": "mail", "csrf_token": token, "next": "/queue/"})
    assert r.status_code == 303 and r["location"] == "/queue/"
    assert paused() == [("mail", True)]


def test_worker_command_has_the_cli_worker_options():
    import click

    from pgqueue import cli
    from pgqueue.contrib.django.management.commands.pgqueue_worker import Command
    parser = Command().create_parser("manage.py", "pgqueue_worker")
    ours = {s for a in parser._actions for s in a.option_strings}
    theirs = {s for p in cli.worker.params if isinstance(p, click.Option)
              for s in (*p.opts, *p.secondary_opts)}
    assert theirs <= ours


# -- examples/django_project -----------------------------------------------------------

def test_django_example_finds_its_database_like_pgqueue(dsn):
    """Without PGQUEUE_DSN the example shop connects with libpq's environment, as
    `pgqueue worker` would; pgqueue's own connection string agrees with Django's."""
    import os
    import subprocess
    import sys

    from psycopg.conninfo import conninfo_to_dict

    from .conftest import ROOT
    params = conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({f"PG{k.upper()}": str(params[k])
                for k in ("host", "port", "dbname", "user", "password") if params.get(k)})
    env["PGDATABASE"] = env.pop("PGDBNAME")
    env.update(DJANGO_SETTINGS_MODULE="shop.settings",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", (
            "from django.db import connection; from psycopg.conninfo import conninfo_to_dict; "
            "from pgqueue.contrib.django import conninfo; "
            "c = connection.cursor(); c.execute('select current_database()'); "
            "print(c.fetchone()[0]); print(conninfo_to_dict(conninfo())['dbname'])")],
        cwd=ROOT / "examples" / "django_project", env=env, capture_output=True, text=True,
        timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-2:] == [params["dbname"], params["dbname"]]


def test_django_example_project_end_to_end(dsn, tmp_path):
    """manage.py migrate; the view saves an order and enqueues in one atomic();
    manage.py pgqueue_worker runs the django.tasks task; SIGTERM stops it with exit 0."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import ROOT
    project = ROOT / "examples" / "django_project"
    env = dict(os.environ, PGQUEUE_DSN=dsn, DJANGO_SETTINGS_MODULE="shop.settings",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=project, env=env,
                              capture_output=True, text=True, timeout=120)

    r = manage("migrate", "--verbosity", "0")
    assert r.returncode == 0, r.stderr
    r = manage("shell", "-c", (
        "from django.test import Client; c = Client(); "
        "print(c.post('/orders/', {'item': 'tea', 'quantity': 2}).content.decode()); "
        "print(c.post('/orders/', {'item': 'none', 'quantity': 0}).status_code)"))
    assert r.returncode == 0, r.stderr
    import json
    first, second = r.stdout.strip().splitlines()[-2:]
    placed = json.loads(first)
    assert second == "400"
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("select item, receipt_sent from orders_order").fetchall() == [
            ("tea", False)]
        assert c.execute("select id::text, task, state from pgqueue.jobs").fetchall() == [
            (placed["task_result"], "orders.tasks.send_receipt", "available")]

    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([sys.executable, "manage.py", "pgqueue_worker", "-c", "2",
                               "--poll-interval", "0.5"], cwd=project, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def done():
            with psycopg.connect(dsn, autocommit=True) as c:
                return c.execute("select state = 'completed' from pgqueue.jobs").fetchone()[0]
        wait_until(done, 30, message="the example's job completed")
        r = manage("shell", "-c", (
            "from orders.tasks import send_receipt; "
            f"r = send_receipt.get_result('{placed['task_result']}'); "
            "print(r.status, r.return_value)"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == "SUCCESSFUL receipt sent for 2 x tea"
        with psycopg.connect(dsn, autocommit=True) as c:
            assert c.execute("select receipt_sent from orders_order").fetchone() == (True,)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        log.close()
    assert "Traceback" not in (tmp_path / "worker.log").read_text()
