"""The worker: one process's components, wired together and run.

One process is one :class:`Worker`. It composes these components, each in its own
module, each with ``start()``/``stop()`` and what it needs passed in:

- :mod:`.claimer`: the claim loop (claims sized to free slots, claim positions,
  next-due waits, the thread executor's timeouts), on the *claim* connection;
- :mod:`.listener`: ``LISTEN`` for new, requeued and cancelled jobs (omitted in
  poll-only mode, for transaction poolers);
- :mod:`.executors`: threads for ``def`` tasks, one event loop for ``async def``
  tasks; both share the same ``concurrency`` slots;
- :mod:`.completer`: records outcomes in batches, fenced by the attempt token;
- :mod:`.heartbeat`: the worker row, cancellation requests, rescue of dead workers' jobs;
- :mod:`.scheduler`: fires periodic jobs once across all workers;
- :mod:`.maintenance`: pruning of finished jobs, the long-transaction warning;
- :mod:`.shutdown`: signals, the grace period and the hand-back;
- :mod:`.connections`: the dedicated connections (none from the app's pool, so a task
  that exhausts the pool cannot stall the worker's bookkeeping) and the watchdog that
  cuts any that hangs.

They share three objects: :class:`~.running.RunningJobs` (the claimed attempts not yet
recorded, and the busy slots), :class:`~.running.WakeUp` (the claim loop's alarm) and
the completion queue (executors put outcomes, the completer records them).

During an outage each connection retries every 0.5 s for the first 30 s, then every
1.5 s, and whichever reconnects first triggers a catch-up claim, so a job enqueued
meanwhile starts within 2 s of the database accepting connections again.

Shutdown (SIGTERM/SIGINT, or :meth:`Worker.stop`): stop claiming, let running jobs
finish for ``shutdown_grace`` seconds, then hand unfinished ones back in one
transaction (the interrupted attempt does not count) and exit. A second signal skips
the rest of the grace period.
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import socket
import threading
import uuid
from typing import Any

import psycopg

from .._positions import ClaimPositions
from ..app import App
from ..errors import ConfigurationError
from ..limits import apply_queue_declarations, task_concurrency
from ..observe import Observer
from . import shutdown as shutdown_mod
from . import startup
# Besides what Worker uses, the tunables and internals stay importable from here.
from .claimer import Claimer
from .completer import COMPLETE_BATCH, Completer  # noqa: F401
from .connections import (  # noqa: F401
    BOOKKEEPING_SETTINGS,
    IO_TIMEOUT,
    LISTENER_TIMEOUT,
    OUTAGE_LOG_EVERY,
    RECONNECT_FAST,
    RECONNECT_FAST_FOR,
    RECONNECT_SLOW,
    Beat,
    Connector,
    Watchdog,
    _Conn,
)
from .executors.asyncio import AsyncioExecutor
from .executors.processes import ProcessExecutor, app_module_spec
from .executors.threads import ThreadExecutor
from .heartbeat import Heartbeat
from .listener import Listener, notified
from .maintenance import PRUNE_LOCK, Maintenance  # noqa: F401
from .outcomes import ERROR_TEXT_LIMIT, Outcomes, _error_dict, _storable  # noqa: F401
from .running import RunningJobs, WakeUp, _Running
from .scheduler import Scheduler, upsert_declarations

__all__ = ["Worker"]


#: the most slots a worker takes (threads); more is a typo, not a plan
MAX_CONCURRENCY = 10_000
#: the most children the process executor starts (one per slot)
MAX_CHILDREN = 1_024

log = logging.getLogger("pgqueue.worker")


class Worker:
    """Runs jobs of ``app``'s registered tasks.

    :param app: the :class:`~pgqueue.App` whose tasks this worker runs; it only claims
        jobs of task names registered there (old and new service versions can share a
        queue during a rolling deploy).
    :param queues: queue names to claim from; ``None`` (default) claims from every queue.
    :param concurrency: jobs run at once (1 to 10,000, default 10; with process tasks,
        one child each, at most 1,024).
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
    :param executor: where ``def`` tasks without their own ``executor=`` run:
        ``"thread"`` (default) or ``"process"`` (a pool of ``concurrency`` child
        processes; see :mod:`pgqueue.worker.executors.processes`).
    :param app_spec: ``module[:attr]`` the process executor's children import the app
        from (``pgqueue worker`` passes its ``--app``); default: the module of the
        process tasks' functions that holds the app, which must be importable by name
        (not ``__main__``).
    :param max_tasks_per_child: jobs a child process runs before it is replaced
        (default ``None``: no limit).
    :param max_memory_per_child: MiB of resident memory, checked after each job, above
        which a child process is replaced (default ``None``: no limit).
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
                 scheduler: bool = True, executor: str = "thread", app_spec: str | None = None,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: float | None = None):
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ConfigurationError(
                f"concurrency must be between 1 and {MAX_CONCURRENCY:,}, got {concurrency}; "
                "run more worker processes for more")
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
        if executor not in ("thread", "process"):
            raise ConfigurationError(f"executor must be 'thread' or 'process', got {executor!r}")
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
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.metrics_registry = metrics_registry
        self.metrics_interval = metrics_interval
        self.prune_after = prune_after
        self.maintenance_interval = maintenance_interval
        self.xmin_warn_after = xmin_warn_after
        #: run the scheduler component (fires periodic jobs; see pgqueue.schedule)
        self.scheduler = scheduler
        self.executor = executor
        self.app_spec = app_spec
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        #: the :class:`pgqueue.metrics.WorkerMetrics` while running with metrics, else None
        self.metrics: Any = None
        self.stats = {"claimed": 0, "completed": 0, "failed": 0, "rescued": 0, "pruned": 0,
                      "vacuum_warnings": 0, "autovacuum_warnings": 0}

        self._observer: Observer | None = None   # None: nobody listens, outcomes cost nothing
        self._stopping = threading.Event()
        self._hurry = threading.Event()      # second signal: skip the grace period
        self._done = threading.Event()       # bookkeeping threads may exit
        # The objects components share.
        self._wake = WakeUp()
        self._running = RunningJobs()
        self._completions: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        # Where claims last found jobs (per queue and priority level): later claims
        # start there instead of stepping over every dead index entry that an old
        # snapshot keeps (case B23). Poll-only workers hear no pgqueue_requeued and
        # claim without positions.
        self._positions = ClaimPositions(enabled=self.listen)
        self._connector = Connector(app.conninfo, listen=listen, on_reconnect=self._reconnected)
        self._claim = _Conn(self._connector, "claim")
        self._complete = _Conn(self._connector, "complete")
        self._heart = _Conn(self._connector, "heartbeat")
        self._listener = _Conn(self._connector, "listen")
        self._maint = _Conn(self._connector, "maintenance")
        self._tasks_names: list[str] = []
        # components, built by run()
        self._heartbeat: Heartbeat | None = None
        self._maintenance: Maintenance | None = None
        self._scheduler: Scheduler | None = None
        self._components: list[Any] = []
        self._signals: shutdown_mod.SignalWatcher | None = None

    # -- state other parts of the package read ----------------------------------------

    @property
    def last_heartbeat(self) -> float | None:
        """Monotonic time of the last successful heartbeat (None: none yet)."""
        return self._heartbeat.last if self._heartbeat is not None else None

    @property
    def oldest_transaction(self) -> dict[str, Any] | None:
        """The oldest open transaction of the database at the last maintenance round:
        dict(age, pid, user, application, state, query), or None."""
        return self._maintenance.oldest_transaction if self._maintenance is not None else None

    @property
    def autovacuum_off(self) -> bool | None:
        """Whether autovacuum was off for ``pgqueue.jobs`` at the last maintenance round
        (the server's ``autovacuum`` or ``track_counts``, or the table's
        ``autovacuum_enabled``; logged as a warning when first seen, counted in
        ``stats["autovacuum_warnings"]``); None before the first round."""
        return self._maintenance.autovacuum_off if self._maintenance is not None else None

    @property
    def _busy(self) -> int:
        return self._running.busy

    def _connect(self, role: str) -> psycopg.Connection:
        return self._connector.connect(role)

    def _reconnected(self, role: str, away: float) -> None:
        """A connection of ``role`` is back after a failure: claim at once what was
        enqueued meanwhile. Whichever connection notices first (claim, completer,
        heartbeat, listener, maintenance) wakes the claim loop; the listener claims
        again once it LISTENs."""
        log.info("%s connection re-established after %.1f s; claiming what arrived "
                 "meanwhile", role, away)
        self._wake.more()

    def _on_notify(self, n: psycopg.Notify) -> None:
        c = self._complete.conn
        try:
            own = c.info.backend_pid if c is not None else None
        except Exception:  # noqa: BLE001 - a connection closed meanwhile
            own = None
        notified(n, queues=self.queues, positions=self._positions, wake=self._wake,
                 cancel=self._cancel, own_pid=own)

    def _cancel(self, job_id: int) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel(job_id)

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
        tasks = self.app.tasks
        self._tasks_names = sorted(n for n, t in tasks.items() if t.fn is not None)
        if not self._tasks_names:
            raise ConfigurationError("the app has no tasks registered; check --app")
        self._wait_for_schema()
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            self._signals = shutdown_mod.SignalWatcher(self.stop)
            self._signals.start()
        self._start_observer()
        claimer = self._build()
        try:
            if self.processes is not None:   # fails fast when children cannot import the app
                self.processes.start()
            self._heartbeat.beat()  # type: ignore[union-attr]
            apply_queue_declarations(self.app, lambda: self._connect("limits"))
            self._start_scheduler()
        except BaseException:
            if self.processes is not None:
                self.processes.stop()
            self._stop_observer()
            self._restore_signal_handlers()
            raise
        for c in self._components:
            if c is not self.processes:
                c.start()
        log.info("worker %s (%s) started: queues=%s concurrency=%d tasks=%s",
                 self.name, self.id, self.queues or "all", self.concurrency,
                 ", ".join(self._tasks_names[:20])
                 + (f" (+{len(self._tasks_names) - 20} more)" if len(self._tasks_names) > 20
                    else ""))
        if self._listener_c is not None and not self._listener_c.listening.wait(10):
            log.warning("LISTEN not established yet; claiming anyway (notifications resume "
                        "when the listener connects)")
        try:
            claimer.run()
        finally:
            self._shutdown(claimer)
            self._restore_signal_handlers()
        return 0

    # -- wiring ----------------------------------------------------------------------

    def _build(self) -> Claimer:
        """Create the components (after the observer, which several report to)."""
        app, obs = self.app, self._observer
        tasks = [app.tasks[n] for n in self._tasks_names]
        running, wake, done = self._running, self._wake, self._done
        outcomes = Outcomes(running, self._completions, self.stats, obs)
        in_process = {t.name for t in tasks if not t.is_async
                      and (t.executor or self.executor) == "process"}
        threads = asyncio_ex = procs = None
        if any(not t.is_async and t.name not in in_process for t in tasks):
            threads = ThreadExecutor(app, self.id, self.concurrency, running, outcomes, wake)
        if any(t.is_async for t in tasks):
            asyncio_ex = AsyncioExecutor(app, self.id, running, outcomes, wake)
        if in_process:
            if self.concurrency > MAX_CHILDREN:
                raise ConfigurationError(
                    f"the process executor starts a child per slot: concurrency "
                    f"{self.concurrency} is more than {MAX_CHILDREN:,} children "
                    f"(tasks {', '.join(sorted(in_process)[:5])}); lower --concurrency "
                    "or run more worker processes")
            procs = ProcessExecutor(
                self.app_spec or app_module_spec(app, [app.tasks[n] for n in in_process]),
                app.conninfo, self.id, self.concurrency, running, outcomes, wake,
                max_tasks_per_child=self.max_tasks_per_child,
                max_memory_per_child=self.max_memory_per_child)
        # the executor of each task; a name not registered here fails on any sync one
        chosen = {t.name: asyncio_ex if t.is_async else procs if t.name in in_process
                  else threads for t in tasks}
        fallback = threads or procs

        def prepare(r: _Running) -> None:
            ex = chosen.get(r.name, fallback)
            if ex is not threads:
                ex.prepare(r)  # type: ignore[union-attr]

        def dispatch(r: _Running) -> None:
            chosen.get(r.name, fallback).submit(r)  # type: ignore[union-attr]

        self._executors = [e for e in (asyncio_ex, threads, procs) if e is not None]
        #: the process executor, when any task runs in processes (else None)
        self.processes = procs
        completer = Completer(self._complete, self._completions, worker_id=self.id,
                              running=running, wake=wake, stats=self.stats, observer=obs,
                              prepare=self.listen, done=done)
        self._completer_c = completer
        self._heartbeat = Heartbeat(self._heart, {
            "worker_id": self.id, "name": self.name, "queues": self.queues,
            "tasks": self._tasks_names, "concurrency": self.concurrency,
            "stale_after": self.stale_after}, interval=self.heartbeat_interval,
            running=running, wake=wake, stats=self.stats, observer=obs, prepare=self.listen,
            done=done)
        self._maintenance = Maintenance(
            self._maint, interval=self.maintenance_interval,
            first_after=min(self.maintenance_interval, 2 * self.heartbeat_interval),
            prune_after=self.prune_after, xmin_warn_after=self.xmin_warn_after,
            stats=self.stats, done=done)
        alive = Beat()
        self._listener_c = None
        if self.listen:
            self._listener_c = Listener(self._listener, lambda n: self._on_notify(n),
                                        positions=self._positions, wake=wake, alive=alive,
                                        done=done)
        self._watchdog = Watchdog([self._claim, self._complete, self._heart, self._maint],
                                  self._listener if self.listen else None, alive, done,
                                  io_timeout=IO_TIMEOUT, listener_timeout=LISTENER_TIMEOUT)
        self._components = [*self._executors, completer, self._heartbeat, self._watchdog,
                            self._maintenance,
                            *([self._listener_c] if self._listener_c is not None else [])]
        return Claimer(
            self._claim, app, worker_id=self.id, queues=self.queues, tasks=self._tasks_names,
            # Declared options, parallel to the names: the claim writes them into rows
            # that left them null (DESIGN 5.2); the retry policy travels with each failure.
            max_attempts=[t.max_attempts for t in tasks], timeouts=[t.timeout for t in tasks],
            concurrency=self.concurrency, claim_batch=self.claim_batch,
            poll_interval=self.poll_interval, running=running, wake=wake,
            positions=self._positions, dispatch=dispatch, prepare=prepare, stats=self.stats,
            observer=obs, metrics=self.metrics, stopping=self._stopping,
            prepare_statements=self.listen,
            task_concurrency=task_concurrency(app, self._tasks_names))

    def _restore_signal_handlers(self) -> None:
        sig, self._signals = self._signals, None
        if sig is not None:
            sig.stop()

    def _start_observer(self) -> None:
        self.metrics, self._observer = startup.observer(self)

    def _stop_observer(self) -> None:
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.close()

    def _wait_for_schema(self) -> None:
        startup.wait_for_schema(self._claim, self.schema_wait)

    def _start_scheduler(self) -> None:
        """Write the app's schedule declarations, then start the scheduler component,
        which fires due slots of every schedule (declared here, by another app, or from
        SQL) once across all workers."""
        with self._connect("scheduler") as conn:
            upsert_declarations(conn, self.app.schedules.values(), self._tasks_names, self.name)
        if not self.scheduler:
            return
        self._scheduler = Scheduler(lambda: self._connect("scheduler"),
                                    poll_interval=self.poll_interval, listen=self.listen)
        self._scheduler.start()

    def _shutdown(self, claimer: Claimer) -> None:
        log.info("worker %s stopping: %d jobs running, grace %.1f s", self.name,
                 self._running.busy, self.shutdown_grace)
        if self._scheduler is not None:
            self._scheduler.stop()
        leftovers = shutdown_mod.drain(self._running, self._wake, grace=self.shutdown_grace,
                                       hurry=self._hurry, check_timeouts=claimer.check_timeouts)
        # Record every outcome already known, then hand back the rest in one transaction.
        shutdown_mod.hand_back(self._claim, self._running, leftovers, worker_id=self.id,
                               stale_after=self.stale_after,
                               drained=self._completer_c.drained,
                               before_delete=(self._heartbeat.stop if self._heartbeat
                                              is not None else None))
        self._done.set()
        for c in self._components:
            c.stop()
        for c in (self._claim, self._complete, self._heart, self._listener, self._maint):
            c.close()
        self._stop_observer()   # runs the error hooks still queued, stops serving metrics
        log.info("worker %s stopped", self.name)
