"""The child side of the process executor: imports the app, runs one job at a time.

A child is started by the fork server (or spawned) and never forked from the worker
itself. It imports the app by its module spec (``module[:attr]``), so the worker's
objects never cross the process boundary; a job arrives as its id, attempt, task name
and the JSON text of its arguments, and leaves as the JSON text of its result or an
error entry. The child dies with the worker: it
exits when its pipe closes, and on Linux it also asks the kernel for SIGKILL when
its parent (the fork server, which exits with the worker) goes away. A cancellation
request arrives as the job's id in a shared integer, which a thread of the child
checks every ``CANCEL_POLL`` seconds while a job runs.

SQL: for a transactional task, the task's own transaction on a connection of its own,
ending with ``complete_one`` (``job_owner`` when fenced).
"""

from __future__ import annotations

import ctypes
import importlib
import os
import select
import signal
import sys
import threading
import time
import traceback
import uuid
from types import MappingProxyType
from typing import Any

import psycopg

from ... import serialization
from ..._sql import q
from ...app import App
from ...context import JobContext
from ..outcomes import (
    _Abandoned,
    _error_dict,
    _result_payload,
    call_args,
    classify,
    completion,
)
from ..running import _Running


#: seconds between two looks at the worker's cancellation request while a job runs
CANCEL_POLL = 0.05


def load_app(spec: str) -> App:
    """The App named by ``module[:attr]``; without ``attr``, the module's ``app`` or its
    only App instance.

    :raises ImportError: the module cannot be imported.
    :raises LookupError: no App found there.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if attr:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, App):
            return obj
    elif isinstance(getattr(module, "app", None), App):
        return module.app
    else:
        apps = {id(v): v for v in vars(module).values() if isinstance(v, App)}
        if len(apps) == 1:
            return next(iter(apps.values()))
    raise LookupError(f"{spec!r} names no single pgqueue.App")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001, S110 - the pipe's EOF still ends the child
            pass


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(conn: Any, app_spec: str, conninfo: str, cancel_id: Any) -> None:
    """The child's life: report ``("ready", pid)`` (or ``("broken", text)``), then run
    each ``("job", fields)`` and answer ``("done", job_id, outcome, rss_mib)``; exit on
    ``("exit",)`` or when the pipe closes. ``cancel_id`` (a shared integer) holds the id
    of a job the worker asks to stop."""
    _die_with_parent()
    # The worker decides when children stop: a terminal's SIGINT goes to the whole
    # process group, and must not kill a job the worker is handing back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        app = load_app(app_spec)
        app._conninfo = conninfo
    except BaseException:  # noqa: BLE001 - told to the worker, which refuses to start
        conn.send(("broken", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    current: list[JobContext | None] = [None]

    # The worker's end of the pipe lives only in the worker: when it hangs up, the
    # worker is gone. The child's parent is the fork server, which every child keeps
    # alive, so PR_SET_PDEATHSIG alone would let a busy child run on, and its job run
    # twice once rescued.
    hangup = select.POLLHUP | getattr(select, "POLLRDHUP", 0)
    worker = select.poll()
    worker.register(conn.fileno(), hangup)

    def watch_cancel() -> None:
        while True:
            time.sleep(CANCEL_POLL)
            if any(ev & hangup for _, ev in worker.poll(0)):
                os.kill(os.getpid(), signal.SIGKILL)
            ctx = current[0]
            if ctx is not None and cancel_id.value == ctx.job_id:
                ctx._cancel.set()

    threading.Thread(target=watch_cancel, name="pgqueue-child-cancel", daemon=True).start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return                   # the worker is gone
        if msg[0] != "job":
            return
        job = msg[1]
        outcome = run(app, job, current, conninfo)
        conn.send(("done", job["id"], outcome, rss_mib()))


def run(app: App, job: dict[str, Any], current: list, conninfo: str) -> tuple:
    """Run one job; return its outcome: ``("ok", result_json)``, ``("committed",)``,
    ``("fenced", owner)`` or ``("fail", error, discard, retry_delay)``."""
    task = app.tasks.get(job["task"])
    if task is None or task.fn is None:
        return ("fail", {"type": "pgqueue.UnknownTask",
                         "message": f"task {job['task']!r} is not registered in the app "
                                    "imported by the worker's child process",
                         "traceback": None}, False, None)
    ctx = JobContext(job_id=job["id"], task=job["task"], queue=job["queue"],
                     attempt=job["attempt"], max_attempts=job["max_attempts"],
                     worker_id=uuid.UUID(job["worker_id"]), app=app,
                     meta=MappingProxyType(job["meta"] or {}), workflow_id=job["workflow_id"],
                     waited=job["waited"])
    if job["cancel"]:
        ctx._cancel.set()
    r = _Running(id=job["id"], attempt=job["attempt"], task=task, name=job["task"],
                 queue=job["queue"], args=job["args"], kwargs=job["kwargs"], ctx=ctx,
                 timeout=None, inputs=job["inputs"])
    current[0] = ctx
    try:
        args, kwargs = call_args(r)
        if task.transactional:
            return _transactional(r, args, kwargs, conninfo, job["worker_id"])
        result = app.hooks.call(ctx, task.fn, args, kwargs)
        if ctx._replacement is not None:   # ctx.replace: the return value is ignored
            result = None
        try:
            return ("ok", serialization.dumps(result, "result"), ctx._replacement)
        except Exception as e:  # noqa: BLE001 - an unstorable result fails the job for good
            return ("fail", _error_dict(e), True, None)
    except _Abandoned as e:
        return ("fenced", e.owner)
    except BaseException as e:  # noqa: BLE001 - every failure is recorded
        err, discard, delay = classify(r, e)
        return ("fail", err, discard, delay)
    finally:
        current[0] = None


def _transactional(r: _Running, args: list, kwargs: dict, conninfo: str,
                   worker_id: str) -> tuple:
    with psycopg.connect(conninfo, autocommit=True,
                         application_name="pgqueue-worker:child") as conn, conn.transaction():
        r.ctx.connection = conn
        result = r.ctx.app.hooks.call(r.ctx, r.task.fn, args, kwargs)  # type: ignore[union-attr]
        payload = _result_payload(result)
        name, params = completion(uuid.UUID(worker_id), r, payload)
        row = conn.execute(q(name), params).fetchone()
        if row is None or row[0] is None:
            # fenced out: roll the task's writes back, say who owns the job now
            raise _Abandoned(owner=conn.execute(q("job_owner"), {"id": r.id}).fetchone())
    return ("committed",)
