"""The worker: claim loop, executor, completer, heartbeat, listener, shutdown.

One process is one :class:`Worker`. It keeps four dedicated connections, none from the
app's pool, so a task that exhausts the pool cannot stall the worker's bookkeeping:

- *claim*: ``pgqueue.claim`` in batches sized to free slots (``FOR UPDATE SKIP
  LOCKED``; the row becomes ``running`` with a new attempt token in the same
  statement, so no transaction stays open while user code runs). Claims start at the
  positions where earlier claims found jobs (:mod:`pgqueue._positions`), so a long
  transaction that keeps vacuum from cleaning the claim index does not slow them;
- *completer*: records completions in batches and failures (fenced by the attempt
  token: a stale worker's late outcome changes nothing);
- *heartbeat*: refreshes the worker row every ``heartbeat_interval`` seconds, picks up
  cancellation requests, and rescues running jobs of dead workers;
- *listener*: ``LISTEN pgqueue_jobs`` / ``pgqueue_requeued`` / ``pgqueue_cancel``;
  after any reconnect it triggers a catch-up claim from the start of every queue. Omitted in poll-only mode (for transaction poolers).

A watchdog shuts down the socket of any of them that hangs (a black-holed network),
so every connection recovers on its own; the process never exits because the
database went away for a while. During an outage each connection retries every 0.5 s
for the first 30 s, then every 1.5 s, and whichever reconnects first triggers a
catch-up claim, so a job enqueued meanwhile starts within 2 s of the database
accepting connections again.

Sync tasks run on ``concurrency`` threads; ``async def`` tasks on one event loop
thread; both share the same ``concurrency`` slots.

Shutdown (SIGTERM/SIGINT, or :meth:`Worker.stop`): stop claiming, let running jobs
finish for ``shutdown_grace`` seconds, then hand unfinished ones back in one
transaction (the interrupted attempt does not count) and exit. A second signal skips
the rest of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import queue as queue_mod
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from . import migrate, serialization
from ._positions import ClaimPositions
from ._sql import q
from .app import MAX_DELAY, App, Task
from .context import JobContext
from .errors import Cancelled, ConfigurationError, Discard, RetryLater, SchemaError
from .hooks import EMPTY_META
from .limits import apply_queue_declarations, task_concurrency
from .observe import Observer

__all__ = ["Worker"]

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
#: transaction-scoped advisory lock taken by the one worker that prunes in a round
PRUNE_LOCK = 0x706771756576
COMPLETE_BATCH = 400
#: seconds between reconnect attempts for the first RECONNECT_FAST_FOR seconds of an
#: outage, then RECONNECT_SLOW: every connection of the worker retries on its own, and
#: the first one back triggers a claim, so a job enqueued during an outage of any
#: length starts within 2 s of the database accepting connections again (DESIGN §8)
RECONNECT_FAST = 0.5
RECONNECT_FAST_FOR = 30.0
RECONNECT_SLOW = 1.5
#: seconds between two warnings of the same connection while its outage lasts
OUTAGE_LOG_EVERY = 30.0


#: characters of an error message or traceback kept per attempt (head and tail)
ERROR_TEXT_LIMIT = 64 * 1024


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: NUL characters and lone surrogates escaped,
    at most ``ERROR_TEXT_LIMIT`` characters (its start and end, the middle cut out)."""
    if len(text) > ERROR_TEXT_LIMIT:
        half = ERROR_TEXT_LIMIT // 2
        text = (f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n"
                f"{text[-half:]}")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _error_dict(exc: BaseException, tb: str | None = None) -> dict[str, Any]:
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException as e:  # noqa: BLE001 - a broken __str__ must not lose the job
        message = f"<{cls.__qualname__}: str() of the exception raised {type(e).__name__}>"
    if tb is None:
        tb = "".join(traceback.format_exception(cls, exc, exc.__traceback__))
    return {"type": _storable(f"{cls.__module__}.{cls.__qualname__}"),
            "message": _storable(message), "traceback": _storable(tb)}


def _retry_delay(delay: Any) -> float | None:
    """A RetryLater delay the database can add to now(): seconds clamped to
    0..MAX_DELAY; None (the task's backoff) for a value that is not a number."""
    if isinstance(delay, dt.timedelta):
        delay = delay.total_seconds()
    try:
        delay = float(delay)
    except (TypeError, ValueError):
        return None
    if delay != delay:
        return None
    return min(max(delay, 0.0), MAX_DELAY)


def _server_timeout(exc: BaseException) -> bool:
    """The server cancelled the statement (``lock_timeout``, ``statement_timeout``): it
    rolled back whole, and the session is still good for the next one."""
    return isinstance(exc, (pgerrors.LockNotAvailable, pgerrors.QueryCanceled))


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError,
                            pgerrors.DeadlockDetected, pgerrors.SerializationFailure,
                            pgerrors.LockNotAvailable, pgerrors.QueryCanceled))


@dataclasses.dataclass(eq=False)
class _Running:
    id: int
    attempt: int
    task: Task | None
    name: str
    queue: str
    args: Any
    kwargs: Any
    ctx: JobContext
    timeout: float | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    abandoned: bool = False          # outcome decided elsewhere (shutdown hand-back)
    timed_out: bool = False          # a sync attempt ran past its timeout
    future: Any = None               # concurrent.futures.Future of an async task
    inputs: Any = None               # workflow inputs (JSON array) passed before args
    ended: float | None = None       # monotonic time the outcome was known (for metrics)
    exc: BaseException | None = None  # the exception of a failed attempt (for error hooks)


def _parse(text: str, what: str) -> Any:
    """Parse a job's JSON document (claimed as text) and decode its tags.

    :raises Discard: the document cannot be read by this worker (an integer of more
        digits than ``sys.get_int_max_str_digits()``, nesting deeper than the recursion
        limit, a malformed tag); retrying would fail the same way.
    """
    try:
        return serialization.loads(text)
    except RecursionError:
        raise Discard(f"the job's {what} are nested too deeply to be read here; "
                      "flatten them and enqueue the job again") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is permanent
        raise Discard(f"the job's {what} cannot be read: {type(e).__name__}: {e}") from None


def _meta(text: str) -> Any:
    """A job's meta, claimed as JSON text, as a read-only mapping (empty if unreadable)."""
    try:
        return MappingProxyType(json.loads(text))
    except Exception:  # noqa: BLE001 - never fail a job over its metadata
        log.warning("unreadable job meta %.80r; ignoring it", text)
        return EMPTY_META


class _Conn:
    """A dedicated autocommit connection that reconnects and can be cut by the watchdog.

    After a failure, callers wait :meth:`backoff` seconds before the next attempt; the
    first connection made after a failure is a reconnect, and tells the worker, which
    claims at once what was enqueued while the database was away (DESIGN §8).
    """

    def __init__(self, worker: Worker, role: str):
        self.worker = worker
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
            self.conn = self.worker._connect(self.role)
            if self.down_since is not None:
                away, self.down_since = time.monotonic() - self.down_since, None
                self.worker._reconnected(self.role, away)
        return self.conn

    def close(self) -> None:
        c, self.conn = self.conn, None
        if c is not None:
            try:
                c.close()
            except Exception:  # pragma: no cover - closing a broken connection
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
        except Exception:  # pragma: no cover
            pass


class Worker:
    """Runs jobs of ``app``'s registered tasks.

    :param app: the :class:`~pgqueue.App` whose tasks this worker runs; it only claims
        jobs of task names registered there (old and new service versions can share a
        queue during a rolling deploy).
    :param queues: queue names to claim from; ``None`` (default) claims from every queue.
    :param concurrency: jobs run at once (int >= 1, default 10).
    :param poll_interval: seconds between claims when no notification arrives (default
        5.0; the worker also wakes at the earliest due ``scheduled``/``retryable`` job).
    :param shutdown_grace: seconds running jobs may finish after SIGTERM (default 30.0).
    :param heartbeat_interval: seconds between heartbeats (default 2.0); must be at most
        a third of ``stale_after``.
    :param stale_after: seconds without heartbeat after which a worker counts as dead and
        its running jobs are rescued by any live worker (default 10.0). A dead worker's
        job is running again within ``stale_after + heartbeat_interval`` seconds. A worker
        rescues only while its own heartbeats are regular: after it was itself cut off
        for more than ``stale_after / 2`` (say, a lock on ``pgqueue.jobs``), it waits one
        heartbeat, so peers that were blocked alike are not taken for dead.
    :param listen: use LISTEN/NOTIFY (default True). ``False`` is poll-only mode, for a
        transaction pooler such as PgBouncer in transaction mode.
    :param name: a label shown in ``pgqueue workers`` (default ``host:pid``). Ownership is
        keyed on a fresh per-process UUID, never on this name.
    :param schema_wait: seconds to wait at start for ``pgqueue migrate`` to install or
        upgrade the schema before refusing to run (default 30.0).
    :param claim_batch: most jobs claimed per round trip (default: free slots, at most 100).
    :param metrics_port: serve Prometheus metrics on ``http://metrics_host:PORT/metrics``
        (int; 0 picks a free port, see ``worker.metrics.port``; default ``None``: off).
        Needs the ``metrics`` extra; see :mod:`pgqueue.metrics` for the series.
    :param metrics_host: address the metrics server binds (default ``"127.0.0.1"``:
        this host only; ``"0.0.0.0"`` exposes it on every interface).
    :param metrics_registry: collect the same metrics into this
        ``prometheus_client.CollectorRegistry`` (e.g. to serve them yourself); with
        neither this nor ``metrics_port`` no metrics are kept.
    :param metrics_interval: seconds between refreshes of the database-derived gauges
        (float > 0, default 15.0).
    :param prune_after: retention of finished jobs in seconds (default 7 days): every
        ``maintenance_interval`` one worker at a time (a transaction-scoped advisory
        lock, safe behind poolers) deletes ``completed``/``discarded``/``cancelled`` jobs
        finished longer ago. ``None`` turns automatic pruning off (``pgqueue prune``).
    :param maintenance_interval: seconds between maintenance rounds (pruning and the
        long-transaction check; default 60.0).
    :param scheduler: fire periodic jobs from this worker (default True). Every worker
        writes its app's schedule declarations at start either way; any one live
        worker with a scheduler fires each slot once.
    :param xmin_warn_after: warn when the oldest open transaction in the database is
        older than this many seconds (default 60.0): it holds back vacuum, so the dead
        rows of finished jobs pile up and claiming slows down. The last finding is in
        :attr:`oldest_transaction`; ``stats["vacuum_warnings"]`` counts the warnings.
        Seeing other roles' sessions needs ``pg_read_all_stats`` (or ``pg_monitor``).
    """

    def __init__(self, app: App, *, queues: list[str] | None = None, concurrency: int = 10,
                 poll_interval: float = 5.0, shutdown_grace: float = 30.0,
                 heartbeat_interval: float = 2.0, stale_after: float = 10.0,
                 listen: bool = True, name: str | None = None, schema_wait: float = 30.0,
                 claim_batch: int = 100, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", metrics_registry: Any = None,
                 metrics_interval: float = 15.0, prune_after: float | None = 7 * 86400.0,
                 maintenance_interval: float = 60.0, xmin_warn_after: float = 60.0,
                 scheduler: bool = True):
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        if heartbeat_interval * 3 > stale_after + 1e-9:
            raise ConfigurationError(
                f"heartbeat_interval ({heartbeat_interval} s) must be at most a third of "
                f"stale_after ({stale_after} s), or live jobs could look dead")
        if poll_interval <= 0:
            raise ConfigurationError("poll_interval must be > 0 seconds")
        if metrics_interval <= 0:
            raise ConfigurationError("metrics_interval must be > 0 seconds")
        if maintenance_interval <= 0:
            raise ConfigurationError("maintenance_interval must be > 0 seconds")
        if prune_after is not None and prune_after < 0:
            raise ConfigurationError("prune_after must be >= 0 seconds or None")
        self.app = app
        self.id = uuid.uuid4()
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.listen = listen
        if not listen:
            # Poll-only mode is for transaction poolers: the tasks' connections from the
            # app's pool must not prepare statements either (set before the pool opens).
            app.prepare_threshold = None
            if app._pool is not None:
                app._pool.kwargs["prepare_threshold"] = None
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.schema_wait = schema_wait
        self.claim_batch = max(1, claim_batch)
        self._max_owned = 2 * concurrency   # executing + waiting for their outcome's commit
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_registry = metrics_registry
        self.metrics_interval = metrics_interval
        self.prune_after = prune_after
        self.maintenance_interval = maintenance_interval
        self.xmin_warn_after = xmin_warn_after
        #: run the scheduler component (fires periodic jobs; see pgqueue.schedule)
        self.scheduler = scheduler
        self._scheduler: Any = None
        #: the oldest open transaction of the database at the last maintenance round:
        #: dict(age, pid, user, application, state, query), or None
        self.oldest_transaction: dict[str, Any] | None = None
        #: the :class:`pgqueue.metrics.WorkerMetrics` while running with metrics, else None
        self.metrics: Any = None
        self._observer: Observer | None = None   # None: nobody listens, outcomes cost nothing

        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._hurry = threading.Event()      # second signal: skip the grace period
        self._done = threading.Event()       # bookkeeping threads may exit
        self._more = True                    # a claim may find work
        self._busy = 0                       # functions executing now
        self._running: dict[int, _Running] = {}   # owned jobs not yet recorded
        self._need_release = False
        self._tasks_names: list[str] = []
        self._tasks_max_attempts: list[int] = []
        self._tasks_timeouts: list[float | None] = []
        self._tasks_concurrency: list[int | None] | None = None   # None: no task declares one
        self._exec_q: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._complete_q: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._completer_idle = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._claim = _Conn(self, "claim")
        self._completer = _Conn(self, "complete")
        self._heart = _Conn(self, "heartbeat")
        self._listener = _Conn(self, "listen")
        self._maint = _Conn(self, "maintenance")
        self._listener_ok = time.monotonic()
        self._listening = threading.Event()
        # Where claims last found jobs (per queue and priority level): later claims
        # start there instead of stepping over every dead index entry that an old
        # snapshot keeps (case B23). Poll-only workers hear no pgqueue_requeued and
        # claim without positions.
        self._positions = ClaimPositions(enabled=self.listen)
        self.last_heartbeat: float | None = None
        self.stats = {"claimed": 0, "completed": 0, "failed": 0, "rescued": 0, "pruned": 0,
                      "vacuum_warnings": 0}

    # -- connections -----------------------------------------------------------------

    def _connect(self, role: str) -> psycopg.Connection:
        conn = psycopg.connect(
            self.app.conninfo, autocommit=True, application_name=f"pgqueue-worker:{role}",
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

    # -- public ----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to shut down gracefully (thread- and signal-safe)."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()
        self._wake.set()

    def run(self, install_signal_handlers: bool = True) -> int:
        """Run until stopped; returns the process exit code (0 after a clean shutdown).

        :raises SchemaError: the schema stayed missing or outdated for ``schema_wait`` s.
        """
        self._tasks_names = sorted(n for n, t in self.app.tasks.items() if t.fn is not None)
        # Declared options, parallel to the names: the claim writes them into rows that
        # left them null (DESIGN 5.2); the retry policy travels with each failure.
        self._tasks_max_attempts = [self.app.tasks[n].max_attempts for n in self._tasks_names]
        self._tasks_timeouts = [self.app.tasks[n].timeout for n in self._tasks_names]
        self._tasks_concurrency = task_concurrency(self.app, self._tasks_names)
        if not self._tasks_names:
            raise ConfigurationError("the app has no tasks registered; check --app")
        self._wait_for_schema()
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        self._start_observer()
        try:
            self._heartbeat_once()
            apply_queue_declarations(self.app, lambda: self._connect("limits"))
            self._start_scheduler()
        except BaseException:
            self._stop_observer()
            self._restore_signal_handlers()
            raise
        self._start_threads()
        log.info("worker %s (%s) started: queues=%s concurrency=%d tasks=%s",
                 self.name, self.id, self.queues or "all", self.concurrency,
                 ", ".join(self._tasks_names[:20])
                 + (f" (+{len(self._tasks_names) - 20} more)" if len(self._tasks_names) > 20
                    else ""))
        if self.listen and not self._listening.wait(10):
            log.warning("LISTEN not established yet; claiming anyway (notifications resume "
                        "when the listener connects)")
        try:
            self._claim_loop()
        finally:
            self._shutdown()
            self._restore_signal_handlers()
        return 0

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the worker (a second one skips the grace period).

        The Python-level handler does nothing: it runs in the main thread between two
        bytecodes, possibly while that thread holds a lock ``stop()`` needs (an Event's),
        which would deadlock. The C-level handler writes each signal to a wakeup pipe
        instead, and a thread reading it calls ``stop()`` once per signal, so two quick
        SIGTERMs are never merged into one.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._signal_pipe = (read_fd, write_fd)
        self._old_wakeup_fd = signal.set_wakeup_fd(write_fd)
        self._old_handlers = {sig: signal.signal(sig, lambda *_: None)
                              for sig in (signal.SIGTERM, signal.SIGINT)}

        def watch() -> None:
            while True:
                try:
                    data = os.read(read_fd, 64)
                except OSError:
                    data = b""
                if not data:
                    os.close(read_fd)
                    return
                for signum in data:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        self.stop()

        t = threading.Thread(target=watch, name="pgqueue-signals", daemon=True)
        t.start()

    def _restore_signal_handlers(self) -> None:
        pipe = getattr(self, "_signal_pipe", None)
        if pipe is None:
            return
        signal.set_wakeup_fd(self._old_wakeup_fd)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        os.close(pipe[1])      # the watcher reads EOF and ends
        self._signal_pipe = None

    # -- startup ---------------------------------------------------------------------

    def _start_observer(self) -> None:
        """Create the observer (metrics, error hooks, logs) if anything listens.

        :raises ConfigurationError: metrics asked for without ``prometheus-client``, or
            the metrics port cannot be bound.
        """
        if not Observer.wanted(self):
            return
        metrics = None
        if self.metrics_port is not None or self.metrics_registry is not None:
            try:
                from .metrics import WorkerMetrics
            except ImportError as e:
                raise ConfigurationError(str(e)) from None
            metrics = WorkerMetrics(self, registry=self.metrics_registry,
                                    port=self.metrics_port, host=self.metrics_host,
                                    interval=self.metrics_interval)
            try:
                metrics.start()
            except OSError as e:
                metrics.close()
                raise ConfigurationError(
                    f"cannot serve metrics on {self.metrics_host}:{self.metrics_port}: {e}"
                ) from None
        self.metrics = metrics
        self._observer = Observer(self, metrics)

    def _stop_observer(self) -> None:
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.close()

    def _wait_for_schema(self) -> None:
        deadline = time.monotonic() + self.schema_wait
        said = False
        next_note = 0.0
        while True:
            try:
                self._claim.run(migrate.check_schema)
                return
            except SchemaError as e:
                if "newer than this code" in str(e) or time.monotonic() >= deadline:
                    raise
                if not said:
                    log.warning("%s; waiting up to %.0f s", e, self.schema_wait)
                    said = True
            except psycopg.OperationalError as e:
                if time.monotonic() >= deadline:
                    raise
                if time.monotonic() >= next_note:
                    log.warning("cannot connect yet (%s); retrying for up to %.0f s",
                                str(e).strip(), deadline - time.monotonic())
                    next_note = time.monotonic() + 5.0
            time.sleep(0.2)

    def _start_threads(self) -> None:
        def start(target: Callable[[], None], name: str) -> None:
            t = threading.Thread(target=target, name=f"pgqueue-{name}", daemon=True)
            t.start()
            self._threads.append(t)

        if any(t.is_async for t in self.app.tasks.values()):
            self._loop = asyncio.new_event_loop()
            start(self._loop.run_forever, "asyncio")
        if any(not t.is_async for t in self.app.tasks.values() if t.fn is not None):
            for i in range(self.concurrency):
                start(self._executor_thread, f"exec-{i}")
        start(self._completer_thread, "completer")
        start(self._heartbeat_thread, "heartbeat")
        start(self._watchdog_thread, "watchdog")
        start(self._maintenance_thread, "maintenance")
        if self.listen:
            start(self._listener_thread, "listener")

    # -- claim loop ------------------------------------------------------------------

    def _claim_loop(self) -> None:
        last_poll = time.monotonic()
        due_at = float("inf")     # monotonic time of the earliest known due job
        while not self._stopping.is_set():
            self._wake.clear()
            self._check_timeouts()
            # Free slots, and never more than `_max_owned` jobs claimed but not yet
            # recorded: a completer that falls behind slows claiming down (memory and
            # the running set stay bounded).
            free = min(self.concurrency - self._busy, self._max_owned - len(self._running))
            wait = self.poll_interval
            if free > 0 and self._more:
                n = min(free, self.claim_batch)
                # Cleared before the claim: a notification that arrives while it runs
                # (its job may be invisible to the claim's snapshot) asks for another.
                self._more = False
                try:
                    got = self._claim_batch(n)
                except Exception as e:
                    self._more = True
                    if not _transient(e):
                        log.exception("claim failed")
                        self._stopping.wait(1.0)
                        continue
                    if not self._claim.failures or self._claim.should_log():
                        log.warning("claim failed (%s)%s; retrying", str(e).strip(),
                                    self._claim.outage())
                    # A lock timeout retries at once (the claim queues for the lock again
                    # and gets it the moment it goes); a lost connection backs off. Either
                    # wait ends early on a notification or stop().
                    self._wake.wait(0.05 if _server_timeout(e) else
                                    self._claim.backoff() if self._claim.failures else 1.0)
                    continue
                last_poll = time.monotonic()
                if got == n:
                    self._more = True
                    continue          # there may be more; claim again while slots are free
                wait = self._next_wait()
                due_at = time.monotonic() + wait
            elif free > 0:
                # Woken without news (a slot freed up): keep the earliest due time, or a
                # scheduled job due before the next poll would wait for the poll.
                now = time.monotonic()
                wait = max(0.0, min(self.poll_interval - (now - last_poll), due_at - now))
            # While claims start at positions, a position-free claim at least every
            # second finds what landed behind one unannounced.
            wait = min(wait, self._next_deadline(), self._positions.next_refresh())
            if not self._wake.wait(wait):
                self._more = True  # poll interval or a due time elapsed

    def _next_wait(self) -> float:
        try:
            due = self._claim.run(lambda c: c.execute(
                q("next_due"), {"queues": self.queues, "tasks": self._tasks_names,
                                "task_concurrency": self._tasks_concurrency},
                prepare=self.listen).fetchone()[0])
        except Exception:
            return 1.0
        if due is None:
            return self.poll_interval
        return min(self.poll_interval, max(0.05, due))

    def _claim_batch(self, n: int) -> int:
        def work(conn: psycopg.Connection) -> list[tuple]:
            if self._need_release:
                with self._lock:
                    known = [(r.id, r.attempt) for r in self._running.values()]
                released = conn.execute(q("release_unknown"), {
                    "worker_id": self.id, "known": [i for i, _ in known],
                    "known_attempts": [a for _, a in known]}).fetchall()
                if released:
                    log.warning("released %d jobs whose claim reply was lost", len(released))
                self._need_release = False
            positions = self._positions.params()
            queues = self.queues
            if queues is None and positions["position_queues"] is not None:
                queues = self._positions.queues()
            return conn.execute(q("claim"), {"worker_id": self.id, "queues": queues,
                                             "tasks": self._tasks_names, "batch": n,
                                             "task_max_attempts": self._tasks_max_attempts,
                                             "task_timeouts": self._tasks_timeouts,
                                             "task_concurrency": self._tasks_concurrency,
                                             **positions}, prepare=self.listen).fetchall()
        t0 = time.perf_counter()
        try:
            rows = self._claim.run(work)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # The claim may have committed without our seeing the rows: release them
            # (not counted as an attempt) before claiming again. A statement the server
            # cancelled (lock or statement timeout) rolled back whole: nothing to release.
            if not _server_timeout(e):
                self._need_release = True
            raise
        except Exception:
            # The reply arrived but could not be read (a value this client cannot
            # represent): the claim committed, so hand its jobs back rather than leave
            # them running under a live worker that never started them.
            self._need_release = True
            raise
        took = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.claim_took(took)
        self._positions.taken(rows, n, took)
        for row in rows:
            self._dispatch(row)
        self.stats["claimed"] += len(rows)
        return len(rows)

    def _dispatch(self, row: tuple) -> None:
        (job_id, queue, name, args, kwargs, attempt, max_attempts, _prio, _run_at, timeout,
         latency, cancel_requested, inputs, meta, workflow_id, waited) = row
        task = self.app.tasks.get(name)
        ctx = JobContext(job_id=job_id, task=name, queue=queue, attempt=attempt,
                         max_attempts=max_attempts, worker_id=self.id, app=self.app,
                         meta=EMPTY_META if meta is None else _meta(meta),
                         workflow_id=workflow_id, waited=waited)
        r = _Running(id=job_id, attempt=attempt, task=task, name=name, queue=queue, args=args,
                     kwargs=kwargs, ctx=ctx, inputs=inputs,
                     timeout=timeout if timeout is not None else (task.timeout if task else None))
        if cancel_requested is not None:
            ctx._cancel.set()
        with self._lock:
            self._running[job_id] = r
            self._busy += 1
        if self._observer is not None:
            self._observer.started(r, latency)
        if task is not None and task.is_async:
            assert self._loop is not None
            r.future = asyncio.run_coroutine_threadsafe(self._run_async(r), self._loop)
        else:
            self._exec_q.put(r)

    def _next_deadline(self) -> float:
        now = time.monotonic()
        soonest = 3600.0
        with self._lock:
            for r in self._running.values():
                if r.timeout and not r.abandoned and not r.timed_out and r.future is None:
                    soonest = min(soonest, r.started + r.timeout - now)
        return max(0.0, soonest)

    def _check_timeouts(self) -> None:
        now = time.monotonic()
        expired = []
        with self._lock:
            for r in self._running.values():
                if (r.timeout and not r.abandoned and not r.timed_out and r.future is None
                        and now - r.started >= r.timeout):
                    r.timed_out = True
                    expired.append(r)
        for r in expired:
            # A thread cannot be killed: ask the task to stop and keep the job (and its
            # slot) until the thread returns, so no second attempt can run beside it.
            # The attempt is then recorded as a TimeoutError whatever it returned.
            r.ctx._cancel.set()
            log.warning("job %s %s timed out after %s s; waiting for its thread to return",
                        r.id, r.name, r.timeout)

    # -- execution -------------------------------------------------------------------

    def _executor_thread(self) -> None:
        while True:
            r = self._exec_q.get()
            if r is None:
                return
            try:
                self._run_sync(r)
            finally:
                with self._lock:
                    self._busy -= 1
                self._wake.set()

    def _call_args(self, r: _Running) -> tuple[list[Any], dict[str, Any]]:
        args = _parse(r.args, "arguments (args)")
        kwargs = _parse(r.kwargs, "keyword arguments (kwargs)")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            # only a direct insert can store these (pgqueue.enqueue refuses them)
            raise Discard("the job's args must be a JSON array and its kwargs a JSON "
                          f"object, got {type(args).__name__} and {type(kwargs).__name__}")
        if r.inputs is not None:  # a workflow step: previous result(s) come first
            inputs = _parse(r.inputs, "workflow inputs")
            if isinstance(inputs, dict) and "pgqueue_inputs_error" in inputs:
                raise Discard("the workflow inputs of this step could not be read: "
                              f"{inputs['pgqueue_inputs_error']}")
            args = [*inputs, *args]
        if r.task is not None and r.task.pass_context:
            args = [r.ctx, *args]
        return args, kwargs

    def _run_sync(self, r: _Running) -> None:
        task = r.task
        if task is None:   # not registered here (claimed only by name filter races)
            self._record_failure(r, {"type": "pgqueue.UnknownTask",
                                     "message": f"task {r.name!r} is not registered in this "
                                                "worker", "traceback": None}, discard=False)
            return
        try:
            args, kwargs = self._call_args(r)
            if task.transactional:
                self._run_transactional(r, args, kwargs)
                return
            result = self.app.hooks.call(r.ctx, task.fn, args, kwargs)
            self._record_success(r, result)
        except BaseException as e:  # noqa: BLE001 - every failure is recorded
            self._record_exception(r, e)

    def _run_transactional(self, r: _Running, args: list[Any], kwargs: dict[str, Any]) -> None:
        with self.app.connection() as conn, conn.transaction():
            r.ctx.connection = conn
            result = self.app.hooks.call(r.ctx, r.task.fn, args, kwargs)  # type: ignore[union-attr]
            payload = _result_payload(result)
            with self._lock:
                if r.abandoned:
                    raise _Abandoned()
            if r.timed_out:   # roll the writes back; recorded as a TimeoutError
                raise TimeoutError(f"attempt exceeded its timeout of {r.timeout} s")
            name, params = _completion(self.id, r, payload)
            row = conn.execute(q(name), params).fetchone()
            if row is None or row[0] is None:
                # fenced out: roll the task's writes back, say who owns the job now
                raise _Abandoned(owner=conn.execute(q("job_owner"), {"id": r.id}).fetchone())
        r.ctx.connection = None
        self._forget(r)
        self.stats["completed"] += 1
        if self._observer is not None:
            self._observer.completed([r])

    async def _run_async(self, r: _Running) -> None:
        task = r.task
        assert task is not None
        try:
            try:
                args, kwargs = self._call_args(r)
                if task.transactional:
                    result = await self._run_async_transactional(r, args, kwargs)
                    if result is _DONE:
                        return
                else:
                    result = await self.app.hooks.acall(r.ctx, task.fn, args, kwargs, r.timeout)
            except asyncio.TimeoutError as e:
                self._record_failure(r, {"type": "builtins.TimeoutError",
                                         "message": f"attempt exceeded its timeout of {r.timeout} s",
                                         "traceback": "".join(traceback.format_exception(e))})
                return
            except asyncio.CancelledError as e:
                self._record_exception(r, Cancelled(str(e) or "cancelled"))
                return
            except BaseException as e:  # noqa: BLE001
                self._record_exception(r, e)
                return
            self._record_success(r, result)
        finally:
            with self._lock:
                self._busy -= 1
            self._wake.set()

    async def _run_async_transactional(self, r: _Running, args: list[Any],
                                       kwargs: dict[str, Any]) -> Any:
        conn = await psycopg.AsyncConnection.connect(self.app.conninfo, autocommit=True)
        async with conn, conn.transaction():
            r.ctx.connection = conn
            result = await self.app.hooks.acall(r.ctx, r.task.fn, args, kwargs,  # type: ignore[union-attr]
                                                r.timeout)
            payload = _result_payload(result)
            name, params = _completion(self.id, r, payload)
            cur = await conn.execute(q(name), params)
            row = await cur.fetchone()
            if row is None or row[0] is None:
                cur = await conn.execute(q("job_owner"), {"id": r.id})
                raise _Abandoned(owner=await cur.fetchone())
        r.ctx.connection = None
        self._forget(r)
        self.stats["completed"] += 1
        if self._observer is not None:
            self._observer.completed([r])
        return _DONE

    # -- outcomes --------------------------------------------------------------------

    def _record_success(self, r: _Running, result: Any) -> None:
        r.ended = time.monotonic()
        if r.timed_out:
            self._record_failure(r, _timeout_error(r))
            return
        if r.ctx._replacement is not None:   # ctx.replace: the return value is ignored
            result = None
        try:
            payload = serialization.dumps(result, "result")
        except Exception as e:  # noqa: BLE001 - an unstorable result fails the job for good
            self._record_failure(r, _error_dict(e), discard=True)
            return
        with self._lock:
            if r.abandoned:
                return
        self._complete_q.put(("complete" if r.ctx._replacement is None else "replace", r, payload))

    def _record_exception(self, r: _Running, e: BaseException) -> None:
        if isinstance(e, _Abandoned):
            self._forget(r)
            if e.fenced and self._observer is not None:
                self._observer.fenced(r, "success", e.owner)
            return
        with self._lock:
            if r.abandoned:
                return
        if r.timed_out:
            self._record_failure(r, _timeout_error(r))
            return
        if isinstance(e, _Unstorable):
            r.exc = e.exc
            self._record_failure(r, _error_dict(e.exc), discard=True)
            return
        err = _error_dict(e)
        r.exc = e
        if isinstance(e, RetryLater):
            self._record_failure(r, err, retry_delay=_retry_delay(e.delay))
        elif isinstance(e, Discard):
            self._record_failure(r, err, discard=True)
        else:
            retry = r.task.retry.retry if r.task is not None else True
            if not isinstance(e, Exception) and not isinstance(e, Cancelled):
                log.error("job %s raised %s", r.id, type(e).__name__)
            self._record_failure(r, err, discard=not retry)

    def _record_failure(self, r: _Running, err: dict[str, Any], *, discard: bool = False,
                        retry_delay: float | None = None) -> None:
        # The outcome is logged once recorded, with the state it led to.
        if r.ended is None:
            r.ended = time.monotonic()
        self._complete_q.put(("fail", r, (err, discard, retry_delay)))

    def _forget(self, r: _Running) -> None:
        with self._lock:
            self._drop(r)

    def _drop(self, r: _Running) -> None:
        """Remove ``r`` from the running set, unless the job was claimed again since
        (a retry due at once can be re-claimed before this attempt's record lands).
        Call with ``self._lock`` held."""
        if self._running.get(r.id) is r:
            del self._running[r.id]

    # -- completer -------------------------------------------------------------------

    def _completer_thread(self) -> None:
        pending: list[tuple[str, _Running, Any]] = []
        while True:
            if not pending:
                self._completer_idle.set()
                try:
                    item = self._complete_q.get(timeout=0.5)
                except queue_mod.Empty:
                    if self._done.is_set():
                        return
                    continue
                self._completer_idle.clear()
                if item is None:
                    return
                pending.append(item)
            while len(pending) < COMPLETE_BATCH:
                try:
                    item = self._complete_q.get_nowait()
                except queue_mod.Empty:
                    break
                if item is None:
                    self._complete_q.put(None)
                    break
                pending.append(item)
            try:
                self._completer.run(lambda c, p=pending: self._flush(c, p))
                pending = []
            except Exception as e:
                if _transient(e):
                    if not self._completer.failures or self._completer.should_log():
                        log.warning("recording %d outcomes failed (%s)%s; retrying",
                                    len(pending), str(e).strip(), self._completer.outage())
                    time.sleep(self._completer.backoff())
                else:
                    log.exception("recording outcomes failed; retrying one by one")
                    pending = self._flush_one_by_one(pending)

    def _flush(self, conn: psycopg.Connection, items: list[tuple[str, _Running, Any]]) -> None:
        done = [(r, p) for kind, r, p in items if kind == "complete"]
        fails = [(r, p) for kind, r, p in items if kind == "fail"]
        replaced = [r for kind, r, _ in items if kind == "replace"]
        completed = None
        # Completions alone are one autocommit statement (one round trip, one commit);
        # failures and replacements join them in one transaction.
        with conn.transaction() if fails or replaced else contextlib.nullcontext():
            if done:
                completed = conn.execute(q("complete"), {
                    "worker_id": self.id, "ids": [r.id for r, _ in done],
                    "attempts": [r.attempt for r, _ in done],
                    "results": [p for _, p in done]}, prepare=self.listen)
            states = []
            for r, (err, discard, delay) in fails:
                policy = r.task.retry if r.task is not None else None
                (state,) = conn.execute(q("fail"), {
                    "worker_id": self.id, "id": r.id, "attempt": r.attempt,
                    "error": serialization.dumps(err, "error"), "retry_delay": delay,
                    "discard": discard,
                    "backoff_base": policy.base if policy else 1.0,
                    "backoff_cap": policy.cap if policy else 3600.0},
                    prepare=self.listen).fetchone()
                states.append(state)
            # ctx.replace: the replacement joins the workflow with the step's completion
            replaced = [r for r in replaced
                        if conn.execute(q("replace_step"), _completion(self.id, r, None)[1],
                                        prepare=self.listen).fetchone()[0] == "completed"]
            retry_at = (self._observer.retry_times(conn, [r for r, _ in fails], states)
                        if self._observer is not None and fails else None)
        with self._lock:
            for r, _ in done:
                self._drop(r)
            for r, _ in fails:
                self._drop(r)
            for kind, r, _ in items:
                if kind == "replace":
                    self._drop(r)
        self.stats["completed"] += len(done) + len(replaced)
        if self._observer is not None and replaced:
            self._observer.completed(replaced)
        self.stats["failed"] += len(fails)
        if self._observer is not None:
            self._observe_flush(conn, done, completed, fails, states, retry_at)
        if fails:   # a retry may be due before the next poll: recompute the wake-up time
            self._more = True
        self._wake.set()   # recorded outcomes free room for the next claim

    def _observe_flush(self, conn: psycopg.Connection, done: list, completed: Any,
                       fails: list, states: list, retry_at: Any) -> None:
        try:
            fenced = []
            if completed is not None:
                owned = {i for (i,) in completed.fetchall()}
                self._observer.completed([r for r, _ in done if r.id in owned])
                fenced += [(r, "success") for r, _ in done if r.id not in owned]
            if fails:
                self._observer.failed([(r, p[0], st) for (r, p), st in zip(fails, states, strict=True)],
                                      retry_at)
                fenced += [(r, "failure") for (r, _), st in zip(fails, states, strict=True)
                           if st is None]
            for r, outcome in fenced:   # rare: the job was rescued from under this worker
                owner = conn.execute(q("job_owner"), {"id": r.id}).fetchone()
                self._observer.fenced(r, outcome, owner)
        except Exception:  # noqa: BLE001 - the outcomes are committed; never redo them
            log.exception("observing %d outcomes failed", len(done) + len(fails))

    def _flush_one_by_one(self, items: list[tuple[str, _Running, Any]]) -> list:
        left = []
        for item in items:
            try:
                self._completer.run(lambda c, it=item: self._flush(c, [it]))
            except Exception as e:  # noqa: BLE001
                if _transient(e):
                    left.append(item)
                    continue
                kind, r, _ = item
                if kind == "complete":   # e.g. a result the database refuses: fail the job
                    left.append(("fail", r, (_error_dict(e), True, None)))
                elif kind == "replace":  # nothing was added: a failed attempt, retried as usual
                    left.append(("fail", r, (_error_dict(e), False, None)))
                elif item[2][0].get("type") != "pgqueue.UnrecordableError":
                    # Record a plain failure instead, or the job would stay `running`
                    # while this worker heartbeats, and never reach a terminal state.
                    log.error("cannot record failure of job %s (%s); recording a plain one",
                              r.id, e)
                    err, discard, _ = item[2]
                    left.append(("fail", r, ({
                        "type": "pgqueue.UnrecordableError",
                        "message": _storable(f"the attempt failed ({err.get('type')}) but its "
                                             f"error could not be recorded: {e}"),
                        "traceback": None}, discard, None)))
                else:
                    log.error("cannot record failure of job %s: %s", r.id, e)
                    self._forget(r)
        return left

    # -- heartbeat, rescue, cancellation -----------------------------------------------

    def _heartbeat_once(self) -> None:
        def work(conn: psycopg.Connection) -> None:
            prev = self.last_heartbeat
            rows = conn.execute(q("heartbeat"), {
                "worker_id": self.id, "name": self.name, "hostname": socket.gethostname(),
                "pid": os.getpid(), "queues": self.queues, "tasks": self._tasks_names,
                "concurrency": self.concurrency, "stale_after": self.stale_after},
                prepare=self.listen).fetchall()
            self.last_heartbeat = now = time.monotonic()
            for (job_id,) in rows:
                self._signal_cancel(job_id)
            # Rescue only while our own heartbeats are regular. After a gap (a lock on
            # pgqueue.jobs, a lost connection, a paused process) live peers were likely
            # cut off too, and need one more heartbeat cycle to show they are alive.
            if prev is None or now - prev > self.stale_after / 2:
                return
            rescued = conn.execute(q("rescue"), {"stale_after": self.stale_after},
                                   prepare=self.listen).fetchall()
            if rescued:
                self.stats["rescued"] += len(rescued)
                log.warning("rescued %d jobs of dead workers: %s", len(rescued),
                            ", ".join(f"{i}->{s}" for i, s in rescued[:20]))
                if self._observer is not None:
                    self._observer.rescued(conn, rescued)
                self._more = True
                self._wake.set()
        self._heart.run(work)

    def _heartbeat_thread(self) -> None:
        next_at = time.monotonic() + self.heartbeat_interval
        while not self._done.wait(max(0.0, next_at - time.monotonic())):
            next_at = time.monotonic() + self.heartbeat_interval
            try:
                self._heartbeat_once()
            except Exception as e:  # noqa: BLE001
                if not self._heart.failures or self._heart.should_log():
                    log.warning("heartbeat failed: %s%s", str(e).strip(), self._heart.outage())
                next_at = time.monotonic() + min(self.heartbeat_interval, self._heart.backoff())

    def _signal_cancel(self, job_id: int) -> None:
        with self._lock:
            r = self._running.get(job_id)
        if r is None or r.ctx._cancel.is_set():
            return
        log.info("job %s asked to cancel", job_id)
        r.ctx._cancel.set()
        if r.future is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(r.future.cancel)

    def _reconnected(self, role: str, away: float) -> None:
        """A connection of ``role`` is back after a failure: claim at once what was
        enqueued meanwhile. Whichever connection notices first (claim, completer,
        heartbeat, listener, maintenance) wakes the claim loop; the listener claims
        again once it LISTENs."""
        log.info("%s connection re-established after %.1f s; claiming what arrived "
                 "meanwhile", role, away)
        self._more = True
        self._wake.set()

    # -- listener --------------------------------------------------------------------

    def _listener_thread(self) -> None:
        health_every = 5.0
        while not self._done.is_set():
            try:
                conn = self._listener.run(lambda c: c)
                conn.execute("listen pgqueue_jobs")
                conn.execute("listen pgqueue_requeued")
                conn.execute("listen pgqueue_cancel")
                # requeue notices may have been missed while away
                self._positions.forget()
                self._listener_ok = time.monotonic()
                self._listening.set()
                self._more = True        # catch up on what arrived while we were away
                self._wake.set()
                last_check = time.monotonic()
                while not self._done.is_set():
                    for n in conn.notifies(timeout=1.0):
                        self._on_notify(n)
                    self._listener_ok = time.monotonic()
                    if time.monotonic() - last_check >= health_every:
                        self._listener.run(lambda c: c.execute("select 1"))
                        self._listener_ok = last_check = time.monotonic()
            except Exception as e:  # noqa: BLE001
                if self._done.is_set():
                    return
                self._listener.failed()
                if self._listener.should_log():
                    log.warning("listener connection lost (%s)%s; reconnecting",
                                str(e).strip(), self._listener.outage())
                self._done.wait(self._listener.backoff())

    def _on_notify(self, n: psycopg.Notify) -> None:
        if n.channel == "pgqueue_jobs" or n.channel == "pgqueue_requeued":
            if self.queues is None or n.payload in self.queues:
                self._positions.heard(n.payload)
                if n.channel == "pgqueue_requeued":
                    # a job went back in line behind where our claims start
                    self._positions.forget(n.payload)
                self._more = True
                self._wake.set()
        elif n.channel == "pgqueue_cancel":
            try:
                self._signal_cancel(int(n.payload))
            except ValueError:
                pass

    # -- maintenance: retention and long transactions ---------------------------------

    def _maintenance_thread(self) -> None:
        next_at = time.monotonic() + min(self.maintenance_interval, 2 * self.heartbeat_interval)
        while not self._done.wait(max(0.0, next_at - time.monotonic())):
            next_at = time.monotonic() + self.maintenance_interval
            try:
                self._maintenance_once()
            except Exception as e:  # noqa: BLE001 - retried next round
                log.warning("maintenance failed: %s", str(e).strip())

    def _maintenance_once(self) -> None:
        def work(conn: psycopg.Connection) -> None:
            if self.prune_after is not None:
                (n,) = conn.execute(q("maintenance_prune"), {
                    "lock": PRUNE_LOCK, "older_than": self.prune_after},
                    prepare=False).fetchone()
                if n:
                    self.stats["pruned"] += n
                    log.info("pruned %d jobs finished more than %.0f s ago", n,
                             self.prune_after)
            row = conn.execute(q("oldest_transaction"), prepare=False).fetchone()
            self.oldest_transaction = None if row is None else dict(zip(
                ("age", "pid", "user", "application", "state", "query"), row, strict=True))
            if row is not None and row[0] > self.xmin_warn_after:
                self.stats["vacuum_warnings"] += 1
                log.warning("a transaction has been open for %.0f s (pid %s, user %s, "
                            "application %r, %s): it holds back vacuum, so dead rows of "
                            "finished jobs pile up and claiming slows down; query: %s",
                            *row[:5], (row[5] or "")[:200])
        self._maint.run(work)

    # -- watchdog --------------------------------------------------------------------

    def _watchdog_thread(self) -> None:
        while not self._done.wait(1.0):
            now = time.monotonic()
            for c in (self._claim, self._completer, self._heart, self._listener, self._maint):
                limit = LISTENER_TIMEOUT if c is self._listener else IO_TIMEOUT
                if c.busy_since is not None and now - c.busy_since > limit:
                    log.warning("%s connection stuck for %.0f s; cutting it", c.role,
                                now - c.busy_since)
                    c.cut()
            if self.listen and now - self._listener_ok > 15.0:
                log.warning("listener silent for %.0f s; cutting its connection",
                            now - self._listener_ok)
                self._listener_ok = now
                self._listener.cut()

    # -- shutdown --------------------------------------------------------------------

    def _start_scheduler(self) -> None:
        """Write the app's schedule declarations, then start the scheduler component,
        which fires due slots of every schedule (declared here, by another app, or from
        SQL) once across all workers."""
        from ._scheduler import Scheduler, upsert_declarations
        with self._connect("scheduler") as conn:
            upsert_declarations(conn, self.app.schedules.values(), self._tasks_names, self.name)
        if not self.scheduler:
            return
        self._scheduler = Scheduler(lambda: self._connect("scheduler"),
                                    poll_interval=self.poll_interval, listen=self.listen)
        self._scheduler.start()

    def _shutdown(self) -> None:
        log.info("worker %s stopping: %d jobs running, grace %.1f s", self.name, self._busy,
                 self.shutdown_grace)
        if self._scheduler is not None:
            self._scheduler.stop()
        deadline = time.monotonic() + self.shutdown_grace
        while self._busy > 0 and time.monotonic() < deadline and not self._hurry.is_set():
            self._check_timeouts()
            self._wake.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        with self._lock:
            leftovers = [r for r in self._running.values() if not r.abandoned]
            for r in leftovers:
                r.abandoned = True
        for r in leftovers:
            r.ctx._cancel.set()
            if r.future is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(r.future.cancel)
        # Record every outcome already known, then hand back the rest in one transaction.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._complete_q.empty() and self._completer_idle.is_set():
                break
            time.sleep(0.01)
        with self._lock:
            back = [r for r in self._running.values() if r in leftovers]
        if back:
            try:
                handed = self._claim.run(lambda c: c.execute(q("hand_back"), {
                    "worker_id": self.id, "ids": [r.id for r in back],
                    "attempts": [r.attempt for r in back]}).fetchall())
                log.info("handed back %d unfinished jobs", len(handed))
            except Exception as e:  # noqa: BLE001
                log.error("could not hand back %d jobs (%s); they will be rescued after "
                          "%.0f s", len(back), e, self.stale_after)
        try:
            self._claim.run(lambda c: c.execute(q("worker_delete"), {"worker_id": self.id}))
        except Exception:  # noqa: BLE001
            pass
        self._done.set()
        self._complete_q.put(None)
        for _ in range(self.concurrency):
            self._exec_q.put(None)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._listener.cut()
        for t in self._threads:
            if t.name in ("pgqueue-completer", "pgqueue-heartbeat", "pgqueue-watchdog",
                          "pgqueue-listener", "pgqueue-maintenance"):
                t.join(timeout=5)
        for c in (self._claim, self._completer, self._heart, self._listener, self._maint):
            c.close()
        self._stop_observer()   # runs the error hooks still queued, stops serving metrics
        log.info("worker %s stopped", self.name)


def _completion(worker_id: uuid.UUID, r: _Running, payload: Any) -> tuple[str, dict[str, Any]]:
    """The query recording a success: ``complete_one``, or ``replace_step`` for a
    workflow step that called ``ctx.replace`` (its replacement and its completion in one
    transaction)."""
    if r.ctx._replacement is None:
        return "complete_one", {"worker_id": worker_id, "id": r.id, "attempt": r.attempt,
                                "result": payload}
    return "replace_step", {"worker_id": worker_id, "id": r.id, "attempt": r.attempt,
                            **r.ctx._replacement}


def _timeout_error(r: _Running) -> dict[str, Any]:
    return {"type": "builtins.TimeoutError",
            "message": f"attempt exceeded its timeout of {r.timeout} s",
            "traceback": None}


class _Abandoned(Exception):
    """Internal: the attempt's outcome was decided elsewhere; roll back and forget it.

    ``owner``, when given (``fenced`` is then true), is ``(attempt, state, worker_id)``
    of the job after this worker's completion was fenced out (``None``: row gone)."""

    def __init__(self, **kw: Any):
        super().__init__()
        self.fenced = "owner" in kw
        self.owner = kw.get("owner")


class _Unstorable(Exception):
    """Internal: a transactional task's result cannot be stored; its writes roll back and
    the job is discarded (as for any task: the same result would fail every retry)."""

    def __init__(self, exc: BaseException):
        super().__init__(str(exc))
        self.exc = exc


def _result_payload(result: Any) -> str:
    """The stored form of a transactional task's result, or :class:`_Unstorable`."""
    try:
        return serialization.dumps(result, "result")
    except Exception as e:  # noqa: BLE001 - every refusal is permanent
        raise _Unstorable(e) from e


_DONE = object()
