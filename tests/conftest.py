"""Test fixtures: a real PostgreSQL, one fresh database per test that needs one.

By default the suite starts its own throwaway cluster from the embedded PostgreSQL 18
(Unix socket only, fsync off) in a temporary directory. ``PGQUEUE_TEST_DSN`` points it
at an existing server instead (it must allow CREATE DATABASE).

Isolation: every test that touches the database gets its own database, cloned from a
template that holds the migrated schema, so commits, NOTIFY and worker processes of
one test never meet another's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgqueue
from pgqueue import migrate
from pgqueue.embedded import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent

# Fuzz tests (tests/test_fuzz.py): a small deterministic run by default, so CI is
# repeatable and quick; `pytest --hypothesis-profile=long` explores far more inputs.
_FUZZ = dict(deadline=None, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=40, derandomize=True, **_FUZZ)
settings.register_profile("long", max_examples=2000, **_FUZZ)
settings.load_profile("ci")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


#: the side table: tasks write one row per execution, so tests count executions exactly
SIDE_DDL = """
    create table public.side (
        id bigserial primary key,
        job_id bigint,
        attempt integer,
        worker text,
        pid integer,
        event text not null default 'start',
        note text,
        at timestamptz not null default clock_timestamp()
    )"""


class Server:
    """The PostgreSQL server the tests use, and how to make databases on it."""

    def __init__(self, admin_dsn: str, embedded: EmbeddedServer | None):
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    def dsn_for(self, dbname: str) -> str:
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        return make_conninfo(**params)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def create_db(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            if template:
                conn.execute(f'create database "{name}" template "{template}"')
            else:
                conn.execute(f'create database "{name}"')
        return self.dsn_for(name)

    def drop_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    dsn = os.environ.get("PGQUEUE_TEST_DSN")
    if dsn:
        yield Server(dsn, None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="pgqueue-test-"))
    server = EmbeddedServer(tmp, settings={"fsync": "off", "synchronous_commit": "off",
                                           "full_page_writes": "off", "max_connections": "300"})
    server.start()
    try:
        yield Server(server.dsn, server)
    finally:
        server.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    name = f"pgqueue_tpl_{os.getpid()}"
    pg_server.drop_db(name)
    dsn = pg_server.create_db(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate.apply(conn)
        conn.execute(SIDE_DDL)
    yield name
    pg_server.drop_db(name)


@pytest.fixture
def dsn(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh database with the pgqueue schema and a ``public.side`` table."""
    name = f"pgqueue_t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_db(name, template=template_db)
    yield url
    pg_server.drop_db(name)


@pytest.fixture
def empty_dsn(pg_server: Server) -> Iterator[str]:
    """A fresh database without the pgqueue schema."""
    name = f"pgqueue_e_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_db(name)
    yield url
    pg_server.drop_db(name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the test database."""
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


@pytest.fixture
def app(dsn: str) -> Iterator[pgqueue.App]:
    a = pgqueue.App(dsn)
    yield a
    a.close()


class WorkerThread:
    """A Worker running in a thread of the test process."""

    def __init__(self, worker: pgqueue.Worker):
        self.worker = worker
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(install_signal_handlers=False)
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def start(self) -> WorkerThread:
        self.thread.start()
        wait_until(lambda: self.worker.last_heartbeat is not None or self.error, 15,
                   message="worker start")
        if self.error:
            raise self.error
        return self

    def stop(self, timeout: float = 30) -> None:
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker thread did not stop"
        if self.error:
            raise self.error


@pytest.fixture
def start_worker() -> Iterator[Callable[..., WorkerThread]]:
    """Start an in-process worker: ``start_worker(app, concurrency=4, ...)``."""
    started: list[WorkerThread] = []

    def start(app: pgqueue.App, **kwargs: Any) -> WorkerThread:
        kwargs.setdefault("poll_interval", 60.0)
        kwargs.setdefault("shutdown_grace", 5.0)
        w = WorkerThread(pgqueue.Worker(app, **kwargs)).start()
        started.append(w)
        return w

    yield start
    for w in started:
        if w.thread.is_alive():
            w.stop()


class WorkerProcess:
    """A real ``pgqueue worker`` process (for kills and signals)."""

    def __init__(self, dsn: str, app_spec: str, args: list[str], env: dict[str, str] | None):
        self.log_path = Path(tempfile.mkstemp(prefix="pgqueue-worker-", suffix=".log")[1])
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PGQUEUE_DSN"] = dsn
        full_env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{full_env.get('PYTHONPATH', '')}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgqueue.cli", "--log-level", "DEBUG", "worker",
             "--app", app_spec, *args],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "w"), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def spawn_worker(dsn: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``pgqueue worker`` processes: ``spawn_worker("tests.apps.basic", "-c", "4")``.

    With ``PGQUEUE_KEEP_WORKER_LOGS=DIR`` the workers' logs of each test are kept in DIR
    for post-mortems; otherwise they are deleted.
    """
    procs: list[WorkerProcess] = []

    def spawn(app_spec: str, *args: str, env: dict[str, str] | None = None,
              db: str | None = None) -> WorkerProcess:
        p = WorkerProcess(db or dsn, app_spec, list(args), env)
        procs.append(p)
        return p

    yield spawn
    keep = os.environ.get("PGQUEUE_KEEP_WORKER_LOGS")
    for i, p in enumerate(procs):
        if p.proc.poll() is None:
            p.kill()
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(p.log_path, Path(keep) / f"{request.node.name}-{i}-{p.pid}.log")
        with contextlib.suppress(OSError):
            p.log_path.unlink()


def wait_worker_registered(conn: psycopg.Connection, n: int = 1, timeout: float = 20) -> None:
    wait_until(lambda: conn.execute("select count(*) from pgqueue.workers").fetchone()[0] >= n,
               timeout, message=f"{n} worker(s) registered")
