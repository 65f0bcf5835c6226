"""Fault injectors and measuring helpers of the fault-injection suite.

- :class:`Proxy`: a TCP proxy between a worker and the database that can drop its
  connections, black-hole them (stop forwarding without closing: the peer sees silence),
  swallow only the server's replies, or play an outage (refuse every connection);
  connections are tagged with the ``application_name`` of their startup packet, so one
  worker connection (``pgqueue-worker:listen``) can be singled out.
- :class:`PgBouncer`: a throwaway PgBouncer in transaction pooling mode in front of the
  test server (Debian's ``pgbouncer``; run inside a user namespace as root).
- :class:`Fleet`: real ``pgqueue worker`` processes to SIGKILL/SIGSTOP/SIGCONT/SIGTERM,
  with the database time of every kill.
- database helpers: terminate backends by application name, hold a table lock or a
  long transaction, one-shot queries that survive a server restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..conftest import wait_until

WORKER = "tests.faults.app"
TERMINAL = ("completed", "discarded", "cancelled")


# -- one-shot database access -------------------------------------------------------

def rows(dsn: str, sql: str, params: Any = None) -> list[tuple]:
    """Run one query on a fresh autocommit connection (survives server restarts)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(dsn: str, sql: str, params: Any = None) -> Any:
    r = rows(dsn, sql, params)
    return r[0][0] if r else None


def safe(fn: Callable[[], Any]) -> Callable[[], Any]:
    """A wait_until predicate that treats a connection error as "not yet"."""
    def pred() -> Any:
        try:
            return fn()
        except psycopg.OperationalError:
            return None
    return pred


def db_now(dsn: str) -> dt.datetime:
    return scalar(dsn, "select clock_timestamp()")


def secs(a: dt.datetime, b: dt.datetime) -> float:
    """``a - b`` in seconds."""
    return (a - b).total_seconds()


def states(dsn: str) -> dict[str, int]:
    return dict(rows(dsn, "select state, count(*) from pgqueue.jobs group by state"))


def state_of(dsn: str, job_id: int) -> str | None:
    return scalar(dsn, "select state from pgqueue.jobs where id = %s", (job_id,))


def side(dsn: str, job_id: int | None = None, event: str | None = "start") -> list[tuple]:
    """(job_id, attempt, worker, pid, event, at) rows of ``public.side`` in insert order."""
    return rows(dsn, "select job_id, attempt, worker, pid, event, at from public.side "
                     "where (%(job)s::bigint is null or job_id = %(job)s) "
                     "and (%(event)s::text is null or event = %(event)s) order by id",
                {"job": job_id, "event": event})


def first_start_after(dsn: str, when: dt.datetime) -> dt.datetime | None:
    return scalar(dsn, "select min(at) from public.side where event = 'start' and at > %s",
                  (when,))


def worker_id_of(dsn: str, pid: int, timeout: float = 20) -> Any:
    return wait_until(safe(lambda: scalar(dsn, "select id from pgqueue.workers where pid = %s",
                                          (pid,))), timeout, 0.05, f"worker row of pid {pid}")


def backends(dsn: str, role: str | None = None, pid: int | None = None) -> list[tuple]:
    """(backend pid, application_name, state) of this database's worker connections,
    optionally only those named ``pgqueue-worker:<role>`` or of worker process ``pid``
    (matched through pg_stat_activity.client_port is not possible over a Unix socket,
    so callers that need one process route it through its own DSN or proxy)."""
    pattern = f"pgqueue-worker:{role}" if role else "pgqueue-worker:%"
    return rows(dsn, "select pid, application_name, state from pg_stat_activity "
                     "where datname = current_database() and application_name like %s "
                     "and pid <> pg_backend_pid()", (pattern,))


def terminate(dsn: str, role: str | None = None) -> int:
    """``pg_terminate_backend`` of the worker connections named ``pgqueue-worker:<role>``
    (every worker connection with ``role=None``); returns how many were terminated."""
    pattern = f"pgqueue-worker:{role}" if role else "pgqueue-worker:%"
    return scalar(dsn, "select count(*) from (select pg_terminate_backend(pid) from "
                       "pg_stat_activity where datname = current_database() "
                       "and application_name like %s and pid <> pg_backend_pid()) t",
                  (pattern,))


@contextlib.contextmanager
def table_lock(dsn: str, table: str = "pgqueue.jobs",
               mode: str = "access exclusive") -> Iterator[psycopg.Connection]:
    """Hold ``LOCK TABLE table IN mode MODE`` until the block ends (then commit)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"lock table {table} in {mode} mode")
        yield conn
        conn.commit()


@contextlib.contextmanager
def long_transaction(dsn: str, table: str = "public.side",
                     isolation: str = "repeatable read") -> Iterator[psycopg.Connection]:
    """An open transaction that has read ``table`` (its snapshot pins the xmin horizon)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"begin isolation level {isolation}")
        conn.execute(f"select count(*) from {table}").fetchone()
        yield conn
        conn.rollback()


@contextlib.contextmanager
def role_with_timeouts(admin_dsn: str, dsn: str, **settings: str) -> Iterator[str]:
    """A login superuser role whose sessions in ``dsn``'s database get ``settings``
    (e.g. ``statement_timeout="1s"``); yields a DSN that connects as it."""
    role = f"pgq_fault_{os.urandom(5).hex()}"
    dbname = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(f"create role {role} login superuser")
        for k, v in settings.items():
            c.execute(sql.SQL("alter role {} in database {} set {} = {}").format(
                sql.Identifier(role), sql.Identifier(dbname), sql.Identifier(k),
                sql.Literal(v)))
    params = conninfo_to_dict(dsn)
    params["user"] = role
    params.pop("password", None)
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                      "where usename = %s", (role,))
            for _ in range(100):
                try:
                    c.execute(f'alter role {role} in database "{dbname}" reset all')
                    c.execute(f"drop role if exists {role}")
                    break
                except (psycopg.errors.DependentObjectsStillInUse,
                        psycopg.errors.ObjectInUse, psycopg.errors.InvalidCatalogName):
                    time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_host(dsn: str, host: str, port: int) -> str:
    params = conninfo_to_dict(dsn)
    params.update(host=host, port=str(port))
    params.pop("hostaddr", None)
    return make_conninfo(**params)


# -- worker processes ------------------------------------------------------------------

class Fleet:
    """A set of ``pgqueue worker`` processes started with the same arguments.

    ``spawn`` is the ``spawn_worker`` fixture; every kill records the database time right
    after the process is gone (an upper bound of its last execution's end).
    """

    def __init__(self, spawn: Callable[..., Any], dsn: str, *args: str,
                 app: str = WORKER, db: str | None = None, env: dict[str, str] | None = None):
        self.spawn, self.dsn, self.args, self.app = spawn, dsn, args, app
        self.db, self.env = db, env
        self.live: list[Any] = []
        self.all: list[Any] = []
        self.killed: dict[int, dt.datetime] = {}    # pid -> database time after the kill

    def start(self, n: int = 1) -> list[Any]:
        out = []
        for _ in range(n):
            p = self.spawn(self.app, *self.args, env=self.env, db=self.db)
            self.live.append(p)
            self.all.append(p)
            out.append(p)
        return out

    def kill(self, p: Any) -> dt.datetime:
        """SIGKILL ``p`` and wait for it; returns the database time after its death."""
        p.signal(signal.SIGKILL)
        p.wait(10)
        self.live.remove(p)
        when = db_now(self.dsn)
        self.killed[p.pid] = when
        return when

    def kill_random(self, rng: random.Random) -> Any:
        p = rng.choice(self.live)
        self.kill(p)
        return p

    def stop(self, p: Any) -> None:
        p.signal(signal.SIGSTOP)

    def cont(self, p: Any) -> None:
        p.signal(signal.SIGCONT)

    def term(self, p: Any, timeout: float = 60) -> int:
        p.signal(signal.SIGTERM)
        code = p.wait(timeout)
        if p in self.live:
            self.live.remove(p)
        return code

    def term_all(self, timeout: float = 60) -> list[int]:
        for p in self.live:
            p.signal(signal.SIGTERM)
        codes = [p.wait(timeout) for p in self.live]
        self.live.clear()
        return codes

    def assert_alive(self) -> None:
        for p in self.live:
            assert p.proc.poll() is None, f"worker {p.pid} exited:\n{p.log()[-4000:]}"


# -- TCP proxy -------------------------------------------------------------------------

_APP_NAME = re.compile(rb"application_name\x00([^\x00]*)\x00")


class _Link:
    def __init__(self, proxy: Proxy, client_w: asyncio.StreamWriter):
        self.proxy = proxy
        self.client_w = client_w
        self.server_w: asyncio.StreamWriter | None = None
        self.tag: str | None = None
        self.mode = "pass"          # pass | blackhole | mute (server replies swallowed)
        self.head = b""
        self.closed = False
        # mute_at_rows: the column count of the first DataRow to swallow, and the bytes of
        # a server message not yet complete
        self.mute_cols: int | None = None
        self.down = b""

    def downstream(self, data: bytes) -> bytes:
        """What of the server's ``data`` reaches the client while ``mute_cols`` is armed:
        whole protocol messages up to the first DataRow of ``mute_cols`` columns; from
        there on the link is muted."""
        self.down += data
        out, buf, i = [], self.down, 0
        while len(buf) - i >= 5:
            size = int.from_bytes(buf[i + 1:i + 5], "big")
            if len(buf) - i < 1 + size:
                break
            if (buf[i:i + 1] == b"D" and size >= 6
                    and int.from_bytes(buf[i + 5:i + 7], "big") == self.mute_cols):
                self.mode, self.mute_cols, self.down = "mute", None, b""
                return b"".join(out)
            out.append(buf[i:i + 1 + size])
            i += 1 + size
        self.down = buf[i:]
        return b"".join(out)

    def close(self) -> None:
        self.closed = True
        for w in (self.client_w, self.server_w):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.transport.abort()


class Proxy:
    """Forward ``127.0.0.1:<port>`` to the database of ``dsn`` (TCP or Unix socket).

    Rules select connections by a predicate on their ``application_name`` (``tag``)."""

    def __init__(self, dsn: str):
        params = conninfo_to_dict(dsn)
        host = params.get("host") or "/var/run/postgresql"
        port = int(params.get("port") or 5432)
        self.upstream_unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self.upstream_tcp = (host, port)
        self.dsn = dsn
        self.links: list[_Link] = []
        self.accepted = 0
        self.refusing = False       # new connections are closed at once (a server away)
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-proxy")
        self.port = 0

    # lifecycle
    def start(self) -> Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()
        self._loop.run_until_complete(main())
        self._loop.run_forever()

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self.links):
                link.close()
            # the forwarding tasks end with their links: cancel and reap them, so none is
            # destroyed pending when the loop stops
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shut(), self._loop)
            self._thread.join(5)

    def client_dsn(self, dsn: str | None = None) -> str:
        """``dsn`` (default: the upstream one) pointed at the proxy."""
        params = conninfo_to_dict(dsn or self.dsn)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable",
                      gssencmode="disable")
        return make_conninfo(**params)

    # forwarding
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        link = _Link(self, writer)
        self.links.append(link)
        try:
            if self.upstream_unix:
                s_reader, s_writer = await asyncio.open_unix_connection(self.upstream_unix)
            else:
                s_reader, s_writer = await asyncio.open_connection(*self.upstream_tcp)
        except OSError:
            link.close()
            return
        link.server_w = s_writer
        try:
            await asyncio.gather(self._pump(link, reader, s_writer, upstream=True),
                                 self._pump(link, s_reader, writer, upstream=False),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            pass    # the proxy is closing: end quietly, the stream callback logs a cancel
        link.close()
        with contextlib.suppress(ValueError):
            self.links.remove(link)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while not link.closed:
                data = await reader.read(65536)
                if not data:
                    break
                if upstream and link.tag is None and len(link.head) < 8192:
                    link.head += data
                    m = _APP_NAME.search(link.head)
                    if m:
                        link.tag = m.group(1).decode(errors="replace")
                if not upstream and link.mute_cols is not None:
                    data = link.downstream(data)
                if link.mode == "blackhole" or (link.mode == "mute" and not upstream):
                    continue        # swallowed: the sender sees silence, not a close
                if not data:
                    continue
                writer.write(data)
                await writer.drain()
        finally:
            link.close()

    # fault injection (thread-safe: plain attribute writes and loop callbacks)
    def matching(self, tag: str | Callable[[str], bool] | None) -> list[_Link]:
        if tag is None:
            pred: Callable[[str], bool] = lambda t: True  # noqa: E731
        elif isinstance(tag, str):
            pred = lambda t: t == tag  # noqa: E731
        else:
            pred = tag
        return [lk for lk in list(self.links) if not lk.closed and pred(lk.tag or "")]

    def blackhole(self, tag: str | Callable[[str], bool] | None = None) -> int:
        """Stop forwarding on the open matching connections without closing them."""
        found = self.matching(tag)
        for lk in found:
            lk.mode = "blackhole"
        return len(found)

    def mute_at_rows(self, tag: str | Callable[[str], bool] | None, columns: int) -> int:
        """Arm the open matching connections: the first result row of ``columns`` columns
        the server sends, and every reply after it, is swallowed (a reply is lost exactly
        when it carries rows, whatever ran on the connection before)."""
        found = self.matching(tag)
        for lk in found:
            lk.mute_cols = columns
        return len(found)

    def drop(self, tag: str | Callable[[str], bool] | None = None) -> int:
        """Close the matching connections abruptly (both sides)."""
        found = self.matching(tag)
        for lk in found:
            self._loop.call_soon_threadsafe(lk.close)
        return len(found)

    def go_away(self) -> int:
        """An outage as the clients see it: every connection is closed and new ones are
        closed as soon as they open, until :meth:`come_back`. Returns how many closed."""
        self.refusing = True
        return self.drop()

    def come_back(self) -> None:
        """End the outage: new connections are forwarded again."""
        self.refusing = False

    def tags(self) -> list[str]:
        return sorted(lk.tag or "?" for lk in self.links if not lk.closed)


# -- PgBouncer ---------------------------------------------------------------------------

def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


class PgBouncer:
    """PgBouncer in transaction pooling mode in front of the server of ``admin_dsn``,
    on a free TCP port of 127.0.0.1, for every database (``* =`` fallback)."""

    def __init__(self, admin_dsn: str, pool_size: int = 5):
        self.binary = pgbouncer_binary()
        self.admin = conninfo_to_dict(admin_dsn)
        self.pool_size = pool_size
        self.dir = Path(tempfile.mkdtemp(prefix="pgqueue-pgbouncer-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> PgBouncer:
        assert self.binary
        host = self.admin.get("host") or "/var/run/postgresql"
        target = f"host={host} port={self.admin.get('port') or 5432} " \
                 f"user={self.admin.get('user') or 'postgres'}"
        if self.admin.get("password"):
            target += f" password={self.admin['password']}"
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(f"""[databases]
* = {target}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
max_db_connections = {self.pool_size}
server_reset_query =
server_check_delay = 1
ignore_startup_parameters = extra_float_digits,options
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
admin_users = postgres
""")
        cmd = [self.binary, str(ini)]
        if os.geteuid() == 0:    # pgbouncer refuses to run as root
            cmd = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.proc.stderr.read().decode()} "
                                   f"{self.log()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen: {self.log()}")

    def dsn(self, dsn: str) -> str:
        """``dsn`` (a database on the same server) through this PgBouncer."""
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable",
                      gssencmode="disable")
        params.pop("password", None)
        return make_conninfo(**params)

    def log(self) -> str:
        p = self.dir / "pgbouncer.log"
        return p.read_text() if p.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)
