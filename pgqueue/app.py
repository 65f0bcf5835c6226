"""App (configuration and task registry), Task, and enqueueing."""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import psycopg

from . import migrate, serialization
from ._options import (  # noqa: F401 - also imported from here by the CLI
    MAX_RUN_AT,
    MAX_UNIQUE_KEY_BYTES,
    MIN_RUN_AT,
    _seconds,
    _validate_debounce,
    _validate_key,
    _validate_options,
    _validate_task_name,
    _validate_unique_key,
    _validate_when,
    check_call_args,
)
from ._sql import q
from .errors import EnqueueError, SchemaError, UnknownTaskError
from .hooks import GLOBAL, Enqueue, Hooks, check_meta, meta_json
from .job import Job
from .retry import MAX_DELAY, NO_RETRY, RetryPolicy  # noqa: F401 - MAX_DELAY: importable here too

__all__ = ["App", "Task", "TaskCall"]

log = logging.getLogger("pgqueue")

F = TypeVar("F", bound=Callable[..., Any])

#: libpq environment variables that, when set, mean "connect with libpq's defaults".
LIBPQ_ENV = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE",
             "PGSERVICEFILE")

DEFAULT_MAX_ATTEMPTS = 20


def resolve_dsn(dsn: str | None) -> str:
    """The DSN to use: ``dsn``, else ``$PGQUEUE_DSN``, else libpq's environment
    (``PGHOST``, ``PGDATABASE``, ...), else the embedded server (started if needed)."""
    if dsn:
        return dsn
    env = os.environ.get("PGQUEUE_DSN")
    if env:
        return env
    if any(os.environ.get(k) for k in LIBPQ_ENV):
        return ""
    from . import embedded
    return embedded.ensure_running()


#: a pooled connection idle for longer than this is checked (one round trip) before use
POOL_CHECK_AFTER = 2.0
_handed_out_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_if_idle(conn: psycopg.Connection) -> None:
    """Pool ``check``: test a connection only when it was not handed out in the last
    ``POOL_CHECK_AFTER`` seconds (a server restart or an idle timeout breaks idle
    connections); one in steady use costs no extra round trip."""
    now = time.monotonic()
    last = _handed_out_at.get(conn)
    _handed_out_at[conn] = now
    if last is None or now - last > POOL_CHECK_AFTER:
        conn.execute("")


class App:
    """Configuration and task registry of one pgqueue application.

    :param dsn: libpq connection string or URL. ``None`` (default) falls back to
        ``$PGQUEUE_DSN``, then to libpq's environment (``PGHOST``, ``PGDATABASE``, ...),
        then to the embedded PostgreSQL (started on first use; needs the ``embedded``
        extra).
    :param pool_min_size: connections the app's pool keeps open (int, default 1).
    :param pool_max_size: most connections the pool opens (int, default 10). The pool
        serves ``task.enqueue()`` without a caller connection, job handles, and
        ``app.connection()`` for tasks; a worker's own bookkeeping never uses it.
    :param prepare_threshold: psycopg's ``prepare_threshold`` for the pool's connections
        (default 5). ``None`` never prepares statements, as a transaction pooler before
        PgBouncer 1.21 requires; a poll-only worker (``listen=False``) sets it for the
        app it runs.

    Nothing connects until first use. Example::

        app = pgqueue.App()

        @app.task(queue="emails", max_attempts=5)
        def send_welcome(user_id: int) -> None: ...

        send_welcome.enqueue(42)                    # own transaction, committed
        with psycopg.connect(dsn) as conn:          # the caller's transaction
            conn.execute("insert into users ...")
            send_welcome.using(connection=conn).enqueue(42)
    """

    def __init__(self, dsn: str | None = None, *, pool_min_size: int = 1,
                 pool_max_size: int = 10, prepare_threshold: int | None = 5):
        self._dsn = dsn
        self._conninfo: str | None = None
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.prepare_threshold = prepare_threshold
        self.tasks: dict[str, Task] = {}
        #: functions called with an :class:`~pgqueue.ErrorContext` for every failed attempt
        self.error_hooks: list[Callable[[Any], Any]] = []
        #: lifecycle hooks of this app (:mod:`pgqueue.hooks`); the process-wide
        #: ``pgqueue.hooks.GLOBAL`` ones run first
        self.hooks = Hooks(parent=GLOBAL)
        #: periodic jobs declared with :meth:`periodic`, by schedule name
        self.schedules: dict[str, Any] = {}
        #: queue limits declared with :meth:`queue`, by queue name
        self.queues: dict[str, Any] = {}
        self._pool = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<pgqueue.App tasks={len(self.tasks)}>"

    # -- connections -------------------------------------------------------------

    @property
    def conninfo(self) -> str:
        """The resolved connection string (starts the embedded server if that is the one)."""
        if self._conninfo is None:
            with self._lock:
                if self._conninfo is None:
                    self._conninfo = resolve_dsn(self._dsn)
        return self._conninfo

    @property
    def pool(self):
        """The app's ``psycopg_pool.ConnectionPool`` (autocommit connections), opened lazily."""
        if self._pool is None:
            from psycopg_pool import ConnectionPool
            conninfo = self.conninfo
            with self._lock:
                if self._pool is None:
                    self._pool = ConnectionPool(
                        conninfo, min_size=self.pool_min_size, max_size=self.pool_max_size,
                        kwargs={"autocommit": True,
                                "prepare_threshold": self.prepare_threshold},
                        open=True, name="pgqueue",
                        check=_check_if_idle)
        return self._pool

    @contextlib.contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """Borrow an autocommit connection from the app's pool (for tasks too).

        :param timeout: seconds to wait for a free connection (default: the pool's 30 s);
            ``psycopg_pool.PoolTimeout`` is raised after that.
        """
        with self.pool.connection(timeout=timeout) as conn:
            yield conn

    def close(self) -> None:
        """Close the pool. The app can be used again afterwards (a new pool opens)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- registry ------------------------------------------------------------------

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None,
             queue: str = "default", priority: int = 0,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS, timeout: float | None = None,
             retry: RetryPolicy | bool | None = None, transactional: bool = False,
             pass_context: bool = False,
             on_error: Callable[[Any], Any] | None = None,
             concurrency: int | None = None, executor: str | None = None) -> Any:
        """Register a function (``def`` or ``async def``) as a task.

        :param name: stored task name; default ``module.qualname`` of the function.
        :param queue: default queue (str, default ``"default"``).
        :param priority: default priority (int in -32768..32767, higher first; default 0).
        :param max_attempts: attempts before the job is discarded (int >= 1, default 20).
        :param timeout: seconds an attempt may run (float) or ``None`` for no limit. A
            timed-out ``async`` task is cancelled. A sync task's thread cannot be killed:
            its ``ctx.cancelled`` flag is set and the job stays owned until the function
            returns (so no second attempt runs beside it); the attempt is then recorded as
            a ``TimeoutError``.
        :param retry: a :class:`RetryPolicy` (default: 1 s base, 1 h cap) or ``False`` to
            discard on the first failure.
        :param transactional: run the task inside the job's own transaction: the task
            receives a :class:`JobContext` first, ``ctx.connection`` is that transaction,
            and its writes commit together with the job's completion, or not at all
            (exactly-once database effects).
        :param pass_context: pass a :class:`JobContext` as the first argument.
        :param on_error: called with an :class:`~pgqueue.ErrorContext` after each failed
            attempt of this task is recorded, before the app's :meth:`on_error` hooks; see
            there.
        :param concurrency: at most this many jobs of this task running at once across
            all workers and queues (int >= 1; default ``None``: no limit), enforced by
            the claim in the database (README "Flow control").
        :param executor: where a ``def`` task runs: ``"thread"`` (a thread of the worker),
            ``"process"`` (a child process of the worker: a timeout kills it, and a task
            holding the GIL cannot delay heartbeats; the app's module must be importable
            by the child, see the README) or ``None`` (default: the worker's
            ``executor``). ``async def`` tasks always run on the worker's event loop.
        :raises ValueError: if the name is already registered to another function, or
            ``executor`` is not one of these.
        """
        from .limits import check_concurrency
        concurrency = check_concurrency(concurrency, "concurrency")

        def deco(f: Callable[..., Any]) -> Task:
            t = Task(self, f, name=name, queue=queue, priority=priority,
                     max_attempts=max_attempts, timeout=timeout, retry=retry,
                     transactional=transactional, pass_context=pass_context or transactional,
                     executor=executor)
            t.on_error = on_error
            t.concurrency = concurrency
            existing = self.tasks.get(t.name)
            if existing is not None and existing.fn is not f:
                raise ValueError(f"task name {t.name!r} is already registered "
                                 f"to {existing.fn!r}; pass name= to tell them apart")
            self.tasks[t.name] = t
            return t
        return deco(fn) if fn is not None else deco

    def on_error(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Register ``fn`` (a decorator; returns ``fn``) to be called for every failed
        attempt of any task, with one :class:`~pgqueue.ErrorContext`: the job (id, task,
        queue, args, kwargs, attempt, max_attempts), the worker id, the exception and its
        formatted traceback, the new state and, when a retry is scheduled, its time
        (database clock).

        Hooks run in the worker process on one dedicated thread, in registration order,
        after the failure was committed (so the job's row already shows it); they never
        delay other jobs' bookkeeping. An exception raised by a hook is logged on
        ``pgqueue.worker`` and otherwise ignored. Hooks still queued at shutdown run
        for up to 10 s. Register hooks before the worker starts.
        """
        self.error_hooks.append(fn)
        return fn

    def around_attempt(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register a generator function ``fn(ctx)`` (a decorator; returns ``fn``) that
        wraps every attempt of this app's tasks in the worker: it receives the
        :class:`~pgqueue.JobContext`, yields once while the task runs, and sees the
        task's return value as the value of the ``yield`` or its exception raised there.
        It cannot change the outcome; an exception it raises is logged and ignored.
        See :mod:`pgqueue.hooks`.

        >>> @app.around_attempt
        ... def timed(ctx):
        ...     t0 = time.monotonic()
        ...     try:
        ...         yield
        ...     finally:
        ...         print(ctx.task, time.monotonic() - t0)
        """
        return self.hooks.add_around_attempt(fn)

    def on_enqueue(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``fn(enqueue)`` (a decorator; returns ``fn``), called in the producer
        before each enqueue's SQL with a :class:`pgqueue.hooks.Enqueue`; it may add keys
        to ``enqueue.meta``. A generator function is resumed after the SQL with the job
        id. See :mod:`pgqueue.hooks`."""
        return self.hooks.add_on_enqueue(fn)

    def on_outcome(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``fn(outcome)`` (a decorator; returns ``fn``), called in the worker
        with a :class:`pgqueue.hooks.Outcome` after each attempt's outcome (completed,
        retryable, discarded, cancelled) was committed, on the worker's hook thread.
        A fenced-out late outcome calls nothing. See :mod:`pgqueue.hooks`."""
        return self.hooks.add_on_outcome(fn)

    def periodic(self, target: Any = None, *, cron: str | None = None,
                 every: float | dt.timedelta | None = None, tz: str = "UTC",
                 name: str | None = None, catch_up: str = "latest", catch_up_limit: int = 100,
                 queue: str | None = None, priority: int | None = None) -> Any:
        """Declare a periodic job: ``target`` is enqueued at every slot of a cron
        expression (in time zone ``tz``) or of a fixed interval.

        Declarations are written to ``pgqueue.schedules`` when a worker of this app
        starts; any live worker then enqueues each slot exactly once, at the database's
        time (README "Periodic jobs"). Nothing is written here.

        :param target: a task, or a signature with its arguments (``report.s("daily")``).
            Omitted, ``periodic`` is a decorator to stack over ``@app.task``.
        :param cron: five-field cron expression (month and weekday names allowed) or an
            alias (``@hourly``, ``@daily``, ...). Exactly one of ``cron`` and ``every``.
        :param every: interval in seconds (at least 1) or a ``timedelta``; slots are
            aligned to the Unix epoch.
        :param tz: IANA time zone of ``cron`` (default ``"UTC"``).
        :param name: schedule name, unique in this app; default the task name.
        :param catch_up: slots missed while no worker ran or the schedule was paused:
            ``"latest"`` (default) enqueues the most recent once, ``"all"`` each of them
            up to ``catch_up_limit`` (the most recent ones), ``"none"`` none.
        :param queue: queue of each job; default the signature's, then the task's.
        :param priority: priority of each job; default the signature's, then the task's.
        :raises ScheduleError: (a ``ValueError``) bad expression, interval, time zone,
            policy, or a name already declared; ``TypeError`` for arguments the task's
            signature does not accept.
        :returns: ``target`` (the task, when used as a decorator).

        A task that has a ``schedule_slot`` parameter receives the slot (an aware UTC
        ``datetime``; ``None`` for a manual trigger).

        >>> @app.periodic(cron="0 9 * * MON-FRI", tz="Europe/Paris")
        ... @app.task
        ... def morning_report(): ...
        >>> app.periodic(cleanup.s(days=30), every=3600)
        """
        from .schedule import PeriodicTask, Schedule, ScheduleError, check_catch_up
        sched = Schedule(cron=cron, every=every, tz=tz)
        catch_up, catch_up_limit = check_catch_up(catch_up, catch_up_limit)
        checked = _validate_options(queue=queue, priority=priority)

        def declare(t: Any) -> Any:
            from .workflow import Signature
            if isinstance(t, Signature):
                task, args, kwargs = t.task, t.args, t.kwargs
                opts = t.options
            elif isinstance(t, Task):
                task, args, kwargs, opts = t, (), {}, {}
            elif callable(t):
                raise ScheduleError("app.periodic decorates a task: put @app.periodic(...) "
                                    "above @app.task")
            else:
                raise ScheduleError(f"app.periodic needs a task or a signature, got {t!r}")
            sname = name if name is not None else task.name
            if not isinstance(sname, str) or not 1 <= len(sname) <= 200 or "\x00" in sname:
                raise ScheduleError(f"schedule name must have 1 to 200 characters, got {sname!r}")
            if sname in self.schedules:
                raise ScheduleError(f"a schedule named {sname!r} is already declared in this "
                                    "app; pass name= to tell them apart")
            serialization.encode(list(args), "args")
            serialization.encode(dict(kwargs), "kwargs")
            # as the worker will call it: the slot comes as schedule_slot when taken
            takes_slot = "schedule_slot" in parameters(task.fn)
            task.check_args(args, {**kwargs, **({"schedule_slot": None} if takes_slot else {})},
                            where=f"schedule {sname!r}: ",
                            advice="declare arguments that bind to it")
            self.schedules[sname] = PeriodicTask(
                name=sname, task_name=task.name, args=tuple(args), kwargs=dict(kwargs),
                schedule=sched, queue=checked.get("queue", opts.get("queue")),
                priority=checked.get("priority", opts.get("priority")),
                catch_up=catch_up, catch_up_limit=catch_up_limit, signature=task)
            return t
        return declare(target) if target is not None else declare

    def queue(self, name: str, *, concurrency: int | None = None,
              rate_limit: tuple[int, float] | None = None,
              partition_concurrency: int | None = None,
              partition_rate_limit: tuple[int, float] | None = None) -> Any:
        """Declare the limits of queue ``name``; written to ``pgqueue.queues`` when a
        worker of this app starts, and enforced by every claim in the database, so they
        hold across all workers and hosts (README "Flow control").

        :param concurrency: at most this many jobs of the queue running at once (int >= 1).
        :param rate_limit: ``(count, period_seconds)``: at most ``count`` jobs started in
            any window of ``period_seconds`` (database clock), e.g. ``(20, 1.0)``.
        :param partition_concurrency: at most this many running jobs per partition key
            (enqueue option ``partition_key``); the keys are served in turn.
        :param partition_rate_limit: ``(count, period_seconds)`` per partition key.
        :raises ConfigurationError: an invalid limit, or the queue declared twice with
            different limits.
        :returns: the :class:`pgqueue.limits.QueueLimits` declared.

        ``None`` means no limit. A declaration replaces all the queue's limits at each
        worker start, unless an operator set them last (``pgqueue queues set``): the
        operator's setting wins until ``pgqueue queues set QUEUE --reset``.

        >>> app.queue("payments", rate_limit=(20, 1.0))
        >>> app.queue("reports", partition_concurrency=1)
        """
        from .limits import declare
        return declare(self, name, concurrency, rate_limit, partition_concurrency,
                       partition_rate_limit)

    def get_task(self, name: str) -> Task:
        """The registered task called ``name``. Raises :class:`UnknownTaskError`."""
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"no task named {name!r} in this app (registered: "
                f"{', '.join(sorted(self.tasks)) or 'none'}); check the --app module") from None

    def job(self, id: int) -> Job:
        """A handle on job ``id`` (no query until used)."""
        return Job(self, id)

    def batch(self, callback: Any = None, on_error: Any = None, name: str | None = None, *,
              max_steps: int | None = None) -> Any:
        """A new open :class:`~pgqueue.Batch`: members are added over any number of
        transactions (``batch.add(...)``, ``batch.using(connection=conn).add(...)``),
        and ``callback`` runs once when it is sealed and every member is terminal.

        No query until first used; see :mod:`pgqueue.batch`.

        :param callback: a signature; ``task.s()`` receives the members' results in the
            order they were added. ``None``: no callback.
        :param on_error: a signature run once if a member fails for good.
        :param name: a label (``pgqueue.workflows.name``).
        :param max_steps: the most steps the batch may reach; default 1,000,000.
        :raises EnqueueError: a callback or on_error that is not a signature.
        """
        from .batch import Batch
        return Batch(self, callback, on_error, name, max_steps=max_steps)

    def batch_by_id(self, id: int) -> Any:
        """The existing batch ``id`` (no query until used), to add to or seal it from
        any process."""
        from .batch import Batch
        return Batch(self, id=id)

    # -- by name (tasks defined elsewhere, e.g. in another service) -----------------

    def enqueue(self, task_name: str, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                *, unregistered: bool = False, **options: Any) -> Job:
        """Enqueue a job by task name, with the options of :meth:`Task.using`.

        Useful when the task's code lives in another service. A name registered here
        gets the task's defaults and its arguments are checked against the function, as
        ``task.enqueue`` does. A name this app does not register is refused when the app
        registers any task (a typo would otherwise wait forever for a worker), unless
        ``unregistered=True``; an app that registers no task enqueues any name.

        :param task_name: the task's registered name (str).
        :param args: positional arguments: a list or tuple (or another ordered iterable;
            not a str, bytes, dict or set, which would be taken apart). Default none.
        :param kwargs: keyword arguments, a dict with str keys (default none).
        :param unregistered: enqueue ``task_name`` even though this app does not register
            it: a task that a worker of another service (or language) runs. Default
            ``False``.
        :raises UnknownTaskError: (a ``LookupError``) the app registers tasks, not this
            one, and ``unregistered`` is false.
        :raises TypeError: ``args`` or ``kwargs`` of the wrong kind, or arguments that do
            not bind to the registered function.
        :raises EnqueueError: an invalid name or option. Every error is raised before
            any SQL, so a caller's transaction stays usable.
        :returns: a :class:`Job`; commits as :meth:`Task.enqueue` does (at once, or with
            the caller's ``connection=``).

        >>> app.enqueue("emails.send_welcome", [42], queue="emails", unregistered=True)
        """
        check_call_args(args, kwargs, f"app.enqueue({task_name!r}, [value])")
        _validate_task_name(task_name)
        t = self.tasks.get(task_name)
        if t is None:
            if self.tasks and not unregistered:
                raise UnknownTaskError(unknown_task_message(
                    self, task_name, "pass unregistered=True to enqueue a task that a "
                    "worker of another service runs"))
            t = Task(self, None, name=task_name)
        return t.using(**options).enqueue(*args, **(kwargs or {}))

    # -- schema --------------------------------------------------------------------

    def migrate(self, target: int | None = None) -> list[migrate.Migration]:
        """Apply pending schema migrations (each in its own transaction). Returns them."""
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            return migrate.apply(conn, target=target)

    def check_schema(self) -> int:
        """Raise :class:`SchemaError` unless the schema version matches this code."""
        with self.connection() as conn:
            return migrate.check_schema(conn)


def unknown_task_message(app: App, name: str, opt_out: str, where: str = "this app") -> str:
    """Why ``name`` is refused: not registered in ``app`` (called ``where``; with the
    closest registered names, or the registered ones), and ``opt_out``: how to enqueue
    it anyway."""
    import difflib
    names = sorted(app.tasks)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
    if close:
        known = f"did you mean {', '.join(repr(c) for c in close)}?"
    elif names:
        known = "registered: " + ", ".join(names[:10]) + (
            f", ... ({len(names)} in all)" if len(names) > 10 else "")
    else:
        known = "it registers no task: does the module import the ones that define them?"
    return (f"no task named {name!r} is registered in {where} ({known}); check the name, "
            f"or {opt_out}")


def _plain_params(sig: inspect.Signature | None) -> tuple[dict[str, int], int, bool, bool] | None:
    """``(position of each named parameter, count of required ones, whether it takes
    *args, whether it takes **kwargs)`` when the parameters are positional-or-keyword
    with the required ones first, then perhaps ``*args``, then perhaps ``**kwargs`` (the
    usual ``def f(a, b, c=1)``, and ``def f(*args, **kwargs)``); ``None`` for any other
    shape (positional-only or keyword-only parameters), which ``Signature.bind`` checks."""
    if sig is None:
        return None
    names: dict[str, int] = {}
    required = 0
    var_positional = var_keyword = False
    for i, p in enumerate(sig.parameters.values()):
        if p.kind is p.VAR_POSITIONAL:
            var_positional = True
            continue
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
            continue
        if p.kind is not p.POSITIONAL_OR_KEYWORD:
            return None
        if p.default is p.empty:
            if required != i:
                return None
            required += 1
        names[p.name] = i
    return names, required, var_positional, var_keyword


def _binds(plain: tuple[dict[str, int], int, bool, bool], n_positional: int,
           kwargs: dict[str, Any]) -> bool:
    """True when ``n_positional`` positional arguments and ``kwargs`` bind to the
    parameters ``plain`` describes; False means "let ``Signature.bind`` say why".
    Whether arguments bind depends only on their count and the keywords' names."""
    names, required, var_positional, var_keyword = plain
    if n_positional > len(names) and not var_positional:
        return False
    covered = n_positional
    for k in kwargs:
        i = names.get(k)
        if i is None:
            if var_keyword and isinstance(k, str):
                continue            # collected by **kwargs (whose names are str)
            return False            # unknown
        if i < n_positional:
            return False            # given twice
        if i < required:
            covered += 1
    return covered >= required


class Task:
    """A registered task. Call it like the function; enqueue it to run on a worker."""

    #: error hook of this task (``@app.task(on_error=...)``), or ``None``
    on_error: Callable[[Any], Any] | None = None
    #: most jobs of this task running at once across all workers, or ``None``
    concurrency: int | None = None

    def __init__(self, app: App, fn: Callable[..., Any] | None, *, name: str | None = None,
                 queue: str = "default", priority: int = 0,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, timeout: float | None = None,
                 retry: RetryPolicy | bool | None = None, transactional: bool = False,
                 pass_context: bool = False, executor: str | None = None):
        if executor not in (None, "thread", "process"):
            raise ValueError(f"executor must be 'thread', 'process' or None, got {executor!r}")
        if name is None:
            if fn is None:
                raise ValueError("a task needs a name or a function")
            name = f"{_module_name(fn)}.{fn.__qualname__}"
        _validate_task_name(name)
        self.app = app
        self.fn = fn
        self.name = name
        self.is_async = fn is not None and inspect.iscoroutinefunction(fn)
        if retry is None or retry is True:
            retry = RetryPolicy()
        elif retry is False:
            retry = NO_RETRY
        self.retry: RetryPolicy = retry
        self.timeout = timeout
        self.transactional = transactional
        self.pass_context = pass_context
        #: "thread", "process", or None (the worker's default for sync tasks)
        self.executor = executor
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.defaults = _validate_options(queue=queue, priority=priority, max_attempts=max_attempts)
        # Rows store max_attempts only when the enqueuer gives one (using(), a
        # signature's set()); null otherwise, and the worker that claims the job applies
        # its own declaration (DESIGN 5.2): a producer's copy never overrides it.
        self._max_attempts: int = self.defaults["max_attempts"]
        self.defaults["max_attempts"] = None
        self._signature: inspect.Signature | None | bool = False   # False: not looked up yet
        #: the signature's shape when _binds can check it (see _plain_params)
        self._plain_params: tuple[dict[str, int], int, bool, bool] | None = None
        if self.fn is not None:
            self.__doc__ = fn.__doc__
            self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        if self.fn is None:
            raise UnknownTaskError(f"task {self.name!r} has no function in this process")
        return self.fn(*args, **kwargs)

    def check_args(self, args: Iterable[Any], kwargs: dict[str, Any], *, inputs: int = 0,
                   where: str = "", note: str = "",
                   advice: str = "enqueue arguments that bind to it") -> None:
        """Check that ``args``/``kwargs`` bind to the task's function as a worker will call
        it: after the :class:`JobContext` (``pass_context``/``transactional``) and after
        ``inputs`` values a workflow step receives first (the previous result, ...).

        Runs no SQL. A task without a function here (enqueued by name for another
        service) or whose signature Python cannot read is not checked.

        :param inputs: values the worker passes before ``args`` (int, default 0).
        :param where: prefix of the message, e.g. ``"items[3]: "``.
        :param note: what the worker passes first, said after the signature.
        :param advice: what to do, ending the message.
        :raises TypeError: naming the task and what does not bind, e.g.
            ``tasks.add() missing a required argument: 'b'``.

        Example (``def add(a, b)`` registered as ``tasks.add``)::

            add.enqueue(5)   # TypeError: tasks.add() missing a required argument: 'b';
                             # the task takes (a, b): enqueue arguments that bind to it
        """
        sig = self._signature
        if sig is False:
            try:
                sig = inspect.signature(self.fn) if self.fn is not None else None
            except (TypeError, ValueError):     # a builtin or C callable: nothing to read
                sig = None
            self._signature = sig
            self._plain_params = _plain_params(sig)
        if sig is None:
            return
        if not isinstance(args, (tuple, list)):
            args = tuple(args)      # any iterable, as bind() unpacks it; counted below
        n_lead = int(self.pass_context) + inputs
        plain = self._plain_params
        if plain is not None and _binds(plain, n_lead + len(args), kwargs):
            return          # the common shape, checked without building a BoundArguments
        lead = (None,) * n_lead
        try:
            sig.bind(*lead, *args, **kwargs)
        except TypeError as e:
            passed = []
            if self.pass_context:
                passed.append("a JobContext")
            if note:
                passed.append(note)
            first = f" (the worker passes {' and '.join(passed)} first)" if passed else ""
            problem = str(e)
            # bind() names one problem; a misspelt keyword often hides behind a missing one
            if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
                unknown = [k for k in kwargs if k not in sig.parameters]
                if unknown and "unexpected keyword" not in problem:
                    problem += (f"; unexpected keyword argument{'s' if len(unknown) > 1 else ''} "
                                + ", ".join(repr(k) for k in unknown))
            raise TypeError(f"{where}{self.name}() {problem}; the task takes {sig}{first}: "
                            f"{advice}") from None

    @property
    def queue(self) -> str:
        return self.defaults["queue"]

    @property
    def priority(self) -> int:
        return self.defaults["priority"]

    @property
    def max_attempts(self) -> int:
        """The declared attempts, applied by a worker to jobs that did not set theirs."""
        return self._max_attempts

    def s(self, /, *args: Any, **kwargs: Any) -> Any:
        """A signature for workflows (Celery's ``task.s``): this task with these
        arguments; in a chain it receives the previous step's result first.
        Per-step options with ``.set(queue=..., priority=..., delay=...)``.
        See :mod:`pgqueue.workflow`."""
        from .workflow import Signature
        return Signature(self, args, kwargs)

    def si(self, /, *args: Any, **kwargs: Any) -> Any:
        """An immutable signature (Celery's ``task.si``): receives only these arguments,
        never a previous step's result."""
        from .workflow import Signature
        return Signature(self, args, kwargs, immutable=True)

    def signature(self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
                  immutable: bool = False, **options: Any) -> Any:
        """A signature with options given as keywords (Celery's ``task.signature``):
        ``add.signature((2, 2), queue="math", delay=5)``."""
        from .workflow import Signature
        return Signature(self, args, kwargs, immutable=immutable, **options)

    def using(self, *, connection: Any = None, delay: float | dt.timedelta | None = None,
              run_at: dt.datetime | None = None, queue: str | None = None,
              priority: int | None = None, max_attempts: int | None = None,
              unique_key: str | None = None,
              meta: dict[str, str] | None = None, partition_key: str | None = None,
              debounce: float | dt.timedelta | None = None, debounce_key: str | None = None,
              debounce_max: float | dt.timedelta | None = None) -> TaskCall:
        """Options for the next enqueue; returns an object with ``enqueue``/``aenqueue``.

        :param connection: where to insert: a psycopg ``Connection`` (inside its current
            transaction or savepoint; nothing is committed here; the job exists iff that
            transaction commits) or ``AsyncConnection`` (use ``aenqueue``). ``None``: the
            app's pool, committed at once.
        :param delay: seconds (float) or ``timedelta`` from now, on the database clock;
            must be >= 0.
        :param run_at: an aware ``datetime`` at which the job becomes due (not with ``delay``),
            between 0001-01-02 and 9999-12-31 UTC (:data:`MIN_RUN_AT`, :data:`MAX_RUN_AT`).
        :param queue: queue name (default: the task's).
        :param priority: int in -32768..32767, higher first (default: the task's).
        :param max_attempts: int >= 1 (default: the task's).
        :param unique_key: at most one unfinished job per key: enqueueing a key that an
            unfinished job (pending, scheduled, available, running, retryable) holds
            returns that job and changes nothing, not even a running one.
        :param meta: job metadata, a dict of str to str of at most
            :data:`pgqueue.hooks.MAX_META_BYTES` (4096) bytes as JSON text; the task
            reads it as ``ctx.meta``, SQL as ``pgqueue.jobs.meta``. On-enqueue hooks may
            add keys (tracing adds ``traceparent``). Default none.
        :param partition_key: the job's partition key (str, e.g. a tenant id): the queue's
            partition limits apply per key and a backlog is served key by key in turn.
        :param debounce: seconds (float or ``timedelta``) with ``debounce_key``: if a job
            with that key is still waiting to start, it is replaced (these arguments,
            due ``debounce`` seconds from now) instead of adding a job; the returned job
            is the one that will run. Not with ``delay``, ``run_at`` or ``unique_key``.
        :param debounce_key: the key of ``debounce`` (default: the task's name).
        :param debounce_max: seconds from the first call that a stream of calls may
            postpone the job (default ``10 * debounce``).
        :raises EnqueueError: (a ``ValueError``) for invalid options, before any SQL runs.
        """
        opts = dict(self.defaults)
        opts["meta"] = check_meta(meta)
        opts.update(_validate_options(queue=queue, priority=priority, max_attempts=max_attempts))
        opts["unique_key"] = _validate_unique_key(unique_key)
        opts["delay"], opts["run_at"] = _validate_when(delay, run_at)
        opts["partition_key"] = _validate_key(partition_key, "partition_key")
        opts.update(_validate_debounce(debounce, debounce_key, debounce_max, opts, self.name))
        return TaskCall(self, connection, opts)

    def enqueue(self, /, *args: Any, **kwargs: Any) -> Job:
        """Enqueue on the app's pool, committed at once. See :meth:`using` for options.

        :raises TypeError: the arguments do not bind to the function's signature
            (``add.enqueue(5)`` for ``def add(a, b)``), naming the task and the problem.
        :raises SerializationError: (a ``TypeError``) for arguments that tagged JSON
            cannot carry. Both before any SQL runs.

        >>> add.enqueue(2, 3)
        <Job 1 ?>
        """
        return TaskCall(self, None, self._plain_options()).enqueue(*args, **kwargs)

    async def aenqueue(self, /, *args: Any, **kwargs: Any) -> Job:
        """``enqueue`` for async code: runs on the app's pool in a thread (on Django's
        connection through ``sync_to_async`` when ``pgqueue.contrib.django`` is installed)."""
        import asyncio

        from ._connections import has_default_connection
        if has_default_connection():
            return await TaskCall(self, None, self._plain_options()).aenqueue(*args, **kwargs)
        return await asyncio.to_thread(self.enqueue, *args, **kwargs)

    def enqueue_many(self, items: Iterable[Any]) -> int:
        """Bulk enqueue on the app's pool, committed at once; see :meth:`TaskCall.enqueue_many`."""
        return TaskCall(self, None, self._plain_options()).enqueue_many(items)

    def _plain_options(self) -> dict[str, Any]:
        opts = dict(self.defaults)
        opts.update(unique_key=None, delay=None, run_at=None, meta=None, partition_key=None,
                    debounce=None, debounce_key=None, debounce_max=None)
        return opts


class TaskCall:
    """A task bound to enqueue options (the result of :meth:`Task.using`)."""

    __slots__ = ("connection", "options", "task")

    def __init__(self, task: Task, connection: Any, options: dict[str, Any]):
        self.task = task
        self.connection = connection
        self.options = options

    def _params(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        o = self.options
        params = {
            "task": self.task.name,
            "args": serialization.dumps(list(args), "args"),
            "kwargs": serialization.dumps(kwargs, "kwargs"),
            "queue": o["queue"], "priority": o["priority"], "max_attempts": o["max_attempts"],
            "unique_key": o["unique_key"], "delay": o["delay"], "run_at": o["run_at"],
            "meta": meta_json(o["meta"]),
            "partition_key": o["partition_key"], "debounce": o["debounce"],
            "debounce_key": o["debounce_key"], "debounce_max": o["debounce_max"],
        }
        self.task.check_args(args, kwargs)
        return params

    def _before(self, kind: str, params: dict[str, Any] | None) -> tuple[Any, Any]:
        """Run the on-enqueue hooks (none: ``(None, None)`` at the cost of two checks);
        their meta goes into ``params`` (when given) and the returned ``Enqueue``."""
        hooks = self.task.app.hooks
        if not hooks.enqueue and not GLOBAL.enqueue:
            return None, None
        o = self.options
        info = Enqueue(task=self.task.name, queue=o["queue"], meta=dict(o["meta"] or {}),
                       kind=kind)
        gens = hooks.before_enqueue(info)
        if params is not None:
            params["meta"] = meta_json(info.meta)
        return info, gens

    def enqueue(self, /, *args: Any, **kwargs: Any) -> Job:
        """Enqueue one job; returns its :class:`Job` handle.

        On a caller's connection the insert joins the caller's transaction (or savepoint)
        and nothing is committed here; the NOTIFY that wakes workers is delivered by
        PostgreSQL at that transaction's commit, never before. Without a connection it
        runs on the app's pool and commits at once.

        :raises TypeError: the arguments do not bind to the task's function (as
            ``add(5)`` for ``def add(a, b)``); :class:`SerializationError` (also a
            ``TypeError``): arguments that cannot be stored. Both before any SQL, so the
            caller's transaction stays usable.
        """
        params = self._params(args, kwargs)
        from ._connections import enqueue_one
        info, gens = self._before("job", params)
        if info is None:
            with _schema_errors():
                return Job(self.task.app, enqueue_one(self.task.app, self.connection, params))
        try:
            with _schema_errors():
                job_id = enqueue_one(self.task.app, self.connection, params)
        except BaseException as e:
            self.task.app.hooks.after_enqueue(gens, exc=e)
            raise
        info.job_ids.append(job_id)
        self.task.app.hooks.after_enqueue(gens, job_id=job_id)
        return Job(self.task.app, job_id)

    async def aenqueue(self, /, *args: Any, **kwargs: Any) -> Job:
        """Enqueue on a caller's async connection (its transaction), or a new one.

        Accepts a psycopg ``AsyncConnection``, a SQLAlchemy ``AsyncSession`` or
        ``AsyncConnection``, or a Django connection (run via ``sync_to_async``).
        """
        params = self._params(args, kwargs)
        from ._connections import aenqueue_one
        info, gens = self._before("job", params)
        try:
            with _schema_errors():
                job_id = await aenqueue_one(self.task.app, self.connection, params)
        except BaseException as e:
            self.task.app.hooks.after_enqueue(gens, exc=e)
            raise
        if info is not None:
            info.job_ids.append(job_id)
            self.task.app.hooks.after_enqueue(gens, job_id=job_id)
        return Job(self.task.app, job_id)

    def enqueue_many(self, items: Iterable[Any]) -> int:
        """Enqueue many jobs of this task in one round trip of COPY, streamed.

        :param items: an iterable (a generator is fine: rows are encoded and streamed
            one by one, never all held at once); each item is a tuple/list of positional
            arguments, a dict of keyword arguments, or a ``(args, kwargs)`` pair given as
            ``pgqueue.Args(*args, **kwargs)``.
        :returns: the number of jobs inserted (jobs whose ``unique_key`` was already
            held are skipped; with a unique key every item shares it, so at most one).
        :raises TypeError: on the first item whose arguments do not bind to the task's
            function (the message names the item, ``items[3]: ...``), and
            :class:`SerializationError` on the first item that cannot be stored. Nothing
            of the call is inserted: on a caller's connection the COPY runs in a
            savepoint that is rolled back, so the caller's transaction and its earlier
            writes stay usable; without a connection nothing is committed.

        Jobs with neither delay nor unique key go straight into ``pgqueue.jobs`` with
        ``COPY``; otherwise they are copied to a temporary table and inserted from there,
        so due times use the database clock. One NOTIFY per queue, at commit.
        """
        info, gens = self._before("many", None)
        o = self.options if info is None else {**self.options, "meta": info.meta}
        try:
            n = self._copy_many(items, o)
        except BaseException as e:
            self.task.app.hooks.after_enqueue(gens, exc=e)
            raise
        self.task.app.hooks.after_enqueue(gens)
        return n

    def _copy_many(self, items: Iterable[Any], o: dict[str, Any]) -> int:
        from ._connections import sync_connection
        if o["debounce"] is not None:
            raise EnqueueError("debounce replaces one waiting job: enqueue_many cannot use it")
        direct = o["delay"] is None and o["run_at"] is None and o["unique_key"] is None
        rows = _bulk_rows(self.task, items, o, direct)
        # The first item is checked before any SQL (a later bad one ends the COPY and
        # its savepoint); no item, no SQL.
        first = next(rows, None)
        if first is None:
            return 0
        rows = itertools.chain((first,), rows)
        with sync_connection(self.task.app, self.connection) as conn:
            with conn.transaction() if conn.autocommit else _savepoint(conn):
                if direct:
                    with conn.cursor().copy(q("copy_jobs")) as copy:
                        n = 0
                        for row in rows:
                            copy.write_row(row)
                            n += 1
                    return n
                conn.execute(q("bulk_stage_create"))
                conn.execute(q("bulk_stage_clear"))
                with conn.cursor().copy(q("bulk_stage_copy")) as copy:
                    for row in rows:
                        copy.write_row(row)
                (n,) = conn.execute(q("bulk_stage_insert")).fetchone()
                conn.execute(q("bulk_stage_clear"))
                return n


@contextlib.contextmanager
def _savepoint(conn: Any) -> Iterator[None]:
    """A savepoint in the caller's transaction (begun implicitly if none is open yet);
    rolled back on error, never committing anything of the caller's."""
    conn.execute("savepoint pgqueue_enqueue_many")
    try:
        yield
    except BaseException:
        with contextlib.suppress(psycopg.Error):   # a lost connection: the error below says so
            conn.execute("rollback to savepoint pgqueue_enqueue_many")
            conn.execute("release savepoint pgqueue_enqueue_many")
        raise
    conn.execute("release savepoint pgqueue_enqueue_many")


def parameters(fn: Any) -> Any:
    """The parameter names of ``fn`` (empty when Python cannot read its signature)."""
    try:
        return inspect.signature(fn).parameters if fn is not None else {}
    except (TypeError, ValueError):
        return {}


def _module_name(fn: Callable[..., Any]) -> str:
    """``fn.__module__``, except for a script's ``__main__``: the name a worker importing
    that file would see (``python -m pkg.mod`` -> ``pkg.mod``; ``python mod.py`` -> ``mod``),
    so a producer run as a script and ``pgqueue worker --app mod`` agree on task names."""
    mod = fn.__module__
    if mod != "__main__":
        return mod
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return spec.name
    path = getattr(main, "__file__", None)
    return os.path.splitext(os.path.basename(path))[0] if path else mod


@contextlib.contextmanager
def _schema_errors() -> Iterator[None]:
    """Turn "no such schema/function" from the driver into :class:`SchemaError`."""
    try:
        yield
    except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction,
            psycopg.errors.UndefinedTable) as e:
        raise SchemaError(
            f"the pgqueue schema is missing or older than this code "
            f"({str(e).strip().splitlines()[0]}); run `pgqueue migrate`") from e


class Args:
    """Positional and keyword arguments of one job, for ``enqueue_many``."""

    __slots__ = ("args", "kwargs")

    def __init__(self, /, *args: Any, **kwargs: Any):
        self.args = args
        self.kwargs = kwargs


def _bulk_rows(task: Task, items: Iterable[Any], o: dict[str, Any],
               direct: bool) -> Iterator[tuple[Any, ...]]:
    name = task.name
    meta = meta_json(o["meta"])
    for i, item in enumerate(items):
        if isinstance(item, Args):
            a, k = item.args, item.kwargs
        elif isinstance(item, dict):
            a, k = (), item
        elif isinstance(item, (tuple, list)):
            a, k = item, {}
        else:
            a, k = (item,), {}
        args = serialization.dumps(list(a), f"items[{i}].args")
        kwargs = serialization.dumps(k, f"items[{i}].kwargs")
        task.check_args(a, k, where=f"items[{i}]: ")
        if direct:
            yield (name, args, kwargs, o["queue"], o["priority"], o["max_attempts"],
                   o["partition_key"], "available", meta or "{}")
        else:
            yield (name, args, kwargs, o["queue"], o["priority"], o["delay"], o["run_at"],
                   o["max_attempts"], o["unique_key"], meta, o["partition_key"])


