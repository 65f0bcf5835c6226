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
  memory exceeds ``max_memory_per_child`` MiB, is retired and replaced;
- a replacement that fails to start (importing the app raises, the process dies, or it
  is not ready within ``START_TIMEOUT`` s and is killed) is followed by the next one
  only after a wait that doubles with each failure in a row, from 0.5 s up to 30 s.

Runs no SQL in the worker (a transactional task's transaction runs in its child).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
import selectors
import signal
import threading
import time
from typing import Any

from ...errors import Cancelled, ConfigurationError
from ..outcomes import Outcomes, _Abandoned
from ..running import RunningJobs, WakeUp, _Running
from . import _child, _forkserver

log = logging.getLogger("pgqueue.worker")

#: seconds a cancelled task may take to return before its child is killed
CANCEL_GRACE = 5.0
#: seconds a new child may take to import the app
START_TIMEOUT = 60.0
#: seconds between two looks at a running job's cancellation flag
POLL_STEP = 0.1
#: first and longest wait before replacing a child that failed to start (doubling)
RESTART_BACKOFF = 0.5
RESTART_BACKOFF_MAX = 30.0


class ChildFailed(Exception):
    """A child could not start (its app import failed, or it never answered)."""


class _Child:
    """One child process, and the job it runs (supervisor's state)."""

    def __init__(self, proc: Any, conn: Any, cancel_id: Any):
        self.proc = proc
        self.conn = conn
        self.cancel_id = cancel_id
        self.pid = proc.pid
        self.ready = False
        #: monotonic time it was started (it must be ready within START_TIMEOUT)
        self.born = time.monotonic()
        self.jobs = 0
        self.rss = 0.0
        self.job: _Running | None = None
        self.deadline: float | None = None
        self.kill_at: float | None = None
        #: its process ended (no new job goes to it)
        self.exited = False

    def kill(self) -> None:
        try:
            self.proc.kill()
        except Exception:  # noqa: BLE001, S110 - already gone
            pass
        self.proc.join(5)
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


def _cancelled(r: _Running) -> bool:
    # without making the context's Event (most jobs never need one)
    ev = r.ctx._cancel_event
    return ev is not None and ev.is_set()


def start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ProcessExecutor:
    """Runs sync attempts in ``size`` child processes, supervised by one thread.

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
        self._lock = threading.Lock()
        self._children: list[_Child] = []      # every live child (starting, idle, busy)
        self._idle: list[_Child] = []
        self._pending: deque[_Running] = deque()   # jobs waiting for an idle child
        self._retired: list[tuple[_Child, float]] = []   # asked to exit, at
        self._poke_r, self._poke_w = os.pipe()
        os.set_blocking(self._poke_w, False)
        # children's pipes, registered once each (the supervisor's only wait)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._poke_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._freed_slots = 0
        self._thread: threading.Thread | None = None
        #: pids of every child started (for tests and the bench)
        self.pids: list[int] = []
        #: children launched, ready or not (for tests)
        self.launched = 0
        #: failed starts in a row, and the monotonic times replacements are due at
        self._start_failures = 0
        self._launch_due: list[float] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start every child and wait until each imported the app, then supervise.

        :raises ConfigurationError: a child could not import the app.
        """
        if self._mp.get_start_method() == "forkserver":
            # _forkserver first: the server ignores a SIGTERM sent to the whole group
            self._mp.set_forkserver_preload([_forkserver.__name__, _child.__name__,
                                             self.app_spec.partition(":")[0]])
        children = [self._launch() for _ in range(self.size)]
        try:
            for c in children:
                if not c.conn.poll(START_TIMEOUT):
                    raise ChildFailed(f"no answer within {START_TIMEOUT:.0f} s")
                self._started(c, c.conn.recv())
        except (ChildFailed, EOFError, OSError) as e:
            for c in children:
                c.kill()
            raise ConfigurationError(f"the process executor cannot start a child: {e}") from None
        self._idle = list(children)
        self._thread = threading.Thread(target=self._supervise, name="pgqueue-processes",
                                        daemon=True)
        self._thread.start()

    def prepare(self, r: _Running) -> None:
        """Mark ``r`` as this executor's before it is owned: it keeps its own timeout."""
        r.own_timeout = True

    def submit(self, r: _Running) -> None:
        """Send ``r`` to an idle child now (from the caller's thread), or queue it."""
        if r.task is None:   # not registered here (claimed only by name filter races)
            self.outcomes.unknown_task(r)
            self._release()
            return
        with self._lock:
            if not self._idle:
                self._pending.append(r)
                return
            child = self._idle.pop()
            self._assign(child, r)

    def stop(self) -> None:
        """Kill the children still running a job (their attempts were handed back) and
        end the others."""
        self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            children, self._children, self._idle = self._children, [], []
        for c in children:
            if c.job is None and c.ready:
                self._send(c, ("exit",))
        for c in children:
            if c.job is not None or not c.ready:
                c.kill()
        for c in children + [c for c, _ in self._retired]:
            c.proc.join(5)
            if c.proc.is_alive():
                c.kill()
        self._selector.close()
        os.close(self._poke_r)
        os.close(self._poke_w)

    # -- children --------------------------------------------------------------------

    def _launch(self) -> _Child:
        parent_end, child_end = self._mp.Pipe(duplex=True)
        cancel_id = self._mp.RawValue("q", 0)
        proc = self._mp.Process(target=_child.main, name="pgqueue-child", daemon=True,
                                args=(child_end, self.app_spec, self.conninfo, cancel_id))
        try:
            proc.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        c = _Child(proc, parent_end, cancel_id)
        self.launched += 1
        with self._lock:
            self._children.append(c)
        self._selector.register(parent_end.fileno(), selectors.EVENT_READ, c)
        # its exit too: a grandchild the task forked holds the pipe open after the
        # child dies, so the pipe's EOF alone may never come
        self._selector.register(proc.sentinel, selectors.EVENT_READ, (c,))
        return c

    def _started(self, c: _Child, msg: tuple) -> None:
        if msg[0] != "ready":
            raise ChildFailed(f"importing the app {self.app_spec!r} failed:\n{msg[1]}")
        c.ready = True
        self._start_failures = 0
        self.pids.append(msg[1])

    def _assign(self, c: _Child, r: _Running) -> None:
        """Give ``r`` to the idle child ``c`` (with ``self._lock`` held)."""
        c.job = r
        c.deadline = r.started + r.timeout if r.timeout else None
        c.kill_at = None
        c.cancel_id.value = 0
        if not self._send(c, ("job", {
                "id": r.id, "attempt": r.attempt, "task": r.name, "queue": r.queue,
                "max_attempts": r.ctx.max_attempts, "worker_id": str(self.worker_id),
                "args": r.args, "kwargs": r.kwargs, "inputs": r.inputs,
                "cancel": _cancelled(r), "meta": dict(r.ctx.meta) or None,
                "workflow_id": r.ctx.workflow_id, "waited": r.ctx.waited})):
            # it died while idle: the supervisor replaces it and fails nothing
            c.job = None
            self._pending.appendleft(r)

    def _send(self, c: _Child, msg: tuple) -> bool:
        try:
            c.conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def _free(self, c: _Child) -> None:
        """``c`` can take a job: the next waiting one, or it waits."""
        with self._lock:
            if c not in self._children or c.exited:
                return
            if self._pending:
                self._assign(c, self._pending.popleft())
            else:
                self._idle.append(c)

    def _replace(self, c: _Child, *, retire: bool = False) -> None:
        """Remove ``c`` (ask it to exit, or kill it) and start another."""
        with self._lock:
            if c in self._children:
                self._children.remove(c)
            if c in self._idle:
                self._idle.remove(c)
        for fd in (c.conn, c.proc.sentinel):
            try:
                self._selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
        if retire and self._send(c, ("exit",)):
            self._retired.append((c, time.monotonic()))
        else:
            c.kill()
        if self._stopping:
            return
        if c.ready:
            self._relaunch()
            return
        # It failed before it could take a job (the app's import broke, the process
        # died or hung while starting): the next one would most likely fail alike, so
        # wait before it, longer after each failure in a row, rather than start
        # processes in a tight loop. The slot stays short meanwhile.
        self._start_failed()

    def _relaunch(self) -> None:
        """Start a replacement child (in the supervisor). A process that cannot even be
        started (fork refused under a pids limit or without memory, the fork server
        gone) is a failed start too, tried again after the wait: raised, it lost the
        slot for good, and with it the outcome of the job whose child was replaced."""
        try:
            self._launch()
        except Exception as e:  # noqa: BLE001
            log.error("process executor: cannot start a child process: %s", e)
            self._start_failed()

    def _start_failed(self) -> None:
        """Start the slot's next child after the wait that this failure in a row sets."""
        self._start_failures += 1
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF * 2 ** (self._start_failures - 1))
        log.error("process executor: a new child process failed to start (%d in a row); "
                  "starting another in %.1f s", self._start_failures, delay)
        self._launch_due.append(time.monotonic() + delay)

    def _poke(self) -> None:
        try:
            os.write(self._poke_w, b"x")
        except OSError:
            pass

    def _release(self) -> None:
        self.running.release_slot()
        self.wake.set()

    def _freed(self) -> None:
        """A slot freed up in this supervisor round (released together at its end, so
        the claim loop wakes once and claims for all of them in one round trip)."""
        self._freed_slots += 1

    # -- the supervisor --------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping:
            try:
                self._round()
            except Exception:  # noqa: BLE001 - the supervisor must go on
                log.exception("process executor: supervising children failed")
                time.sleep(0.1)
            finally:
                n, self._freed_slots = self._freed_slots, 0
                for _ in range(n):
                    self.running.release_slot()
                if n:
                    self.wake.set()

    def _round(self) -> None:
        with self._lock:
            children = list(self._children)
        now = time.monotonic()
        wait = POLL_STEP
        for c in children:
            for t in (c.deadline if c.job is not None else None, c.kill_at,
                      None if c.ready else c.born + START_TIMEOUT):
                if t is not None:
                    wait = min(wait, max(0.0, t - now))
        for t in self._launch_due:
            wait = min(wait, max(0.0, t - now))
        for key, _ in self._selector.select(wait):
            c = key.data
            if c is None:
                os.read(self._poke_r, 512)
                continue
            if isinstance(c, tuple):     # the child exited: what it sent first still counts
                c, = c
                if c not in self._children:
                    continue
                with self._lock:       # no job goes to it any more
                    c.exited = True
                    if c in self._idle:
                        self._idle.remove(c)
                try:
                    if c.conn.poll(0):
                        self._message(c, c.conn.recv())
                except (EOFError, OSError):
                    pass
                if c in self._children:
                    self._died(c)
                continue
            if c not in self._children:   # replaced already (its exit seen first)
                continue
            try:
                msg = c.conn.recv()
            except (EOFError, OSError):
                self._died(c)
                continue
            self._message(c, msg)
        now = time.monotonic()
        for t in [t for t in self._launch_due if t <= now]:
            self._launch_due.remove(t)
            if not self._stopping:
                self._relaunch()
        for c in children:
            if not c.ready and c in self._children and now - c.born > START_TIMEOUT:
                log.error("process executor: child process %s did not import the app "
                          "within %.0f s; killing it", c.pid, START_TIMEOUT)
                self._replace(c)
                continue
            r = c.job
            if r is None:
                continue
            if c.deadline is not None and now >= c.deadline:
                r.timed_out = True
                log.warning("job %s %s timed out after %s s; killing its child process %s",
                            r.id, r.name, r.timeout, c.pid)
                self._end(c, fail={"type": "builtins.TimeoutError",
                                   "message": f"attempt exceeded its timeout of {r.timeout} s "
                                              f"(its child process {c.pid} was killed)",
                                   "traceback": None})
            elif c.kill_at is None and _cancelled(r):
                c.kill_at = now + self.cancel_grace
                c.cancel_id.value = r.id
            elif c.kill_at is not None and now >= c.kill_at:
                log.warning("job %s %s did not stop within %.1f s of its cancellation; "
                            "killing its child process %s", r.id, r.name,
                            self.cancel_grace, c.pid)
                self._end(c, cancel=True)
        for item in list(self._retired):
            c, since = item
            if not c.proc.is_alive() or now - since > 5.0:
                if c.proc.is_alive():
                    c.kill()
                c.conn.close()
                self._retired.remove(item)

    def _message(self, c: _Child, msg: tuple) -> None:
        if msg[0] == "ready":
            self._started(c, msg)
            self._free(c)
            return
        if msg[0] == "broken":
            log.error("process executor: a new child cannot import the app:\n%s", msg[1])
            self._replace(c)
            return
        _, _job_id, outcome, rss = msg
        r, c.job = c.job, None
        c.jobs += 1
        c.rss = rss
        if r is not None:
            self._deliver(r, outcome)
            self._freed()
        if ((self.max_tasks_per_child and c.jobs >= self.max_tasks_per_child)
                or (self.max_memory_per_child and rss > self.max_memory_per_child)):
            log.debug("retiring child %s after %d jobs (%.0f MiB)", c.pid, c.jobs, rss)
            self._replace(c, retire=True)
        else:
            self._free(c)

    def _died(self, c: _Child) -> None:
        r = c.job
        how = c.how_it_died()
        if r is not None:
            log.warning("job %s %s: its child process %s %s", r.id, r.name, c.pid, how)
            self._end(c, fail={"type": "pgqueue.ChildProcessDied",
                               "message": f"the child process (pid {c.pid}) running this "
                                          f"attempt {how}", "traceback": None})
        elif c.ready:
            log.warning("an idle child process %s %s; replacing it", c.pid, how)
            self._replace(c)
        else:
            log.error("process executor: a new child process %s %s before it was ready",
                      c.pid, how)
            self._replace(c)

    def _end(self, c: _Child, *, fail: dict[str, Any] | None = None,
             cancel: bool = False) -> None:
        """Kill ``c``, record its job's attempt as failed, free the slot, replace ``c``."""
        r, c.job = c.job, None
        self._replace(c)
        assert r is not None  # noqa: S101 - narrows a type; only a busy child is killed
        if not self.running.is_abandoned(r):
            if cancel:
                self.outcomes.exception(r, Cancelled(
                    f"job {r.id} was asked to stop and did not within {self.cancel_grace} s; "
                    "its process was killed"))
            else:
                retry = r.task.retry.retry if r.task is not None else True
                self.outcomes.failure(r, fail or {}, discard=not retry)
        self._freed()

    def _deliver(self, r: _Running, outcome: tuple) -> None:
        kind = outcome[0]
        if kind == "ok":
            r.ctx._replacement = outcome[2]   # ctx.replace called in the child, or None
            self.outcomes.success_json(r, outcome[1])
        elif kind == "committed":
            self.outcomes.committed(r)
        elif kind == "fenced":
            self.outcomes.exception(r, _Abandoned(owner=outcome[1]))
        elif not self.running.is_abandoned(r):
            _, err, discard, delay = outcome
            self.outcomes.failure(r, err, discard=discard, retry_delay=delay)
