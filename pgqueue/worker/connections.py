"""The worker's dedicated connections, and the watchdog that cuts any that hangs.

Owns: opening each bookkeeping connection (:class:`Connector`: autocommit, TCP
keepalives, the server-side bounds in ``BOOKKEEPING_SETTINGS``, asynchronous commit on
the claim connection), reconnecting after a failure with the outage back-off of
DESIGN §8 (:class:`_Conn`), and the :class:`Watchdog` thread that shuts down the socket
of a connection whose round trip takes longer than ``IO_TIMEOUT`` (the listener's:
``LISTENER_TIMEOUT``), so a black-holed network never blocks a component for good.

SQL: only ``select set_config(...)`` when a connection opens; every other statement
belongs to the component that owns the connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from .component import ThreadComponent

log = logging.getLogger("pgqueue.worker")

#: server-side bounds of every statement the worker runs for itself (milliseconds)
BOOKKEEPING_SETTINGS = {
    "statement_timeout": "30000",
    "lock_timeout": "5000",
    "idle_in_transaction_session_timeout": "60000",
}
#: seconds a bookkeeping round trip may take before the watchdog cuts the socket
IO_TIMEOUT = 45.0
#: seconds the listener's health check (``select 1``, every 5 s) may take: a silent
#: LISTEN connection is replaced within 5 + LISTENER_TIMEOUT + 1 s (documented: 15 s)
LISTENER_TIMEOUT = 5.0
#: seconds the listener may go without a sign of life before its socket is cut
LISTENER_SILENT = 15.0
#: seconds between reconnect attempts for the first RECONNECT_FAST_FOR seconds of an
#: outage, then RECONNECT_SLOW: every connection of the worker retries on its own, and
#: the first one back triggers a claim, so a job enqueued during an outage of any
#: length starts within 2 s of the database accepting connections again (DESIGN §8)
RECONNECT_FAST = 0.5
RECONNECT_FAST_FOR = 30.0
RECONNECT_SLOW = 1.5
#: seconds between two warnings of the same connection while its outage lasts
OUTAGE_LOG_EVERY = 30.0


def _server_timeout(exc: BaseException) -> bool:
    """The server cancelled the statement (``lock_timeout``, ``statement_timeout``): it
    rolled back whole, and the session is still good for the next one."""
    return isinstance(exc, (pgerrors.LockNotAvailable, pgerrors.QueryCanceled))


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError,
                            pgerrors.DeadlockDetected, pgerrors.SerializationFailure,
                            pgerrors.LockNotAvailable, pgerrors.QueryCanceled))


class Connector:
    """The connection factory of one worker's components.

    :param conninfo: libpq connection string of the app.
    :param listen: ``False`` in poll-only mode (behind a transaction pooler): no
        prepared statements and no session settings.
    :param on_reconnect: called as ``on_reconnect(role, seconds_away)`` by the first
        successful connection of a role after a failure.
    """

    def __init__(self, conninfo: str, *, listen: bool,
                 on_reconnect: Callable[[str, float], None]):
        self.conninfo = conninfo
        self.listen = listen
        self.on_reconnect = on_reconnect

    def connect(self, role: str) -> psycopg.Connection:
        conn = psycopg.connect(
            self.conninfo, autocommit=True, application_name=f"pgqueue-worker:{role}",
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3,
            connect_timeout=10,
            prepare_threshold=0 if self.listen else None)
        if self.listen:
            # Session settings would leak to other clients behind a transaction pooler:
            # in poll-only mode the operator sets them on the role instead.
            for k, v in BOOKKEEPING_SETTINGS.items():
                conn.execute("select set_config(%s, %s, false)", (k, v))
            if role == "claim":
                # A claim need not wait for its WAL flush: if the server crashes before
                # the flush, the claim is forgotten and the job runs again (at-least-once),
                # and our late outcome is fenced out by worker_id. A completion commits
                # synchronously, which flushes every earlier claim record with it.
                conn.execute("select set_config('synchronous_commit', 'off', false)")
        return conn

    def reconnected(self, role: str, away: float) -> None:
        self.on_reconnect(role, away)


class _Conn:
    """A dedicated autocommit connection that reconnects and can be cut by the watchdog.

    After a failure, callers wait :meth:`backoff` seconds before the next attempt; the
    first connection made after a failure is a reconnect, and tells the connector, so
    the worker claims at once what was enqueued while the database was away (DESIGN §8).
    """

    def __init__(self, connector: Connector, role: str):
        self.connector = connector
        self.role = role
        self.conn: psycopg.Connection | None = None
        self.busy_since: float | None = None
        self.failures = 0
        #: monotonic time of the first failure since the last success (None: healthy)
        self.down_since: float | None = None
        self._logged_at = 0.0

    def get(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.close()
            self.conn = self.connector.connect(self.role)
            if self.down_since is not None:
                away, self.down_since = time.monotonic() - self.down_since, None
                self.connector.reconnected(self.role, away)
        return self.conn

    def close(self) -> None:
        c, self.conn = self.conn, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: S110 - closing a broken connection  # pragma: no cover
                pass

    def failed(self) -> None:
        """Record a lost connection or a failed connection attempt (the connection is
        dropped; the next :meth:`get` reconnects)."""
        self.close()
        self.failures += 1
        if self.down_since is None:
            self.down_since = time.monotonic()

    def run(self, fn: Callable[[psycopg.Connection], Any]) -> Any:
        """Run ``fn(conn)``; on a connection error drop the connection and re-raise."""
        conn = None
        try:
            conn = self.get()
            self.busy_since = time.monotonic()
            out = fn(conn)
            self.failures = 0
            return out
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            if _server_timeout(e) and conn is not None and not conn.broken:
                # A held lock, not a lost server: keep the session, and do not back off
                # further each time (the statement itself already waited its timeout).
                raise
            self.failed()
            raise
        finally:
            self.busy_since = None

    def backoff(self) -> float:
        """Seconds to wait before the next attempt: 0.1 after a first failure (a blip),
        then ``RECONNECT_FAST`` for the first ``RECONNECT_FAST_FOR`` seconds of an
        outage, ``RECONNECT_SLOW`` after that."""
        if self.failures <= 1 or self.down_since is None:
            return 0.1
        away = time.monotonic() - self.down_since
        return RECONNECT_FAST if away < RECONNECT_FAST_FOR else RECONNECT_SLOW

    def should_log(self) -> bool:
        """Whether to log this failure: a connection error only at the start of an
        outage and then every ``OUTAGE_LOG_EVERY`` seconds (retries are frequent)."""
        now = time.monotonic()
        if self.failures <= 1 or now - self._logged_at >= OUTAGE_LOG_EVERY:
            self._logged_at = now
            return True
        return False

    def outage(self) -> str:
        """`` (database unreachable for N s)`` during an outage, else empty."""
        if self.down_since is None or self.failures <= 1:
            return ""
        return f" (unreachable for {time.monotonic() - self.down_since:.0f} s)"

    def cut(self) -> None:
        """Shut the socket down from another thread, so a blocked call returns."""
        c = self.conn
        if c is None:
            return
        try:
            fd = c.pgconn.socket
            s = socket.socket(fileno=os.dup(fd))
            try:
                s.shutdown(socket.SHUT_RDWR)
            finally:
                s.close()
        except Exception:  # noqa: S110 - cutting a socket that may be gone  # pragma: no cover
            pass


class Beat:
    """The monotonic time a component last showed it is alive (thread-safe enough:
    one float written by one thread, read by another)."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def touch(self) -> None:
        self.at = time.monotonic()


class Watchdog(ThreadComponent):
    """Every second, cuts the socket of any connection busy for longer than its limit,
    and the listener's when it showed no sign of life for ``LISTENER_SILENT`` s.

    :param conns: the connections watched (``IO_TIMEOUT`` each).
    :param listener: the LISTEN connection (``LISTENER_TIMEOUT``), or ``None``.
    :param listener_alive: the listener's :class:`Beat`, checked when ``listener`` is set.
    :param done: set when the worker's bookkeeping threads may exit.
    :param io_timeout: seconds a bookkeeping round trip may take.
    """

    thread_name = "pgqueue-watchdog"

    def __init__(self, conns: Iterable[_Conn], listener: _Conn | None, listener_alive: Beat,
                 done: threading.Event, *, io_timeout: float = IO_TIMEOUT,
                 listener_timeout: float = LISTENER_TIMEOUT):
        self.conns = list(conns)
        self.listener = listener
        self.listener_alive = listener_alive
        self.done = done
        self.io_timeout = io_timeout
        self.listener_timeout = listener_timeout

    def _run(self) -> None:
        watched = [*self.conns, *([self.listener] if self.listener is not None else [])]
        while not self.done.wait(1.0):
            now = time.monotonic()
            for c in watched:
                limit = self.listener_timeout if c is self.listener else self.io_timeout
                if c.busy_since is not None and now - c.busy_since > limit:
                    log.warning("%s connection stuck for %.0f s; cutting it", c.role,
                                now - c.busy_since)
                    c.cut()
            if self.listener is not None and now - self.listener_alive.at > LISTENER_SILENT:
                log.warning("listener silent for %.0f s; cutting its connection",
                            now - self.listener_alive.at)
                self.listener_alive.touch()
                self.listener.cut()
