"""Prometheus metrics (needs the ``metrics`` extra: ``pip install pgqueue-jobs[metrics]``).

A worker started with ``metrics_port`` (``pgqueue worker --metrics-port PORT``) serves
``/metrics`` over HTTP from its own :class:`~prometheus_client.CollectorRegistry` (never
the global one, so several workers in one process do not collide). Exposed series:

Per job outcome, labelled ``queue`` and ``task`` (counted by this worker process, after
the change was committed):

- ``pgqueue_jobs_started_total``: attempts claimed;
- ``pgqueue_jobs_completed_total``: attempts that completed the job;
- ``pgqueue_jobs_failed_total``: failed attempts with a retry scheduled (``retryable``);
- ``pgqueue_jobs_discarded_total``: failed attempts that used the last attempt, or were
  not to be retried;
- ``pgqueue_jobs_cancelled_total``: attempts that ended because cancellation was asked;
- ``pgqueue_jobs_rescued_total``: running jobs of dead workers rescued by this worker;
- ``pgqueue_job_duration_seconds`` (histogram): run time of each finished attempt
  (completed or failed), worker clock;
- ``pgqueue_queue_latency_seconds`` (histogram): from the job's ``run_at`` to its claim,
  database clock.

- ``pgqueue_claim_duration_seconds`` (histogram, no labels): round trip of each
  ``pgqueue.claim`` call of the worker, worker clock. Rising values while the queue
  depth stays put mean the claim reads past dead rows (see ``pgqueue check``).

Of the worker process, read at scrape time: ``pgqueue_worker_busy_slots``,
``pgqueue_worker_idle_slots``, ``pgqueue_worker_concurrency`` and
``pgqueue_worker_last_heartbeat_timestamp_seconds`` (Unix time of the last successful
heartbeat).

From the database, refreshed every ``interval`` seconds by a background thread on its
own connection (cheap: it reads only unfinished jobs, through the partial indexes) and
served from that cache:

- ``pgqueue_queue_jobs{queue, state}``: unfinished jobs (``pending``, ``scheduled``,
  ``available``, ``running``, ``retryable``); finished ones are counted by the counters
  above and shown by ``pgqueue queues``;
- ``pgqueue_queue_oldest_available_age_seconds{queue}``: age of the oldest job that is
  due and not running (0 when none);
- ``pgqueue_queue_paused{queue}``: 1 when the queue is paused;
- ``pgqueue_schedule_overdue_seconds{schedule}``: how long the next slot of each active
  schedule has been due and not fired (0 when on time);
- ``pgqueue_workers_alive``: workers that heartbeated within their own ``stale_after``
  (this collector's for workers that recorded none);
- ``pgqueue_database_up``: 1 when the last refresh succeeded, else 0;
- ``pgqueue_database_refresh_timestamp_seconds``: Unix time of the last good refresh.

Every worker exports the database series; aggregate them with ``max by (queue, state)``.
``pgqueue metrics`` prints the database series once (for cron jobs and checks).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("pgqueue metrics need prometheus-client: "
                      "pip install 'pgqueue-jobs[metrics]'") from e

import psycopg

if TYPE_CHECKING:  # pragma: no cover
    from .worker import Worker

__all__ = ["CLAIM_BUCKETS", "DURATION_BUCKETS", "LATENCY_BUCKETS", "DatabaseCollector", "WorkerMetrics",
           "render_database_metrics"]

log = logging.getLogger("pgqueue.metrics")

#: histogram buckets of ``pgqueue_job_duration_seconds`` (seconds)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))
#: histogram buckets of ``pgqueue_claim_duration_seconds`` (seconds)
CLAIM_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                 5.0)
#: histogram buckets of ``pgqueue_queue_latency_seconds`` (seconds)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0, 900.0, 3600.0, 21600.0, float("inf"))

UNFINISHED = ("pending", "scheduled", "available", "running", "retryable")

# Unfinished jobs only, each state set through its partial index (claim, running, pending:
# sql/migrations 0001 and 0003), so the cost follows the unfinished jobs, not the table.
_DB_JOBS = """
select queue, state, count(*)::bigint,
       extract(epoch from now() - min(run_at) filter (where run_at <= now()))::float8
  from pgqueue.jobs
 where state in ('available', 'scheduled', 'retryable')
 group by queue, state
union all
select queue, 'running', count(*)::bigint, null::float8
  from pgqueue.jobs where state = 'running' group by queue
union all
select queue, 'pending', count(*)::bigint, null::float8
  from pgqueue.jobs where state = 'pending' group by queue
"""
#: each queue's paused flag and its due jobs held back by its limits (flow control)
_DB_QUEUES = ("select name, paused, case when concurrency is null and rate_limit is null "
              "and partition_concurrency is null and partition_rate_limit is null then 0 "
              "else pgqueue.queue_held_back(name) end from pgqueue.queues")
_DB_WORKERS = ("select count(*) from pgqueue.workers "
               "where heartbeat_at > now() - coalesce(stale_after, "
               "make_interval(secs => %s::float8))")
#: each active schedule and how late its next slot is (negative: not due yet)
_DB_SCHEDULES = ("select name, coalesce(extract(epoch from now() - next_slot)::float8, 0) "
                 "from pgqueue.schedules where not paused and declared")


class DatabaseCollector(Collector):
    """Queue depth, oldest available age, paused queues and live workers, from SQL.

    :meth:`refresh` queries the database (three short statements in one read-only
    transaction with a 10 s ``statement_timeout`` set locally, so it is safe behind a
    transaction pooler) and caches the result; :meth:`collect` serves the cache and
    never touches the database, so a scrape cannot load or hang on it.

    :param conninfo: libpq connection string.
    :param stale_after: seconds of heartbeat silence after which a worker is not counted
        alive (float, default 10.0).
    """

    def __init__(self, conninfo: str, stale_after: float = 10.0):
        self.conninfo = conninfo
        self.stale_after = stale_after
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._jobs: list[tuple[str, str, int, float | None]] = []
        self._queues: list[tuple[str, bool, int]] = []
        self._alive: int | None = None
        self._schedules: list[tuple[str, float]] = []
        self._up = 0
        self._refreshed_at: float | None = None
        #: the exception of the last failed :meth:`refresh`, else ``None``
        self.last_error: BaseException | None = None

    def refresh(self) -> bool:
        """Re-read the database; returns whether it worked (failures are logged, the
        previous values are kept and ``pgqueue_database_up`` becomes 0)."""
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                                             application_name="pgqueue-metrics")
            conn = self._conn
            with conn.transaction():
                conn.execute("set local statement_timeout = '10s'")
                conn.execute("set local transaction_read_only = on")
                jobs = conn.execute(_DB_JOBS).fetchall()
                queues = conn.execute(_DB_QUEUES).fetchall()
                (alive,) = conn.execute(_DB_WORKERS, (self.stale_after,)).fetchone()
                schedules = conn.execute(_DB_SCHEDULES).fetchall()
        except Exception as e:  # noqa: BLE001 - metrics never take the worker down
            log.warning("refreshing database metrics failed: %s", str(e).strip())
            self._up = 0
            self.last_error = e
            if self._conn is not None and (self._conn.closed or self._conn.broken):
                self.close()
            return False
        with self._lock:
            self._jobs, self._queues, self._alive = jobs, queues, alive
            self._schedules = schedules
            self._up = 1
            self._refreshed_at = time.time()
        self.last_error = None
        return True

    def close(self) -> None:
        """Close the collector's connection (reopened by the next :meth:`refresh`)."""
        c, self._conn = self._conn, None
        if c is not None:
            try:
                c.close()
            except Exception:  # noqa: BLE001, S110 - closing a broken connection  # pragma: no cover
                pass

    def collect(self):  # noqa: D102 - prometheus_client protocol
        with self._lock:
            jobs, queues, alive = self._jobs, self._queues, self._alive
            schedules = self._schedules
            up, at = self._up, self._refreshed_at
        depth = GaugeMetricFamily("pgqueue_queue_jobs", "Unfinished jobs by queue and state",
                                  labels=["queue", "state"])
        oldest = GaugeMetricFamily(
            "pgqueue_queue_oldest_available_age_seconds",
            "Seconds since the oldest due, unclaimed job of the queue became due (0: none)",
            labels=["queue"])
        paused = GaugeMetricFamily("pgqueue_queue_paused", "1 when the queue is paused",
                                   labels=["queue"])
        held = GaugeMetricFamily(
            "pgqueue_queue_held_back_jobs",
            "Due jobs of the queue waiting on its concurrency or rate limits (flow control)",
            labels=["queue"])
        names = sorted({q for q, *_ in jobs} | {q for q, *_ in queues})
        counts = {(q, s): n for q, s, n, _ in jobs}
        ages: dict[str, float] = {}
        for q, _s, _n, age in jobs:
            if age is not None:
                ages[q] = max(ages.get(q, 0.0), age)
        is_paused = {q: p for q, p, _ in queues}
        held_back = {q: h for q, _, h in queues}
        for q in names:
            for s in UNFINISHED:
                depth.add_metric([q, s], counts.get((q, s), 0))
            oldest.add_metric([q], max(0.0, ages.get(q, 0.0)))
            paused.add_metric([q], 1 if is_paused.get(q) else 0)
            held.add_metric([q], held_back.get(q, 0))
        yield depth
        yield oldest
        yield paused
        yield held
        lag = GaugeMetricFamily(
            "pgqueue_schedule_overdue_seconds",
            "Seconds the schedule's next slot is overdue (0: on time or paused)",
            labels=["schedule"])
        for name, seconds in schedules:
            lag.add_metric([name], max(0.0, seconds))
        yield lag
        if alive is not None:
            yield GaugeMetricFamily("pgqueue_workers_alive",
                                    "Workers that heartbeated within the stale threshold",
                                    value=alive)
        yield GaugeMetricFamily("pgqueue_database_up",
                                "1 when the last database metrics refresh succeeded", value=up)
        if at is not None:
            yield GaugeMetricFamily("pgqueue_database_refresh_timestamp_seconds",
                                    "Unix time of the last successful database refresh",
                                    value=at)


class _WorkerCollector(Collector):
    """Slots and heartbeat of one worker, read when scraped."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def collect(self):  # noqa: D102
        w = self.worker
        busy = w._busy
        yield GaugeMetricFamily("pgqueue_worker_busy_slots", "Slots running a job now",
                                value=busy)
        yield GaugeMetricFamily("pgqueue_worker_idle_slots", "Slots free for a job now",
                                value=max(0, w.concurrency - busy))
        yield GaugeMetricFamily("pgqueue_worker_concurrency", "Slots of this worker",
                                value=w.concurrency)
        if w.last_heartbeat is not None:
            yield GaugeMetricFamily(
                "pgqueue_worker_last_heartbeat_timestamp_seconds",
                "Unix time of the worker's last successful heartbeat",
                value=time.time() - (time.monotonic() - w.last_heartbeat))


class WorkerMetrics:
    """The metrics of one worker: counters and histograms updated per outcome, gauges
    read at scrape time, database gauges refreshed every ``interval`` seconds.

    :param worker: the worker.
    :param registry: where to register (default: a new ``CollectorRegistry``).
    :param port: serve ``/metrics`` on this TCP port (``None``: do not serve; 0: any free
        port, see :attr:`port` after :meth:`start`).
    :param host: address to bind (default ``"127.0.0.1"``).
    :param interval: seconds between database refreshes (float > 0, default 15.0).
    """

    def __init__(self, worker: Worker, registry: CollectorRegistry | None = None,
                 port: int | None = None, host: str = "127.0.0.1", interval: float = 15.0):
        self.worker = worker
        self.registry = registry if registry is not None else CollectorRegistry()
        self.port = port
        self.host = host
        self.interval = interval
        r = self.registry
        labels = ["queue", "task"]
        self._started = Counter("pgqueue_jobs_started", "Job attempts claimed", labels,
                                registry=r)
        self._completed = Counter("pgqueue_jobs_completed", "Job attempts that completed",
                                  labels, registry=r)
        self._failed = Counter("pgqueue_jobs_failed",
                               "Failed job attempts with a retry scheduled", labels, registry=r)
        self._discarded = Counter("pgqueue_jobs_discarded",
                                  "Failed job attempts after which the job was discarded",
                                  labels, registry=r)
        self._cancelled = Counter("pgqueue_jobs_cancelled",
                                  "Job attempts that ended cancelled", labels, registry=r)
        self._rescued = Counter("pgqueue_jobs_rescued",
                                "Running jobs of dead workers rescued by this worker", labels,
                                registry=r)
        self._duration = Histogram("pgqueue_job_duration_seconds",
                                   "Run time of finished job attempts", labels,
                                   buckets=DURATION_BUCKETS, registry=r)
        self._latency = Histogram("pgqueue_queue_latency_seconds",
                                  "Time from a job's run_at to its claim (database clock)",
                                  labels, buckets=LATENCY_BUCKETS, registry=r)
        self._claim = Histogram("pgqueue_claim_duration_seconds",
                                "Round trip of the worker's claim calls", buckets=CLAIM_BUCKETS,
                                registry=r)
        self._by_outcome = {"retryable": self._failed, "discarded": self._discarded,
                            "cancelled": self._cancelled}
        r.register(_WorkerCollector(worker))
        self.database = DatabaseCollector(worker.app.conninfo, worker.stale_after)
        r.register(self.database)
        self._server: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- hot path: one dict lookup and a lock-protected add each ------------------------

    def started(self, queue: str, task: str, latency: float | None) -> None:
        self._started.labels(queue, task).inc()
        if latency is not None:
            self._latency.labels(queue, task).observe(max(0.0, latency))

    def claim_took(self, seconds: float) -> None:
        self._claim.observe(seconds)

    def completed(self, queue: str, task: str, duration: float) -> None:
        self._completed.labels(queue, task).inc()
        self._duration.labels(queue, task).observe(duration)

    def failed(self, queue: str, task: str, state: str, duration: float) -> None:
        c = self._by_outcome.get(state)
        if c is not None:
            c.labels(queue, task).inc()
        self._duration.labels(queue, task).observe(duration)

    def on_outcome(self, outcome: Any) -> None:
        """The outcome subscriber (:mod:`pgqueue.hooks`): count a committed outcome and
        its duration."""
        ctx = outcome.ctx
        if outcome.state == "completed":
            self.completed(ctx.queue, ctx.task, outcome.duration)
        else:
            self.failed(ctx.queue, ctx.task, outcome.state, outcome.duration)

    def rescued(self, queue: str, task: str) -> None:
        self._rescued.labels(queue, task).inc()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Serve ``/metrics`` (when a port was given) and start the database refresher.

        :raises OSError: the port cannot be bound (e.g. already in use).
        """
        from prometheus_client import start_http_server
        self.database.refresh()
        if self.port is not None:
            self._server, _ = start_http_server(self.port, addr=self.host,
                                                registry=self.registry)
            self.port = self._server.server_port
            log.info("serving metrics on http://%s:%d/metrics", self.host, self.port)
        self._thread = threading.Thread(target=self._refresh_loop, name="pgqueue-metrics",
                                        daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.database.refresh()

    def close(self) -> None:
        """Stop serving and refreshing; closes the refresher's connection."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
        self.database.close()


def render_database_metrics(conninfo: str, stale_after: float = 10.0) -> bytes:
    """The database series (see the module doc) in the Prometheus text format, read once.

    :raises psycopg.Error: the database cannot be reached or read (e.g. no schema).
    """
    registry = CollectorRegistry()
    collector = DatabaseCollector(conninfo, stale_after)
    registry.register(collector)
    try:
        if not collector.refresh():
            assert collector.last_error is not None  # noqa: S101 - narrows a type; a failed refresh records its error
            raise collector.last_error
        return generate_latest(registry)
    finally:
        collector.close()
