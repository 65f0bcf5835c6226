"""The process executor: ``def`` tasks in a pool of child processes.

Owns the children and one supervising thread per child (a *slot*). Children are
started by the fork server (spawned where there is none), never forked from the
worker, whose threads hold locks; each imports the app by its module spec
(:mod:`._child`). Claiming, heartbeats and completion stay in the worker, so a task
that holds the GIL for minutes never makes its job look dead.

A slot sends its child the job's id, attempt, task name and JSON text, and waits:

- past the attempt's ``timeout`` it kills the child (SIGKILL): the attempt fails with
  a ``TimeoutError`` (retried by policy) and the slot is free at once;
- when the job is asked to cancel, the child's ``ctx.cancelled`` is set; if the task
  has not returned ``cancel_grace`` seconds later the child is killed and the attempt
  fails with :class:`~pgqueue.Cancelled`;
- a child that dies (a signal, an exit, out of memory) fails only its own attempt, with
  an error entry ``pgqueue.ChildProcessDied`` naming the signal or exit code;
- after each job, a child that ran ``max_tasks_per_child`` jobs, or whose resident
  memory exceeds ``max_memory_per_child`` MiB, is retired and replaced.

Runs no SQL in the worker (a transactional task's transaction runs in its child).
"""

from __future__ import annotations

import logging
import multiprocessing
import queue as queue_mod
import signal
import threading
import time
from typing import Any

from ...errors import Cancelled, ConfigurationError
from ..outcomes import Outcomes, _Abandoned
from ..running import RunningJobs, WakeUp, _Running
from . import _child

log = logging.getLogger("pgqueue.worker")

#: seconds a cancelled task may take to return before its child is killed
CANCEL_GRACE = 5.0
#: seconds a new child may take to import the app
START_TIMEOUT = 60.0
#: seconds between two looks at a running job's cancellation flag
POLL_STEP = 0.1


class ChildFailed(Exception):
    """A child could not start (its app import failed, or it never answered)."""


class _Child:
    def __init__(self, proc: Any, conn: Any, pid: int):
        self.proc = proc
        self.conn = conn
        self.pid = pid
        self.jobs = 0
        self.rss = 0.0

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.proc.join(5)
        self.conn.close()

    def retire(self) -> None:
        """Ask the child to exit between jobs; kill it if it does not within 5 s."""
        try:
            self.conn.send(("exit",))
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()

    def how_it_died(self) -> str:
        self.proc.join(1)
        code = self.proc.exitcode
        if code is None:
            return "stopped answering"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by signal {-code} ({name})"
        return f"exited with code {code}"


def app_module_spec(app: Any, tasks: list[Any]) -> str:
    """``module:attr`` of ``app``, found through its tasks' functions' modules.

    :raises ConfigurationError: no such module holds ``app`` under a name, or it is
        ``__main__`` (a child process cannot import it).
    """
    import sys
    for name in sorted({t.fn.__module__ for t in tasks}):
        module = sys.modules.get(name)
        for attr, value in vars(module).items() if module is not None else ():
            if value is app:
                if name == "__main__":
                    break
                return f"{name}:{attr}"
    raise ConfigurationError(
        "the process executor's children import the app by module name, and no "
        "importable module of its process tasks holds it (tasks defined in __main__?): "
        "define the app and its tasks in a module, or pass app_spec='module:attr'")


def start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ProcessExecutor:
    """Runs sync attempts in ``size`` child processes.

    :param app_spec: ``module[:attr]`` the children import the app from.
    :param conninfo: the connection string children use (transactional tasks).
    :param worker_id: the worker's UUID (fences a transactional completion).
    :param size: number of children (the worker's concurrency).
    :param running: the worker's running jobs (frees a slot when an attempt ends).
    :param outcomes: where outcomes go.
    :param wake: set when a slot frees up.
    :param max_tasks_per_child: jobs a child runs before it is replaced (None: no limit).
    :param max_memory_per_child: MiB of resident memory after a job above which the
        child is replaced (None: no limit).
    :param cancel_grace: seconds a cancelled task may take to return before its child
        is killed (default ``CANCEL_GRACE``).
    """

    def __init__(self, app_spec: str, conninfo: str, worker_id: Any, size: int,
                 running: RunningJobs, outcomes: Outcomes, wake: WakeUp, *,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: float | None = None,
                 cancel_grace: float | None = None):
        self.app_spec = app_spec
        self.conninfo = conninfo
        self.worker_id = worker_id
        self.size = size
        self.running = running
        self.outcomes = outcomes
        self.wake = wake
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.cancel_grace = CANCEL_GRACE if cancel_grace is None else cancel_grace
        self._mp = multiprocessing.get_context(start_method())
        self._q: queue_mod.SimpleQueue = queue_mod.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._children: dict[int, _Child] = {}   # slot -> its child now
        self._busy: set[int] = set()             # slots running a job
        self._stopping = False
        #: pids of every child started (for tests and the bench)
        self.pids: list[int] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start every child, then the slots.

        :raises ConfigurationError: a child could not import the app.
        """
        if self._mp.get_start_method() == "forkserver":
            self._mp.set_forkserver_preload([_child.__name__,
                                             self.app_spec.partition(":")[0]])
        started = [self._launch() for _ in range(self.size)]
        try:
            children = [self._ready(*s) for s in started]
        except ChildFailed as e:
            for proc, conn in started:
                proc.kill()
                conn.close()
            raise ConfigurationError(f"the process executor cannot start a child: {e}") from None
        for i, child in enumerate(children):
            self._children[i] = child
            t = threading.Thread(target=self._slot, args=(i,), name=f"pgqueue-proc-{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def prepare(self, r: _Running) -> None:
        """Mark ``r`` as this executor's before it is owned: it keeps its own timeout."""
        r.own_timeout = True

    def submit(self, r: _Running) -> None:
        self._q.put(r)

    def stop(self) -> None:
        """Kill the children still running a job (their attempts were handed back), let
        idle ones exit, and wait for the slots."""
        self._stopping = True
        for _ in self._threads:
            self._q.put(None)
        for i in list(self._busy):
            child = self._children.get(i)
            if child is not None:
                child.kill()
        deadline = time.monotonic() + 10
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        for child in list(self._children.values()):
            if child is not None and child.proc.is_alive():
                child.kill()

    # -- children --------------------------------------------------------------------

    def _launch(self) -> tuple[Any, Any]:
        parent_end, child_end = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(target=_child.main, name="pgqueue-child", daemon=True,
                                args=(child_end, self.app_spec, self.conninfo))
        proc.start()
        child_end.close()
        return proc, parent_end

    def _ready(self, proc: Any, conn: Any) -> _Child:
        try:
            if not conn.poll(START_TIMEOUT):
                raise ChildFailed(f"no answer within {START_TIMEOUT:.0f} s")
            msg = conn.recv()
        except (EOFError, OSError):
            proc.join(1)
            raise ChildFailed(f"it exited with code {proc.exitcode} while starting") from None
        if msg[0] != "ready":
            raise ChildFailed(f"importing the app {self.app_spec!r} failed:\n{msg[1]}")
        self.pids.append(msg[1])
        return _Child(proc, conn, msg[1])

    def _new_child(self) -> _Child | None:
        """A fresh child for a slot; None (after a pause) when it cannot start."""
        proc, conn = self._launch()
        try:
            return self._ready(proc, conn)
        except ChildFailed as e:
            log.error("process executor: cannot start a child (%s); retrying", e)
            proc.kill()
            conn.close()
            time.sleep(1.0)
            return None

    # -- slots -----------------------------------------------------------------------

    def _slot(self, i: int) -> None:
        child: _Child | None = self._children[i]
        while True:
            while child is None and not self._stopping:
                child = self._children[i] = self._new_child()
            r = self._q.get()
            if r is None:
                if child is not None:
                    child.retire()
                self._children.pop(i, None)
                return
            assert child is not None
            self._busy.add(i)
            try:
                child = self._run(child, r)
            except BaseException as e:  # noqa: BLE001 - a slot never dies with a job
                log.exception("process executor: job %s", r.id)
                self._fail(r, {"type": "pgqueue.ChildProcessDied",
                               "message": f"the process executor failed: {e}",
                               "traceback": None})
                if child is not None:
                    child.kill()
                child = None
            finally:
                self._busy.discard(i)
                self.running.release_slot()
                self.wake.set()
            if child is not None and (
                    (self.max_tasks_per_child and child.jobs >= self.max_tasks_per_child)
                    or (self.max_memory_per_child and child.rss > self.max_memory_per_child)):
                log.debug("retiring child %s after %d jobs (%.0f MiB)", child.pid,
                          child.jobs, child.rss)
                child.retire()
                child = None
            self._children[i] = child   # type: ignore[assignment]

    def _run(self, child: _Child, r: _Running) -> _Child | None:
        """Run ``r`` in ``child``; return the child, or None once it is gone."""
        if r.task is None:   # not registered here (claimed only by name filter races)
            self.outcomes.unknown_task(r)
            return child
        child.conn.send(("job", {
            "id": r.id, "attempt": r.attempt, "task": r.name, "queue": r.queue,
            "max_attempts": r.ctx.max_attempts, "worker_id": str(self.worker_id),
            "args": r.args, "kwargs": r.kwargs, "inputs": r.inputs,
            "cancel": r.ctx._cancel.is_set()}))
        deadline = r.started + r.timeout if r.timeout else None
        cancel_sent = False
        kill_at: float | None = None
        while True:
            now = time.monotonic()
            step = POLL_STEP if deadline is None else max(0.0, min(POLL_STEP, deadline - now))
            try:
                ready = child.conn.poll(step)
                msg = child.conn.recv() if ready else None
            except (EOFError, OSError):
                msg = None
                ready = True
            if msg is not None:
                _, _job_id, outcome, rss = msg
                child.jobs += 1
                child.rss = rss
                self._deliver(r, outcome)
                return child
            if ready or not child.proc.is_alive():      # the pipe closed: the child died
                how = child.how_it_died()
                child.kill()
                log.warning("job %s %s: its child process %s %s", r.id, r.name, child.pid, how)
                self._fail(r, {"type": "pgqueue.ChildProcessDied",
                               "message": f"the child process (pid {child.pid}) running "
                                          f"this attempt {how}", "traceback": None})
                return None
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                child.kill()
                r.timed_out = True
                log.warning("job %s %s timed out after %s s; killed its child process %s",
                            r.id, r.name, r.timeout, child.pid)
                self._fail(r, {"type": "builtins.TimeoutError",
                               "message": f"attempt exceeded its timeout of {r.timeout} s "
                                          f"(its child process {child.pid} was killed)",
                               "traceback": None})
                return None
            if not cancel_sent and r.ctx._cancel.is_set():
                cancel_sent = True
                kill_at = now + self.cancel_grace
                try:
                    child.conn.send(("cancel", r.id))
                except OSError:
                    pass
            if kill_at is not None and now >= kill_at:
                child.kill()
                log.warning("job %s %s did not stop within %.1f s of its cancellation; "
                            "killed its child process %s", r.id, r.name, self.cancel_grace,
                            child.pid)
                if not self.running.is_abandoned(r):
                    self.outcomes.exception(r, Cancelled(
                        f"job {r.id} was asked to stop and did not within "
                        f"{self.cancel_grace} s; its process was killed"))
                return None

    def _deliver(self, r: _Running, outcome: tuple) -> None:
        kind = outcome[0]
        if kind == "ok":
            self.outcomes.success_json(r, outcome[1])
        elif kind == "committed":
            self.outcomes.committed(r)
        elif kind == "fenced":
            self.outcomes.exception(r, _Abandoned(owner=outcome[1]))
        else:
            _, err, discard, delay = outcome
            if not self.running.is_abandoned(r):
                self.outcomes.failure(r, err, discard=discard, retry_delay=delay)

    def _fail(self, r: _Running, err: dict[str, Any]) -> None:
        """Fail ``r`` with ``err``, retried by its task's policy."""
        if self.running.is_abandoned(r):
            return
        retry = r.task.retry.retry if r.task is not None else True
        self.outcomes.failure(r, err, discard=not retry)
