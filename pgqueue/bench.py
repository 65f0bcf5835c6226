"""``pgqueue bench``: throughput and latency of this machine's pgqueue setup.

Runs against the configured database (``--dsn``, ``PGQUEUE_DSN``, libpq environment or
the embedded server). It applies pending migrations, then works only on its own queue
(``bench`` by default): rows of that queue are deleted before and after every
scenario. Do not point it at a production database: the scenarios load the server on
purpose, and ``VACUUM ANALYZE pgqueue.jobs`` runs after the cleanup.

Scenarios
---------
``enqueue``
    ``task.enqueue()`` N times on the app's pool, one job per transaction (autocommit).
``bulk``
    ``task.enqueue_many()`` of N jobs from a generator (one COPY), with the producer's
    peak resident memory growth while it runs (it must stream, not hold every row).
``drain``
    N no-op jobs are loaded with COPY, then one in-process :class:`~pgqueue.Worker`
    (``--concurrency`` threads) runs them all; results are kept. Reports jobs/s and the
    process's resident memory when the worker starts vs its peak while draining.
``latency``
    An idle worker (poll interval 60 s, so only NOTIFY can wake it); one job at a time is
    enqueued and committed, and the handler records when it starts. Reports
    commit-to-handler-start percentiles (same process, ``time.perf_counter``).
``chord``
    A chord of N no-op members and one callback (``pgqueue.chord``), enqueued in one
    statement, then run by one in-process worker. Reports the enqueue time, the
    members' drain rate next to a plain drain of N jobs in the same run, and the
    fan-in delay: the callback's ``started_at`` minus the last member's
    ``finished_at`` (both database clock; it includes the completion transaction, the
    NOTIFY and the claim). The plain drain is the ``drain`` scenario's result when it
    ran in the same invocation with the same N, else one run just before.
``claim``
    Round-trip time of one ``pgqueue.claim`` of a single job (the claim statement,
    then its completion), first on an empty queue and then with
    ``--finished-rows`` completed rows in ``pgqueue.jobs``: the claim index holds only
    claimable rows, so the second figure should match the first. Not part of ``all``.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import click
import psycopg

from . import migrate as migrate_mod
from ._positions import ClaimPositions
from ._sql import q
from .app import App, resolve_dsn
from .errors import PgQueueError
from .worker import Worker

__all__ = ["bench", "run_scenarios"]

log = logging.getLogger("pgqueue.bench")

NOOP = "pgqueue.bench.noop"
PING = "pgqueue.bench.ping"
NAP = "pgqueue.bench.nap"
#: every scenario, in the order ``--scenario all`` runs them; ``claim``, ``batch`` and the
#: limited drains only on request
SCENARIOS = ("enqueue", "bulk", "drain", "latency", "chord", "claim", "batch", "drain_limited",
             "drain_partitioned")
ALL = ("enqueue", "bulk", "drain", "latency", "chord")


# -- memory ------------------------------------------------------------------------

def _status_kb(field: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        return None
    return None


def rss_mib() -> float | None:
    """Resident set size of this process now, in MiB (Linux), else ``None``."""
    kb = _status_kb("VmRSS")
    if kb is None:
        try:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        except Exception:  # pragma: no cover
            return None
    return kb / 1024.0


class RssWatch:
    """Peak resident memory between ``start()`` and ``stop()``.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``) when allowed, and
    also samples ``VmRSS`` every few milliseconds, so a short peak is not missed.
    """

    def __init__(self, every: float = 0.005):
        self.every = every
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_reset = False

    def start(self) -> RssWatch:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")        # reset VmHWM to the current RSS
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.start_mib = self.peak_mib = rss_mib()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        now = rss_mib()
        if now is not None and (self.peak_mib is None or now > self.peak_mib):
            self.peak_mib = now

    def stop(self) -> RssWatch:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self._hwm_reset:
            hwm = _status_kb("VmHWM")
            if hwm is not None and self.peak_mib is not None:
                self.peak_mib = max(self.peak_mib, hwm / 1024.0)
        return self

    def report(self) -> dict[str, float | None]:
        s, p = self.start_mib, self.peak_mib
        return {"rss_start_mib": _r(s), "rss_peak_mib": _r(p),
                "rss_growth_mib": _r(p - s) if s is not None and p is not None else None}


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# -- the bench app ---------------------------------------------------------------------

def _noop(*args: Any, **kwargs: Any) -> None:
    return None


#: the app the process executor's children import (``pgqueue.bench:children_app``):
#: the no-op task under the bench's name; the worker gives children its connection
children_app = App("postgresql://unused")
children_app.task(_noop, name=NOOP, retry=False)

class Bench:
    """Shared state of one ``pgqueue bench`` run."""

    def __init__(self, dsn: str, queue: str = "bench", concurrency: int = 10,
                 producers: int = 1, executor: str = "thread"):
        self.dsn = dsn
        self.executor = executor
        self.queue = queue
        self.concurrency = concurrency
        self.producers = producers
        self.app = App(dsn, pool_min_size=1, pool_max_size=max(4, producers))
        self.started: dict[int, float] = {}
        self.started_event = threading.Event()
        self.last_drain: dict[str, Any] | None = None

        def noop(*args: Any, **kwargs: Any) -> None:
            return None

        def ping(seq: int) -> None:
            self.started[seq] = time.perf_counter()
            self.started_event.set()

        def nap(seconds: float) -> None:
            time.sleep(seconds)

        self.noop = self.app.task(noop, name=NOOP, queue=queue, retry=False)
        self.nap = self.app.task(nap, name=NAP, queue=queue, retry=False)
        self.ping = self.app.task(ping, name=PING, queue=queue, retry=False, max_attempts=1)

    # -- housekeeping --------------------------------------------------------------

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True)

    def server_version(self) -> str:
        with self.connect() as c:
            return c.execute("show server_version").fetchone()[0]

    def cleanup(self, vacuum: bool = True) -> None:
        with self.connect() as c:
            c.execute("delete from pgqueue.jobs where queue = %s", (self.queue,))
            c.execute("delete from pgqueue.workers where name like 'pgqueue-bench%%'")
            c.execute("delete from pgqueue.queues where name = %s", (self.queue,))
            c.execute("delete from pgqueue.job_starts where queue = %s", (self.queue,))
            if vacuum:
                c.execute("vacuum (analyze) pgqueue.jobs")

    def count(self, state: str | None = None) -> int:
        with self.connect() as c:
            if state is None:
                return c.execute("select count(*) from pgqueue.jobs where queue = %s",
                                 (self.queue,)).fetchone()[0]
            return c.execute("select count(*) from pgqueue.jobs where queue = %s and state = %s",
                             (self.queue, state)).fetchone()[0]

    def load(self, n: int) -> None:
        """Insert ``n`` no-op jobs with one streamed COPY."""
        self.noop.enqueue_many(() for _ in range(n))

    def worker(self, **kw: Any) -> tuple[Worker, threading.Thread]:
        kw.setdefault("concurrency", self.concurrency)
        w = Worker(self.app, queues=[self.queue],
                   name=f"pgqueue-bench:{os.getpid()}", shutdown_grace=10.0, **kw)
        t = threading.Thread(target=w.run, kwargs={"install_signal_handlers": False},
                             name="bench-worker", daemon=True)
        return w, t

    def close(self) -> None:
        self.app.close()

    # -- scenarios -----------------------------------------------------------------

    def enqueue(self, n: int) -> dict[str, Any]:
        self.cleanup(vacuum=False)
        for _ in range(min(50, n)):          # warm up the pool and prepared statement
            self.noop.enqueue()
        self.cleanup()
        noop = self.noop
        k = self.producers

        def produce(count: int) -> None:
            for _ in range(count):
                noop.enqueue()     # one job per transaction, committed

        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        threads = [threading.Thread(target=produce, args=(c,)) for c in shares]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt_ = time.perf_counter() - t0
        got = self.count()
        self.cleanup()
        return {"scenario": "enqueue", "jobs": n, "seconds": round(dt_, 3),
                "jobs_per_s": round(n / dt_), "producers": k, "ok": got == n}

    def bulk(self, n: int) -> dict[str, Any]:
        self.cleanup(vacuum=False)
        self.noop.enqueue_many(() for _ in range(10))   # warm up
        self.cleanup()
        watch = RssWatch().start()
        t0 = time.perf_counter()
        inserted = self.noop.enqueue_many(((i,) for i in range(n)))
        dt_ = time.perf_counter() - t0
        watch.stop()
        got = self.count()
        self.cleanup()
        out = {"scenario": "bulk", "jobs": n, "seconds": round(dt_, 3),
               "jobs_per_s": round(n / dt_), "ok": inserted == n and got == n}
        out.update(watch.report())
        return out

    def drain(self, n: int) -> dict[str, Any]:
        self.cleanup(vacuum=False)
        self.load(n)
        with self.connect() as c:
            c.execute("vacuum (analyze) pgqueue.jobs")
        kw: dict[str, Any] = {}
        if self.executor == "process":
            # only the no-op runs in children (they import pgqueue.bench:children_app)
            self.noop.executor = "process"
            kw = {"app_spec": "pgqueue.bench:children_app"}
        w, t = self.worker(poll_interval=1.0, **kw)
        watch = RssWatch(every=0.02).start()
        t0 = time.perf_counter()
        t.start()
        stats = w.stats
        deadline = time.monotonic() + max(120.0, n / 500.0)
        while stats["completed"] + stats["failed"] < n and t.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
        dt_ = time.perf_counter() - t0
        watch.stop()
        children = list(w.processes.pids) if w.processes is not None else []
        child_peaks = [kb / 1024.0 for kb in (_status_kb("VmHWM", p) for p in children)
                       if kb is not None]
        w.stop()
        t.join(30)
        self.noop.executor = None
        done = self.count("completed")
        self.cleanup()
        out = {"scenario": "drain", "jobs": n, "concurrency": self.concurrency,
               "executor": self.executor, "seconds": round(dt_, 3),
               "jobs_per_s": round(n / dt_), "ok": done == n}
        out.update(watch.report())
        if children:
            out["children"] = len(children)
            out["child_peak_rss_mib"] = _r(max(child_peaks)) if child_peaks else None
        self.last_drain = out
        return out

    def _drain_until(self, w: Worker, t: threading.Thread, n: int) -> float:
        t0 = time.perf_counter()
        t.start()
        deadline = time.monotonic() + max(120.0, n / 200.0)
        while w.stats["completed"] + w.stats["failed"] < n and t.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.002)
        dt_ = time.perf_counter() - t0
        w.stop()
        t.join(30)
        return dt_

    def drain_limited(self, n: int, limit: int = 50, seconds: float = 0.05) -> dict[str, Any]:
        """Jobs of ``seconds`` each in a queue with a concurrency limit of ``limit``, on
        a worker with more slots than that: utilisation is the rate reached over the
        limit's ceiling (``limit / seconds`` jobs/s)."""
        self.cleanup(vacuum=False)
        self.nap.enqueue_many([seconds] for _ in range(n))
        with self.connect() as c:
            c.execute("select pgqueue.set_queue_limits(%s, concurrency => %s)",
                      (self.queue, limit))
            c.execute("vacuum (analyze) pgqueue.jobs")
        w, t = self.worker(poll_interval=1.0, concurrency=limit + 10)
        dt_ = self._drain_until(w, t, n)
        done = self.count("completed")
        self.cleanup()
        rate = n / dt_
        return {"scenario": "drain_limited", "jobs": n, "limit": limit,
                "job_seconds": seconds, "seconds": round(dt_, 3), "jobs_per_s": round(rate),
                "utilisation": round(rate / (limit / seconds), 3), "ok": done == n}

    def drain_partitioned(self, n: int, samples: int) -> dict[str, Any]:
        """Drain ``n // 20`` keys x 20 no-op jobs (partition concurrency 2) and compare
        with the unlimited drain of this run; then the claim latency with up to 10,000
        distinct keys waiting (batch 10)."""
        keys = max(2, n // 20)
        n = keys * 20
        self.cleanup(vacuum=False)
        with self.connect() as c:
            c.execute("insert into pgqueue.jobs (task, queue, partition_key) "
                      "select %s, %s, 'key-' || (i %% %s) from generate_series(1, %s) i",
                      (NOOP, self.queue, keys, n))
            c.execute("select pgqueue.set_queue_limits(%s, partition_concurrency => 2)",
                      (self.queue,))
            c.execute("vacuum (analyze) pgqueue.jobs")
        w, t = self.worker(poll_interval=1.0)
        dt_ = self._drain_until(w, t, n)
        done = self.count("completed")
        out: dict[str, Any] = {"scenario": "drain_partitioned", "jobs": n, "keys": keys,
                               "partition_concurrency": 2, "concurrency": self.concurrency,
                               "seconds": round(dt_, 3), "jobs_per_s": round(n / dt_),
                               "ok": done == n}
        if self.last_drain:
            out["of_unlimited"] = round(out["jobs_per_s"] / self.last_drain["jobs_per_s"], 3)
        wait_keys = min(10_000, max(100, n * 5))
        with self.connect() as c:
            c.execute("delete from pgqueue.jobs where queue = %s", (self.queue,))
            c.execute("insert into pgqueue.jobs (task, queue, partition_key) "
                      "select %s, %s, 'key-' || i from generate_series(1, %s) i",
                      (NOOP, self.queue, wait_keys))
            c.execute("vacuum (analyze) pgqueue.jobs")
            wid = uuid.uuid4()
            lat = []
            for _ in range(min(samples, wait_keys // 10)):
                t0 = time.perf_counter()
                c.execute(q("claim"), {"worker_id": wid, "queues": [self.queue],
                                       "tasks": [NOOP], "batch": 10,
                                       "task_max_attempts": None, "task_timeouts": None,
                                       "task_concurrency": None, "position_queues": None,
                                       "position_priorities": None, "position_run_ats": None,
                                       "position_ids": None}, prepare=True).fetchall()
                lat.append((time.perf_counter() - t0) * 1000)
        self.cleanup()
        out.update({"waiting_keys": wait_keys, "claim_p50_ms": _r(_pct(lat, 50), 2),
                    "claim_p95_ms": _r(_pct(lat, 95), 2)})
        return out

    def chord(self, n: int) -> dict[str, Any]:
        from .workflow import chord as chord_
        if "pgqueue.bench.collect" not in self.app.tasks:
            def collect(results: list[Any]) -> int:
                return len(results)
            self.app.task(collect, name="pgqueue.bench.collect", queue=self.queue, retry=False)
        collect_task = self.app.tasks["pgqueue.bench.collect"]
        plain = self.last_drain
        if plain is None or plain["jobs"] != n or not plain["ok"]:
            plain = self.drain(n)
        self.cleanup(vacuum=False)
        t0 = time.perf_counter()
        h = chord_([self.noop.s() for _ in range(n)], collect_task.s()).enqueue(
            name="pgqueue-bench")
        enqueue_s = time.perf_counter() - t0
        with self.connect() as c:
            c.execute("vacuum (analyze) pgqueue.jobs")
        w, t = self.worker(poll_interval=1.0)
        t0 = time.perf_counter()
        t.start()
        try:
            result = h.result(timeout=max(120.0, n / 200.0))
        finally:
            w.stop()
            t.join(30)
        with self.connect() as c:
            members_s, fan_in, total_s = c.execute(
                "select extract(epoch from max(m.finished_at) - min(m.started_at))::float8,"
                "       extract(epoch from cb.started_at - max(m.finished_at))::float8,"
                "       extract(epoch from cb.finished_at - min(m.started_at))::float8"
                "  from pgqueue.jobs m, pgqueue.jobs cb"
                " where m.id = any(%s) and cb.id = %s group by cb.started_at, cb.finished_at",
                (h.job_ids[:n], h.job_ids[n])).fetchone()
            c.execute("delete from pgqueue.workflows where name = 'pgqueue-bench'")
        self.cleanup()
        rate = n / members_s if members_s else None
        return {"scenario": "chord", "jobs": n, "concurrency": self.concurrency,
                "enqueue_seconds": round(enqueue_s, 3), "seconds": round(total_s, 3),
                "jobs_per_s": round(rate) if rate else None,
                "plain_jobs_per_s": plain["jobs_per_s"],
                "ratio_to_plain": round(rate / plain["jobs_per_s"], 2) if rate else None,
                "fan_in_ms": round(fan_in * 1000.0, 1), "ok": result == n}

    def batch(self, n: int, part: int = 100, runs: int = 10) -> dict[str, Any]:
        """A batch of ``n`` members added in transactions of ``part`` by a producer
        thread while the worker drains it, then sealed; the members' drain rate against
        the plain drain, and the callback's start after the later of the seal and the
        last member's completion (database clock), over ``runs`` batches (the first of
        ``n`` members, the others of ``min(n, 1000)``)."""
        if "pgqueue.bench.collect" not in self.app.tasks:
            def collect(results: list[Any]) -> int:
                return len(results)
            self.app.task(collect, name="pgqueue.bench.collect", queue=self.queue, retry=False)
        collect_task = self.app.tasks["pgqueue.bench.collect"]
        plain = self.last_drain
        if plain is None or plain["jobs"] != n or not plain["ok"]:
            plain = self.drain(n)
        self.cleanup()
        w, t = self.worker(poll_interval=1.0)
        t.start()
        lat: list[float] = []
        rate = None
        ok = True
        try:
            for run in range(runs):
                size = n if run == 0 else min(n, 1000)
                batch = self.app.batch(callback=collect_task.s(), name="pgqueue-bench")
                t0 = time.perf_counter()
                for lo in range(0, size, part):     # one transaction per part, committed
                    batch.add(*[self.noop.s() for _ in range(min(part, size - lo))])
                batch.seal()
                add_s = time.perf_counter() - t0
                ok = ok and batch.result(timeout=max(120.0, size / 200.0)) == size
                with self.connect() as c:
                    members_s, cb_ms = c.execute(
                        "select extract(epoch from max(m.finished_at) - min(m.started_at))::float8,"
                        "       extract(epoch from cb.started_at - greatest(max(m.finished_at),"
                        "               w.sealed_at))::float8 * 1000.0"
                        "  from pgqueue.workflows w"
                        "  join pgqueue.jobs cb on cb.id = w.batch_callback_job_id"
                        "  join pgqueue.jobs m on m.workflow_id = w.id and m.task = %s"
                        " where w.id = %s group by cb.started_at, w.sealed_at",
                        (NOOP, batch.id)).fetchone()
                lat.append(cb_ms)
                if run == 0:
                    rate = n / members_s if members_s else None
                    first_add_s = add_s
                with self.connect() as c:
                    c.execute("delete from pgqueue.workflows where id = %s", (batch.id,))
        finally:
            w.stop()
            t.join(30)
            self.cleanup()
        return {"scenario": "batch", "jobs": n, "part": part, "runs": runs,
                "concurrency": self.concurrency, "add_seconds": round(first_add_s, 3),
                "jobs_per_s": round(rate) if rate else None,
                "plain_jobs_per_s": plain["jobs_per_s"],
                "ratio_to_plain": round(rate / plain["jobs_per_s"], 2) if rate else None,
                "callback_p50_ms": _r(_pct(lat, 50), 2), "callback_max_ms": _r(max(lat), 2),
                "ok": ok}

    def latency(self, samples: int) -> dict[str, Any]:
        # The worker's threads share this process with the producer: once its commit
        # returns, the producer waits for the GIL while the worker starts the job (up to
        # the 5 ms switch interval) and would read the clock late, so samples would come
        # out low or below zero. A 0.1 ms interval bounds that error.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-4)
        try:
            return self._latency(samples)
        finally:
            sys.setswitchinterval(switch)

    def _latency(self, samples: int) -> dict[str, Any]:
        self.cleanup()
        w, t = self.worker(poll_interval=60.0)
        t.start()
        # The worker is ready once its listener has connected and the first claim ran.
        deadline = time.monotonic() + 30
        while w.last_heartbeat is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        lat: list[float] = []
        warmup = 20
        lost = 0
        try:
            for seq in range(samples + warmup):
                self.started_event.clear()
                before = w.stats["completed"]
                self.ping.enqueue(seq)      # as an application does: one committed job
                t_commit = time.perf_counter()
                if not self.started_event.wait(5.0):
                    lost += 1
                    continue
                if seq >= warmup:
                    lat.append((self.started[seq] - t_commit) * 1000.0)
                # let the completion be recorded so the worker is idle again
                end = time.monotonic() + 1.0
                while w.stats["completed"] <= before and time.monotonic() < end:
                    time.sleep(0.0005)
                time.sleep(0.002)
        finally:
            w.stop()
            t.join(30)
            self.cleanup()
        return {"scenario": "latency", "samples": len(lat), "lost": lost,
                "p50_ms": _r(_pct(lat, 50), 2), "p95_ms": _r(_pct(lat, 95), 2),
                "p99_ms": _r(_pct(lat, 99), 2), "max_ms": _r(max(lat) if lat else None, 2),
                "mean_ms": _r(statistics.fmean(lat) if lat else None, 2),
                "ok": lost == 0}

    def claim(self, samples: int, finished_rows: int) -> dict[str, Any]:
        """Claim round trip on an empty table vs with ``finished_rows`` completed rows."""
        self.cleanup()
        out: dict[str, Any] = {"scenario": "claim", "samples": samples,
                               "finished_rows": finished_rows}
        wid = uuid.uuid4()
        with self.connect() as c:
            # This session only: the figure is the claim's own work (index walk, row
            # locks, update), not the disk's flush latency, which is the same either way.
            c.execute("set synchronous_commit = off")
            c.execute(q("heartbeat"), {"worker_id": wid, "name": "pgqueue-bench:claim",
                                       "hostname": "bench", "pid": os.getpid(),
                                       "queues": [self.queue], "tasks": [NOOP],
                                       "concurrency": 1, "stale_after": 60.0})

            def measure() -> dict[str, float]:
                positions = ClaimPositions()    # as a worker claims
                self.load(samples + 20)
                c.execute("analyze pgqueue.jobs")
                times = []
                for i in range(samples + 20):
                    t0 = time.perf_counter()
                    rows = c.execute(q("claim"), {"worker_id": wid, "queues": [self.queue],
                                                  "tasks": [NOOP], "batch": 1,
                                                  "task_max_attempts": [self.noop.max_attempts],
                                                  "task_timeouts": [self.noop.timeout],
                                                  "task_concurrency": None,
                                                  **positions.params()},
                                     prepare=True).fetchall()
                    positions.taken(rows, 1)
                    t1 = time.perf_counter()
                    if len(rows) != 1:
                        raise click.ClickException("claim found no job")
                    c.execute(q("complete"), {"worker_id": wid, "ids": [rows[0][0]],
                                              "attempts": [rows[0][5]], "results": ["null"]},
                              prepare=True)
                    if i >= 20:
                        times.append((t1 - t0) * 1000.0)
                c.execute("delete from pgqueue.jobs where queue = %s and args = '[]'::jsonb",
                          (self.queue,))
                return {"p50_ms": _r(_pct(times, 50), 3), "p99_ms": _r(_pct(times, 99), 3)}

            def plan() -> str:
                self.load(1000)
                c.execute("analyze pgqueue.jobs")
                text = "\n".join(r[0] for r in c.execute(
                    "explain (analyze, buffers, costs off, timing off, summary on) "
                    "select j.id from pgqueue.jobs j "
                    " where j.state in ('available', 'scheduled', 'retryable') "
                    "   and j.run_at <= now() and j.queue = %s and j.task = any(%s) "
                    "   and not exists (select 1 from pgqueue.queues q "
                    "                    where q.name = %s and q.paused) "
                    " order by j.priority desc, j.run_at, j.id limit 10 for update skip locked",
                    (self.queue, [NOOP], self.queue)).fetchall())
                c.execute("delete from pgqueue.jobs where queue = %s and state = 'available'",
                          (self.queue,))
                return text

            out["empty"] = measure()
            if finished_rows:
                t0 = time.perf_counter()
                c.execute(
                    "insert into pgqueue.jobs (queue, task, args, state, attempt, started_at,"
                    " finished_at, result, worker_id) "
                    "select %s, %s, '[1]', 'completed', 1, now(), now(), 'null', %s "
                    "  from generate_series(1, %s)",
                    (self.queue, NOOP, wid, finished_rows))
                c.execute("vacuum (analyze) pgqueue.jobs")
                out["fill_seconds"] = round(time.perf_counter() - t0, 1)
                out["with_finished"] = measure()
                out["plan_with_finished"] = plan()
            out["claim_index_kib"] = c.execute(
                "select pg_relation_size('pgqueue.jobs_claim_idx') / 1024").fetchone()[0]
            out["table_rows"] = c.execute("select count(*) from pgqueue.jobs").fetchone()[0]
            c.execute(q("worker_delete"), {"worker_id": wid})
        self.cleanup()
        out["ok"] = True
        return out


# -- runner and output ------------------------------------------------------------------

def run_scenarios(dsn: str, scenarios: list[str], *, jobs: int, concurrency: int,
                  samples: int, finished_rows: int, queue: str = "bench",
                  producers: int = 1, executor: str = "thread",
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``scenarios`` against ``dsn``; returns a JSON-able report."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_mod.apply(conn)
    b = Bench(dsn, queue=queue, concurrency=concurrency, producers=producers,
              executor=executor)
    report: dict[str, Any] = {"server_version": b.server_version(), "cpus": os.cpu_count(),
                              "results": []}
    try:
        for s in scenarios:
            if progress:
                progress(s)
            if s == "enqueue":
                r = b.enqueue(jobs)
            elif s == "bulk":
                r = b.bulk(jobs)
            elif s == "drain":
                r = b.drain(jobs)
            elif s == "latency":
                r = b.latency(samples)
            elif s == "claim":
                r = b.claim(samples, finished_rows)
            elif s == "chord":
                r = b.chord(jobs)
            elif s == "batch":
                r = b.batch(jobs)
            elif s == "drain_limited":
                r = b.drain_limited(jobs)
            elif s == "drain_partitioned":
                r = b.drain_partitioned(jobs, samples)
            else:  # pragma: no cover - click validates
                raise ValueError(s)
            report["results"].append(r)
    finally:
        b.close()
    return report


def _print_table(report: dict[str, Any]) -> None:
    click.echo(f"PostgreSQL {report['server_version']}, {report['cpus']} CPUs")
    head = f"{'scenario':<10} {'jobs':>8} {'seconds':>8} {'jobs/s':>9}  details"
    click.echo(head)
    click.echo("-" * len(head) + "-" * 30)
    for r in report["results"]:
        s = r["scenario"]
        if s in ("enqueue", "bulk", "drain"):
            details = []
            if r.get("producers"):
                details.append(f"{r['producers']} producer(s), one job per transaction")
            if s == "drain":
                details.append(f"concurrency {r['concurrency']}, {r.get('executor', 'thread')} executor")
            if "rss_start_mib" in r:
                details.append(f"RSS start {r['rss_start_mib']} MiB, peak {r['rss_peak_mib']} "
                               f"MiB (+{r['rss_growth_mib']})")
            if r.get("children"):
                details.append(f"{r['children']} children, peak RSS of one "
                               f"{r['child_peak_rss_mib']} MiB")
            if not r["ok"]:
                details.append("INCOMPLETE")
            click.echo(f"{s:<10} {r['jobs']:>8} {r['seconds']:>8} {r['jobs_per_s']:>9}  "
                       + "; ".join(details))
        elif s == "latency":
            click.echo(f"{s:<10} {r['samples']:>8} {'':>8} {'':>9}  commit->start ms: "
                       f"p50 {r['p50_ms']}, p95 {r['p95_ms']}, p99 {r['p99_ms']}, "
                       f"max {r['max_ms']}" + (f"; {r['lost']} lost" if r["lost"] else ""))
        elif s == "chord":
            click.echo(f"{s:<10} {r['jobs']:>8} {r['seconds']:>8} {r['jobs_per_s']:>9}  "
                       f"members vs plain drain {r['plain_jobs_per_s']} jobs/s: "
                       f"{r['ratio_to_plain']}x; last member -> callback start "
                       f"{r['fan_in_ms']} ms; enqueue {r['enqueue_seconds']} s"
                       + ("" if r["ok"] else "; INCOMPLETE"))
        elif s == "batch":
            click.echo(f"{s:<10} {r['jobs']:>8} {r['add_seconds']:>8} {r['jobs_per_s']:>9}  "
                       f"added {r['part']} per transaction while draining; members vs plain "
                       f"drain {r['plain_jobs_per_s']} jobs/s: {r['ratio_to_plain']}x; "
                       f"seal/last member -> callback start p50 {r['callback_p50_ms']} ms, "
                       f"max {r['callback_max_ms']} ms over {r['runs']} batches"
                       + ("" if r["ok"] else "; INCOMPLETE"))
        elif s == "drain_limited":
            click.echo(f"{s:<10} {r['jobs']:>8} {r['seconds']:>8} {r['jobs_per_s']:>9}  "
                       f"concurrency limit {r['limit']}, jobs of {r['job_seconds']} s: "
                       f"{r['utilisation']:.0%} of the limit used"
                       + ("" if r["ok"] else "; INCOMPLETE"))
        elif s == "drain_partitioned":
            vs = (f", {r['of_unlimited']:.0%} of the unlimited drain"
                  if "of_unlimited" in r else "")
            click.echo(f"{s:<10} {r['jobs']:>8} {r['seconds']:>8} {r['jobs_per_s']:>9}  "
                       f"{r['keys']} keys, partition concurrency 2{vs}; claim with "
                       f"{r['waiting_keys']:,} keys waiting p50 {r['claim_p50_ms']} ms, "
                       f"p95 {r['claim_p95_ms']} ms" + ("" if r["ok"] else "; INCOMPLETE"))
        elif s == "claim":
            e = r["empty"]
            line = (f"{s:<10} {r['samples']:>8} {'':>8} {'':>9}  claim round trip ms: "
                    f"empty p50 {e['p50_ms']} p99 {e['p99_ms']}")
            if "with_finished" in r:
                f = r["with_finished"]
                line += (f"; with {r['finished_rows']:,} finished rows p50 {f['p50_ms']} "
                         f"p99 {f['p99_ms']}; claim index {r['claim_index_kib']} KiB")
            click.echo(line)
            if "plan_with_finished" in r:
                click.echo("  claim plan with the finished rows:")
                for pl in r["plan_with_finished"].splitlines():
                    click.echo("    " + pl)


@click.command()
@click.option("--jobs", "-n", default=10000, show_default=True, type=click.IntRange(1),
              help="Jobs per throughput scenario (enqueue, bulk, drain).")
@click.option("--concurrency", "-c", default=10, show_default=True, type=click.IntRange(1),
              help="Worker threads for drain and latency.")
@click.option("--scenario", "scenarios", multiple=True, default=("all",), show_default=True,
              type=click.Choice([*SCENARIOS, "all"]),
              help="Scenario to run (repeatable); `all` is enqueue, bulk, drain, latency, chord.")
@click.option("--samples", default=500, show_default=True, type=click.IntRange(10),
              help="Latency samples (latency) and claims measured (claim).")
@click.option("--finished-rows", default=1_000_000, show_default=True, type=click.IntRange(0),
              help="Completed rows added for the claim scenario.")
@click.option("--queue", default="bench", show_default=True,
              help="Queue the bench uses; its rows are deleted before and after.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report instead of a table.")
@click.option("--json-out", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write the JSON report to this file.")
@click.option("--producers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Threads enqueueing one job per transaction at once (enqueue scenario); "
                   "several producers share WAL flushes (group commit).")
@click.option("--executor", type=click.Choice(["thread", "process"]), default="thread",
              show_default=True,
              help="Executor of the drain scenario's no-op tasks: worker threads, or child "
                   "processes (then the children's count and peak RSS are reported).")
@click.pass_context
def bench(ctx: click.Context, jobs: int, concurrency: int, scenarios: tuple[str, ...],
          samples: int, finished_rows: int, queue: str, as_json: bool,
          json_out: str | None, producers: int, executor: str) -> None:
    """Measure enqueue, bulk enqueue, drain throughput, wake-up latency and chords.

    Uses its own queue (`bench`) in the configured database, migrating it first, and
    deletes that queue's rows before and after. Run it on a scratch database.
    """
    dsn_opt = getattr(ctx.obj, "_dsn", None) if ctx.obj is not None else None
    try:
        dsn = resolve_dsn(dsn_opt)
    except PgQueueError as e:
        raise click.ClickException(str(e)) from None
    chosen: list[str] = []
    for s in scenarios:
        for x in (ALL if s == "all" else (s,)):
            if x not in chosen:
                chosen.append(x)
    logging.getLogger("pgqueue").setLevel(logging.WARNING)

    def progress(s: str) -> None:
        if not as_json:
            click.echo(f"running {s} ...", err=True)

    report = run_scenarios(dsn, chosen, jobs=jobs, concurrency=concurrency, samples=samples,
                           finished_rows=finished_rows, queue=queue, producers=producers,
                           executor=executor, progress=progress)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_table(report)
