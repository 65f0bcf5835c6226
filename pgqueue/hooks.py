"""Lifecycle hooks: around each attempt, at enqueue, on each outcome.

One mechanism serves users (an error tracker, an audit log, the current tenant) and
pgqueue's own observers (error hooks, Prometheus metrics, OpenTelemetry tracing). Hooks
are registered on an :class:`~pgqueue.App` (``app.hooks``) or, for instrumentation that
covers every app of the process, on :data:`GLOBAL` (run before the app's own).

========================  ===============  ==============================================
kind                      runs in          shape
========================  ===============  ==============================================
``around_attempt``        worker, around   a generator function ``hook(ctx)`` that yields
                          the task call    once: code before the ``yield`` runs before
                                           the task, the ``yield`` evaluates to the
                                           task's return value, or raises the task's
                                           exception there (``try``/``except``/
                                           ``finally`` around it). Same thread or event
                                           loop task as the call, so context variables
                                           set before the ``yield`` are seen by the task
``on_enqueue``            producer, before ``hook(enqueue)`` with an :class:`Enqueue`; may
                          the SQL          add to ``enqueue.meta``. A generator function
                                           yields once and resumes after the SQL with the
                                           job id (``None`` for ``enqueue_many`` and
                                           workflows: see ``enqueue.job_ids``), or the
                                           exception the SQL raised
``on_outcome``            worker, after    ``hook(outcome)`` with an :class:`Outcome`:
                          the outcome was  completed, retryable (a retry scheduled),
                          committed        discarded or cancelled, with the exception
========================  ===============  ==============================================

Hooks observe, they never decide: what a task returned or raised is recorded as if no
hook ran. An exception raised by a hook (or a hook that does not yield once) is logged on
``pgqueue.hooks`` (ERROR, with the job's id) and otherwise ignored; the job, its
outcome and the other hooks are unaffected. Several hooks of one kind run in
registration order, global ones first; around-attempt hooks nest (the first registered
is the outermost: it enters first and exits last). A late outcome fenced out by the
attempt token (the job was rescued from this worker meanwhile) calls no outcome hook: the
attempt that owns the job now reports its own.

Outcome hooks run on one dedicated thread per worker, in outcome order, so a slow hook
never delays other jobs' bookkeeping; those still queued at shutdown run for up to 10 s.
With no hook registered the worker pays one truthiness check per attempt.

Example (an audit trail and the tenant of the request, carried in ``meta``)::

    @app.on_enqueue
    def tenant(enqueue):
        enqueue.meta.setdefault("tenant", current_tenant())

    @app.around_attempt
    def as_tenant(ctx):
        token = TENANT.set(ctx.meta.get("tenant"))
        try:
            yield
        finally:
            TENANT.reset(token)

    @app.on_outcome
    def audit(outcome):
        log.info("job %s %s", outcome.job_id, outcome.state)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import EnqueueError
from .serialization import compact

if TYPE_CHECKING:  # pragma: no cover
    from .context import JobContext

__all__ = ["GLOBAL", "MAX_META_BYTES", "Enqueue", "Hooks", "Outcome", "check_meta"]

log = logging.getLogger("pgqueue.hooks")

#: most bytes of a job's ``meta`` as JSON text (constraint ``jobs_meta_valid``)
MAX_META_BYTES = 4096

#: ``ctx.meta`` of a job without metadata (read-only, shared)
EMPTY_META: Mapping[str, str] = MappingProxyType({})


def check_meta(meta: Any, what: str = "meta") -> dict[str, str] | None:
    """``meta`` as a plain dict after checking it, or ``None`` for ``None``.

    :raises EnqueueError: not a mapping of ``str`` to ``str`` (valid UTF-8, no NUL), or
        more than :data:`MAX_META_BYTES` bytes as JSON text.
    """
    if meta is None:
        return None
    if not isinstance(meta, Mapping):
        raise EnqueueError(f"{what} must be a dict of str to str, got {type(meta).__name__}")
    out = {}
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise EnqueueError(f"{what} must map str to str, got {k!r}: {v!r}")
        if "\x00" in k or "\x00" in v:
            raise EnqueueError(f"{what} keys and values cannot contain NUL ({k!r})")
        out[k] = v
    try:
        size = len(meta_json(out).encode("utf-8"))
    except UnicodeEncodeError:
        raise EnqueueError(f"{what} must be valid UTF-8 (a lone surrogate?)") from None
    if size > MAX_META_BYTES:
        raise EnqueueError(f"{what} is {size} bytes as JSON text, more than the "
                           f"{MAX_META_BYTES} allowed: keep ids and context in it, not data")
    return out


def meta_json(meta: Mapping[str, str] | None) -> str | None:
    """The JSON text stored for ``meta`` (``None`` for none or empty)."""
    if not meta:
        return None
    return compact(meta)


@dataclasses.dataclass
class Enqueue:
    """One enqueue call, as an on-enqueue hook sees it (before the SQL).

    :ivar task: the task name (str); for a workflow its first step's task.
    :ivar queue: the queue (str); for a workflow its first step's queue.
    :ivar meta: the metadata the job(s) will carry (a mutable ``dict`` of str to str):
        add keys here. For a workflow: the workflow's meta, inherited by every step.
    :ivar kind: ``"job"``, ``"many"`` (``enqueue_many``) or ``"workflow"``.
    :ivar job_ids: after the SQL: the new job ids (``[]`` for ``enqueue_many``, which
        returns only a count).
    :ivar workflow_id: after the SQL of a workflow, its id.
    """

    task: str
    queue: str | None
    meta: dict[str, str]
    kind: str = "job"
    job_ids: list[int] = dataclasses.field(default_factory=list)
    workflow_id: int | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The recorded outcome of one attempt, as an on-outcome hook sees it (after commit).

    :ivar ctx: the attempt's :class:`~pgqueue.JobContext` (``job_id``, ``task``,
        ``queue``, ``attempt``, ``max_attempts``, ``meta``, ``workflow_id``).
    :ivar state: ``"completed"``, ``"retryable"`` (another attempt is scheduled),
        ``"discarded"`` (no more attempts) or ``"cancelled"``.
    :ivar exception: the exception of a failed attempt (a stand-in ``TimeoutError`` or
        ``RuntimeError`` where there was no Python exception: a sync task's timeout, a
        task unknown here), ``None`` on success.
    :ivar error: the stored error entry (``type``, ``message``, ``traceback``) of a
        failure, ``None`` on success.
    :ivar duration: seconds the attempt ran (worker clock).
    :ivar retry_at: when the retry is due (database clock) for ``retryable``, else
        ``None``.
    """

    ctx: JobContext
    state: str
    exception: BaseException | None = None
    error: dict[str, Any] | None = None
    duration: float = 0.0
    retry_at: dt.datetime | None = None

    @property
    def job_id(self) -> int:
        return self.ctx.job_id

    @property
    def task(self) -> str:
        return self.ctx.task

    @property
    def queue(self) -> str:
        return self.ctx.queue

    @property
    def attempt(self) -> int:
        return self.ctx.attempt

    @property
    def failed(self) -> bool:
        """``True`` for every state but ``completed``."""
        return self.state != "completed"


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class Hooks:
    """The hooks of one app (``app.hooks``), or the process-wide :data:`GLOBAL` ones.

    Register with the decorators on :class:`~pgqueue.App` (``@app.around_attempt``,
    ``@app.on_enqueue``, ``@app.on_outcome``) or the methods here; :meth:`remove` takes a
    hook out again. Register before the worker starts.
    """

    def __init__(self, parent: Hooks | None = None):
        self.parent = parent
        self.around: list[Callable[[JobContext], Iterator[Any]]] = []
        self.enqueue: list[Callable[[Enqueue], Any]] = []
        self.outcome: list[Callable[[Outcome], Any]] = []
        self._lock = threading.Lock()

    # -- registration --------------------------------------------------------------

    def add_around_attempt(self, fn: Callable[[JobContext], Iterator[Any]]) -> Any:
        if not inspect.isgeneratorfunction(fn) and not callable(fn):
            raise TypeError(f"an around-attempt hook is a generator function, got {fn!r}")
        with self._lock:
            self.around = [*self.around, fn]
        return fn

    def add_on_enqueue(self, fn: Callable[[Enqueue], Any]) -> Any:
        with self._lock:
            self.enqueue = [*self.enqueue, fn]
        return fn

    def add_on_outcome(self, fn: Callable[[Outcome], Any]) -> Any:
        with self._lock:
            self.outcome = [*self.outcome, fn]
        return fn

    def remove(self, fn: Any) -> None:
        """Unregister ``fn`` from every kind it was registered as (no error if none)."""
        with self._lock:
            self.around = [h for h in self.around if h != fn]
            self.enqueue = [h for h in self.enqueue if h != fn]
            self.outcome = [h for h in self.outcome if h != fn]

    # -- what applies (global first) -----------------------------------------------

    def _all(self, kind: str) -> list[Any]:
        mine = getattr(self, kind)
        p = self.parent
        if p is None:
            return mine
        theirs = getattr(p, kind)
        return [*theirs, *mine] if theirs else mine

    @property
    def has_outcome(self) -> bool:
        return bool(self.outcome or (self.parent is not None and self.parent.outcome))

    def outcome_hooks(self) -> list[Callable[[Outcome], Any]]:
        return self._all("outcome")

    # -- around each attempt ---------------------------------------------------------

    def call(self, ctx: JobContext, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` inside the around-attempt hooks (sync tasks)."""
        if not self.around and (self.parent is None or not self.parent.around):
            return fn(*args, **kwargs)
        gens = self._enter(ctx)
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:
            _exit(gens, ctx, None, e)
            raise
        _exit(gens, ctx, result, None)
        return result

    async def acall(self, ctx: JobContext, fn: Callable[..., Any], args: Any, kwargs: Any,
                    timeout: float | None) -> Any:
        """``await fn(*args, **kwargs)`` (within ``timeout`` s) inside the hooks."""
        import asyncio
        if not self.around and (self.parent is None or not self.parent.around):
            coro = fn(*args, **kwargs)
            return await (asyncio.wait_for(coro, timeout) if timeout else coro)
        gens = self._enter(ctx)
        try:
            coro = fn(*args, **kwargs)
            result = await (asyncio.wait_for(coro, timeout) if timeout else coro)
        except BaseException as e:
            _exit(gens, ctx, None, e)
            raise
        _exit(gens, ctx, result, None)
        return result

    def _enter(self, ctx: JobContext) -> list[Any]:
        gens = []
        for hook in self._all("around"):
            try:
                gen = hook(ctx)
                if not inspect.isgenerator(gen):
                    raise TypeError("an around-attempt hook must be a generator function "
                                    "that yields once")
                next(gen)
            except StopIteration:
                log.error("around-attempt hook %s returned without yielding for job %s",
                          _name(hook), ctx.job_id, extra={"job_id": ctx.job_id})
                continue
            except Exception:  # noqa: BLE001 - a hook never loses a job
                log.exception("around-attempt hook %s raised before job %s",
                              _name(hook), ctx.job_id, extra={"job_id": ctx.job_id})
                continue
            gens.append((hook, gen))
        return gens

    # -- at enqueue ------------------------------------------------------------------

    def before_enqueue(self, info: Enqueue) -> list[Any] | None:
        """Run the on-enqueue hooks (producer side, before the SQL); returns what
        :meth:`after_enqueue` resumes, or ``None`` when no hook is registered.
        Keys a hook adds that break the bound of ``meta`` are dropped (logged)."""
        hooks = self._all("enqueue")
        if not hooks:
            return None
        before = dict(info.meta)
        gens = []
        for hook in hooks:
            try:
                out = hook(info)
                if inspect.isgenerator(out):
                    next(out)
                    gens.append((hook, out))
            except StopIteration:
                continue
            except Exception:  # noqa: BLE001
                log.exception("on-enqueue hook %s raised for task %s", _name(hook), info.task)
        try:
            info.meta = check_meta(info.meta, "meta after the on-enqueue hooks") or {}
        except EnqueueError as e:
            log.error("%s; enqueueing without the hooks' additions", e)
            info.meta = before
        return gens

    def after_enqueue(self, gens: list[Any] | None, exc: BaseException | None = None,
                      job_id: int | None = None) -> None:
        """Resume generator on-enqueue hooks with the job id, or throw ``exc`` in."""
        if not gens:
            return
        for hook, gen in reversed(gens):
            try:
                if exc is None:
                    gen.send(job_id)
                else:
                    gen.throw(exc)
            except StopIteration:
                continue
            except BaseException as e:  # noqa: BLE001
                if e is exc:
                    continue
                log.exception("on-enqueue hook %s raised after the enqueue", _name(hook))
                continue
            gen.close()
            log.error("on-enqueue hook %s yielded more than once", _name(hook))


def _exit(gens: list[Any], ctx: JobContext, result: Any, exc: BaseException | None) -> None:
    """Resume entered around-attempt hooks, innermost first."""
    for hook, gen in reversed(gens):
        try:
            if exc is None:
                gen.send(result)
            else:
                gen.throw(exc)
        except StopIteration:
            continue
        except BaseException as e:  # noqa: BLE001 - a hook never changes the outcome
            if e is exc:
                continue    # re-raised as it should be
            log.exception("around-attempt hook %s raised after job %s", _name(hook),
                          ctx.job_id, extra={"job_id": ctx.job_id})
            continue
        gen.close()
        log.error("around-attempt hook %s yielded more than once for job %s", _name(hook),
                  ctx.job_id, extra={"job_id": ctx.job_id})


#: hooks of every app in this process (instrumentation), run before each app's own
GLOBAL = Hooks()
