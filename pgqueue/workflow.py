"""Workflows: chains, groups, chords and DAGs of tasks, enqueued in one transaction.

The vocabulary follows Celery's canvas: a *signature* is a task with its arguments and
options (``add.s(2, 2)``), and signatures combine into

- ``chain(a, b, c)``: run one after the other; each step receives the previous step's
  result as its **first** positional argument (after the ``JobContext`` for tasks with
  ``pass_context``), unless it is immutable (``task.si(...)``);
- ``group(a, b, c)``: run in parallel; the group's result is the list of the members'
  results, in member order;
- ``chord(group, callback)``: a group, then a callback that receives the list of the
  group's results in member order;
- ``Workflow()``: a general DAG of named steps with ``depends_on``.

They nest: a chord inside a chain, a group of chains, ``chain(a, group(b, c), d)`` where
``d`` receives ``[result_b, result_c]``. A group's result is flat: a member that is itself
a group (or a chain ending in one) contributes each of its results, as in Celery, which
flattens nested groups.

Storage and guarantees
----------------------
Enqueueing writes one ``pgqueue.workflows`` row, one ``pgqueue.jobs`` row per step and one
``pgqueue.job_dependencies`` row per edge, in a single statement
(``pgqueue.enqueue_workflow``), so a workflow exists entirely or not at all. A step that
waits is ``pending`` and counts its unsatisfied edges in ``deps_pending``. The
transaction that records a step's terminal state also (trigger ``jobs_workflow_fan_in``)
marks each of its edges satisfied once, decrements each dependent, and makes a dependent
whose counter reaches zero ``available`` in the same commit, with a NOTIFY. There is no
leader and no polling resolver; a callback becomes runnable exactly once even when its
members finish at the same instant, retry, run twice, or finish before the workflow's
own transaction commits. Retries do not fire dependents (``retryable`` is not terminal).

A step reads its inputs (the results it depends on) from the database when it starts;
results are not copied into other rows.

Failures
--------
When a step ends ``discarded`` (attempts exhausted) or ``cancelled``, the workflow
becomes ``failed`` (``failed_job_ids`` / ``failures`` name the step), every pending step
downstream that needs success becomes ``cancelled`` with an error entry of type
``pgqueue.DependencyFailed`` naming it, and the error callback (``on_error=``), if any,
becomes available exactly once and receives ``(failed_job_id, failure)`` first, where
``failure`` is ``{"job_id", "task", "step", "state", "at", "error"}`` (``error`` is the
step's last error entry, or ``None`` for a step cancelled while queued). When the
workflow completes without failure, the error callback becomes ``cancelled`` (an errors
entry of type ``pgqueue.NotNeeded`` says why). This differs from Celery's ``link_error``
signature ``(request, exc, traceback)``: pgqueue passes data that survives JSON.

A step with ``any_outcome=True`` runs once all its dependencies are terminal, whatever
their outcome, and receives instead of results a list of outcomes, one per dependency in
order: ``{"job_id": ..., "state": "completed" | "discarded" | "cancelled", "result": ...,
"error": ...}``. The workflow is still marked ``failed`` when one of them failed.

Edge sizes: a group of one and a chain of one are ordinary workflows. A chord whose
header is an empty group runs its callback at once with ``[]`` (as Celery 5 does); an
empty group or chain on its own raises :class:`~pgqueue.EnqueueError` (a ``ValueError``).

Example::

    from pgqueue import chain, chord, group

    flow = chain(fetch.s(url), chord([parse.s(), index.s()], merge.s()), report.si())
    handle = flow.enqueue(on_error=alert.s())            # committed at once
    handle.result(timeout=60)

    with psycopg.connect(dsn) as conn:                    # in the caller's transaction
        conn.execute("insert into orders ...")
        handle = flow.using(connection=conn).enqueue()    # exists iff conn commits

Plain SQL answers "where is my workflow"::

    select * from pgqueue.workflow_steps where workflow_id = 42 order by job_id;
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from . import serialization
from ._options import _validate_options, _validate_when, check_call_args
from .hooks import GLOBAL, Enqueue, check_meta, meta_json
from .errors import EnqueueError, PgQueueError, ResultTimeout
from .job import Job, result_deadline

if TYPE_CHECKING:  # pragma: no cover
    from .app import App, Task

__all__ = [
    "Signature",
    "Workflow",
    "WorkflowCall",
    "WorkflowFailed",
    "WorkflowHandle",
    "chain",
    "chord",
    "group",
]

ENQUEUE_SQL = ("select workflow_id, job_ids from pgqueue.enqueue_workflow("
               "%(steps)s::jsonb, %(name)s, %(result_steps)s::integer[], %(result_is_list)s, "
               "%(meta)s::jsonb)")

_OPTIONS = ("queue", "priority", "max_attempts", "delay", "name", "any_outcome", "meta")


class WorkflowFailed(PgQueueError):
    """The workflow ended ``failed`` or ``cancelled`` (raised by :meth:`WorkflowHandle.result`).

    :ivar workflow_id: the workflow's id.
    :ivar state: ``"failed"`` or ``"cancelled"``.
    :ivar failures: list of dicts, one per step whose failure failed the workflow:
        ``job_id``, ``task``, ``step``, ``state``, ``at``, ``error``.
    """

    def __init__(self, workflow_id: int, state: str, failures: list[dict[str, Any]]):
        self.workflow_id = workflow_id
        self.state = state
        self.failures = failures
        named = ", ".join(f"job {f.get('job_id')} ({f.get('task')}) {f.get('state')}"
                          for f in failures[:5]) or "no step failure recorded"
        super().__init__(f"workflow {workflow_id} {state}: {named}")


# -- building blocks ------------------------------------------------------------------------

class _Canvas:
    """What every workflow shape has: enqueue, using, on_error, ``|``."""

    _error: Signature | None = None

    def on_error(self, callback: Signature) -> _Canvas:
        """Set the error callback (Celery's ``link_error``); returns ``self``."""
        if not isinstance(callback, Signature):
            raise EnqueueError(f"on_error needs a task signature (task.s(...)), got {callback!r}")
        self._error = callback
        return self

    def __or__(self, other: Any) -> chain:
        if not isinstance(other, _Canvas):
            return NotImplemented
        return chain(self, other)

    def using(self, *, connection: Any = None, name: str | None = None,
              on_error: Signature | None = None,
              meta: dict[str, str] | None = None) -> WorkflowCall:
        """Options for enqueueing; returns an object with ``enqueue``/``aenqueue``.

        :param connection: a psycopg ``Connection`` (or Django connection, SQLAlchemy
            ``Session``/``Connection`` on psycopg 3): every row is inserted inside the
            caller's current transaction and nothing is committed here; the workflow
            exists iff that transaction commits, and no step runs before. ``None``: the
            app's pool, committed at once.
        :param name: a label stored in ``pgqueue.workflows.name``.
        :param on_error: error callback signature (overrides :meth:`on_error`).
        :param meta: metadata of every step (a dict of str to str, see
            :meth:`pgqueue.Task.using`), except steps that set their own with
            ``.set(meta=...)``. On-enqueue hooks run once for the workflow and their
            additions (the trace context) go to every step.
        """
        return WorkflowCall(self, connection, name,
                            on_error if on_error is not None else self._error, meta)

    def enqueue(self, *, name: str | None = None, on_error: Signature | None = None,
                meta: dict[str, str] | None = None) -> WorkflowHandle:
        """Enqueue on the app's pool, committed at once. See :meth:`using`.

        :returns: a :class:`WorkflowHandle`.
        :raises EnqueueError: (a ``ValueError``) for an invalid shape or option,
            :class:`~pgqueue.SerializationError` (a ``TypeError``) for arguments JSON
            cannot carry, and ``TypeError`` for a step whose arguments do not bind to its
            task's function, before any SQL runs.
        """
        return self.using(name=name, on_error=on_error, meta=meta).enqueue()

    async def aenqueue(self, *, name: str | None = None, on_error: Signature | None = None,
                       meta: dict[str, str] | None = None) -> WorkflowHandle:
        """``enqueue`` for async code, on a new autocommit connection."""
        return await self.using(name=name, on_error=on_error, meta=meta).aenqueue()

    # compile: returns (tail step indexes, whether the result is a list)
    def _emit(self, plan: _Plan, feeds: list[int], feeds_list: bool,
              after: list[int]) -> tuple[list[int], bool]:  # pragma: no cover - abstract
        raise NotImplementedError


class Signature(_Canvas):
    """A task with its arguments and per-step options (Celery's ``signature``).

    Built with ``task.s(*args, **kwargs)`` (receives the previous step's result first) or
    ``task.si(*args, **kwargs)`` (immutable: receives only its own arguments).

    Options (``.set(...)`` or keyword arguments of ``Signature(...)``/``task.signature``):

    - ``queue`` (str), ``priority`` (int, -32768..32767), ``max_attempts`` (int >= 1):
      as for :meth:`Task.using`; default the task's;
    - ``delay``: seconds (float) or ``timedelta``, counted from the moment the step's
      dependencies are satisfied (from enqueue for a first step), like Celery's
      ``countdown`` on a chained task;
    - ``name``: the step's name, shown in ``pgqueue.workflow_steps.step``;
    - ``any_outcome``: run once every dependency is terminal whatever its outcome and
      receive their outcomes (see the module docstring).

    Example: ``resize.s(width=200).set(queue="images", priority=5)``.
    """

    __slots__ = ("args", "immutable", "kwargs", "options", "task")

    def __init__(self, task: Task, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None,
                 *, immutable: bool = False, **options: Any):
        # A Task (pgqueue.app, a layer above) without importing it: a registered task
        # has a name, an app, and its function.
        if not (isinstance(getattr(task, "name", None), str) and hasattr(task, "app")
                and hasattr(task, "fn")):
            raise EnqueueError(f"a signature needs a registered task, got {task!r}")
        check_call_args(args, kwargs, f"{task.name}.signature([value])")
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        self.options: dict[str, Any] = {}
        self.set(**options)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task.name}.{'si' if self.immutable else 's'}({', '.join(parts)})"

    def set(self, **options: Any) -> Signature:
        """Update this signature's options in place and return it (as Celery's ``set``).

        :raises EnqueueError: an unknown option or an invalid value.
        """
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise EnqueueError(f"unknown signature option(s) {', '.join(sorted(unknown))}; "
                               f"known: {', '.join(_OPTIONS)}")
        o = dict(options)
        checked = _validate_options(queue=o.get("queue"), priority=o.get("priority"),
                                    max_attempts=o.get("max_attempts"))
        if o.get("delay") is not None:
            checked["delay"], _ = _validate_when(o["delay"], None)
        if "name" in o and o["name"] is not None:
            if not isinstance(o["name"], str) or not o["name"] or "\x00" in o["name"]:
                raise EnqueueError(f"step name must be a non-empty string, got {o['name']!r}")
            checked["name"] = o["name"]
        if "any_outcome" in o:
            if not isinstance(o["any_outcome"], bool):
                raise EnqueueError(f"any_outcome must be True or False, got {o['any_outcome']!r}")
            checked["any_outcome"] = o["any_outcome"]
        if o.get("meta") is not None:
            checked["meta"] = check_meta(o["meta"], "step meta")
        self.options.update(checked)
        return self

    def clone(self, /, *args: Any, **kwargs: Any) -> Signature:
        """A copy, with ``args`` appended and ``kwargs`` merged (Celery's ``clone``)."""
        s = copy.copy(self)
        s.args = (*self.args, *args)
        s.kwargs = {**self.kwargs, **kwargs}
        s.options = dict(self.options)
        return s

    def _emit(self, plan: _Plan, feeds: list[int], feeds_list: bool,
              after: list[int]) -> tuple[list[int], bool]:
        any_outcome = bool(self.options.get("any_outcome"))
        has_input = bool(feeds) or feeds_list
        if self.immutable or not has_input:
            inputs = "none"
        elif any_outcome:
            inputs = "outcomes"
        elif feeds_list:
            inputs = "results"
        else:
            inputs = "previous"
        if inputs == "none":
            depends_on, after = [], [*feeds, *after]
        else:
            depends_on = list(feeds)
        return [plan.add(self, inputs, depends_on, after, any_outcome)], False


def _items(tasks: tuple[Any, ...]) -> list[_Canvas]:
    if len(tasks) == 1 and not isinstance(tasks[0], _Canvas) and isinstance(tasks[0], Iterable):
        tasks = tuple(tasks[0])
    for t in tasks:
        if not isinstance(t, _Canvas):
            raise EnqueueError(f"expected signatures (task.s(...)), chains, groups or chords, "
                               f"got {t!r}")
    return list(tasks)


class chain(_Canvas):  # noqa: N801 - Celery's name
    """Steps run one after the other; each receives the previous result first.

    ``chain(a.s(1), b.s(), c.s())`` runs ``a(1)``, then ``b(result_a)``, then
    ``c(result_b)``; the chain's result is the last step's. A step after a group or
    chord receives the list of results. ``a | b | c`` builds the same chain.

    :param tasks: signatures or nested chains/groups/chords (or one iterable of them).
    :param on_error: error callback signature, see the module docstring.
    :raises EnqueueError: for an empty chain (at enqueue).
    """

    def __init__(self, *tasks: Any, on_error: Signature | None = None):
        self.tasks = _items(tasks)
        if on_error is not None:
            self.on_error(on_error)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def __or__(self, other: Any) -> chain:
        if not isinstance(other, _Canvas):
            return NotImplemented
        return chain(*self.tasks, other, on_error=self._error)

    def _emit(self, plan: _Plan, feeds: list[int], feeds_list: bool,
              after: list[int]) -> tuple[list[int], bool]:
        if not self.tasks:
            raise EnqueueError("an empty chain has nothing to run")
        for t in self.tasks:
            feeds, feeds_list = t._emit(plan, feeds, feeds_list, after)
            after = []
        return feeds, feeds_list


class group(_Canvas):  # noqa: N801 - Celery's name
    """Members run in parallel; the result is the list of their results, in order.

    :param tasks: signatures or nested shapes (or one iterable of them). Nested groups
        are flattened into the result list.
    :param on_error: error callback signature.
    :raises EnqueueError: for an empty group outside a chord (at enqueue).
    """

    def __init__(self, *tasks: Any, on_error: Signature | None = None):
        self.tasks = _items(tasks)
        if on_error is not None:
            self.on_error(on_error)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def __len__(self) -> int:
        return len(self.tasks)

    def _emit(self, plan: _Plan, feeds: list[int], feeds_list: bool,
              after: list[int]) -> tuple[list[int], bool]:
        if not self.tasks:
            raise EnqueueError("an empty group has nothing to run (in a chord, an empty "
                               "header runs the callback at once with [])")
        tails: list[int] = []
        for t in self.tasks:
            out, _ = t._emit(plan, feeds, feeds_list, after)
            tails.extend(out)
        return tails, True


class chord(_Canvas):  # noqa: N801 - Celery's name
    """A group, then a callback receiving the list of the group's results in member order.

    The callback becomes runnable in the same transaction that finishes the last member,
    exactly once. With an empty header the callback runs at once with ``[]``.

    :param header: a :class:`group`, or an iterable of signatures/shapes.
    :param body: the callback (a signature, or a shape whose first steps receive the list).
    :param any_outcome: run the callback whatever the members' outcomes; it then receives
        ``[{"job_id", "state", "result", "error"}, ...]`` in member order instead of
        results (only for a signature body).
    :param on_error: error callback signature.
    """

    def __init__(self, header: Any, body: _Canvas, *, any_outcome: bool = False,
                 on_error: Signature | None = None):
        if isinstance(header, group):
            self.header = header
        elif isinstance(header, _Canvas):
            self.header = group(header)
        else:
            self.header = group(*list(header))
        if not isinstance(body, _Canvas):
            raise EnqueueError(f"a chord's body must be a signature or shape, got {body!r}")
        if any_outcome:
            if not isinstance(body, Signature):
                raise EnqueueError("any_outcome=True needs a signature as the chord's body")
            body = body.clone().set(any_outcome=True)
        self.body = body
        if on_error is not None:
            self.on_error(on_error)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def _emit(self, plan: _Plan, feeds: list[int], feeds_list: bool,
              after: list[int]) -> tuple[list[int], bool]:
        if not self.header.tasks:
            # Empty header: the body runs once its own predecessors are done, with [].
            return self.body._emit(plan, [], True, [*feeds, *after])
        tails, _ = self.header._emit(plan, feeds, feeds_list, after)
        return self.body._emit(plan, tails, True, [])


class Step:
    """A step added to a :class:`Workflow`; pass it (or its name) in ``depends_on``."""

    __slots__ = ("_deps", "index", "name", "node")

    def __init__(self, index: int, name: str | None, node: _Canvas):
        self.index = index
        self.name = name
        self.node = node
        self._deps: tuple[list[Step], list[Step]] = ([], [])

    def __repr__(self) -> str:
        return f"<Step {self.name or self.index} {self.node!r}>"


class Workflow(_Canvas):
    """A general DAG of steps, each depending on earlier ones.

    :param name: label stored in ``pgqueue.workflows.name`` (default: none).
    :param on_error: error callback signature.

    Example::

        wf = pgqueue.Workflow("nightly")
        a = wf.add(extract.s("orders"), name="orders")
        b = wf.add(extract.s("users"), name="users")
        wf.add(join.s(), name="join", depends_on=["orders", "users"])  # join([o, u])
        wf.add(notify.si("done"), depends_on=["join"])
        handle = wf.enqueue()

    A step with one dependency receives its result first; with several, the list of
    their results in ``depends_on`` order (a group dependency contributes all of its
    results); with none, only its arguments. Immutable signatures (``.si``) receive
    nothing; ``after=`` adds ordering-only dependencies. The workflow's result is the
    result of the step nothing depends on (the list of results if there are several).
    """

    def __init__(self, name: str | None = None, *, on_error: Signature | None = None):
        self.name = name
        self.steps: list[Step] = []
        self._by_name: dict[str, Step] = {}
        if on_error is not None:
            self.on_error(on_error)

    def __repr__(self) -> str:
        return f"<Workflow {self.name or ''} steps={len(self.steps)}>"

    def add(self, task: _Canvas, *, name: str | None = None,
            depends_on: Sequence[str | Step] = (), after: Sequence[str | Step] = ()) -> Step:
        """Add a step (a signature, or a chain/group/chord) and return it.

        :param name: unique step name (str), usable in later ``depends_on``; stored as
            the step name of a signature step.
        :param depends_on: steps (names or :class:`Step`) added before, whose results
            feed this one, in order.
        :param after: steps that must be finished first but whose results are not passed.
        :raises EnqueueError: duplicate name, unknown or later dependency, or a non-task.
        """
        if not isinstance(task, _Canvas):
            raise EnqueueError(f"add() needs a signature or shape, got {task!r}")
        if name is not None:
            if not isinstance(name, str) or not name:
                raise EnqueueError(f"step name must be a non-empty string, got {name!r}")
            if name in self._by_name:
                raise EnqueueError(f"step name {name!r} is already used in this workflow")
        if isinstance(task, Signature) and name is not None and "name" not in task.options:
            task = task.clone().set(name=name)
        step = Step(len(self.steps), name, task)
        step_deps = [self._resolve(d) for d in depends_on]
        step_after = [self._resolve(d) for d in after]
        step._deps = (step_deps, step_after)
        self.steps.append(step)
        if name is not None:
            self._by_name[name] = step
        return step

    def _resolve(self, ref: str | Step) -> Step:
        if isinstance(ref, Step):
            if ref.index >= len(self.steps) or self.steps[ref.index] is not ref:
                raise EnqueueError(f"{ref!r} is not a step of this workflow")
            return ref
        step = self._by_name.get(ref) if isinstance(ref, str) else None
        if step is None:
            raise EnqueueError(f"unknown step {ref!r}: add it before the steps that depend on it")
        return step

    def _emit(self, plan: _Plan, feeds: list[int], feeds_list: bool,
              after: list[int]) -> tuple[list[int], bool]:
        if not self.steps:
            raise EnqueueError("an empty workflow has nothing to run")
        outs: list[tuple[list[int], bool]] = []
        used: set[int] = set()
        for step in self.steps:
            deps, aft = step._deps
            f: list[int] = []
            for d in deps:
                f.extend(outs[d.index][0])
                used.add(d.index)
            a = [i for d in aft for i in outs[d.index][0]]
            used.update(d.index for d in aft)
            is_list = len(deps) > 1 or any(outs[d.index][1] for d in deps)
            if not deps:
                f, is_list, a = list(feeds), feeds_list, [*a, *after]
            outs.append(step.node._emit(plan, f, is_list, a))
        sinks = [outs[s.index] for s in self.steps if s.index not in used]
        if len(sinks) == 1:
            return sinks[0]
        return [i for tails, _ in sinks for i in tails], True


# -- compile and enqueue --------------------------------------------------------------------

#: per ``inputs`` mode of a step: how many values the worker passes before the step's own
#: arguments (``pgqueue.job_inputs``), and how the argument check names them
_INPUTS: dict[str, tuple[int, str]] = {
    "none": (0, ""),
    "previous": (1, "the previous step's result"),
    "results": (1, "the list of results it waits for"),
    "outcomes": (1, "the list of outcomes it waits for"),
    "error": (2, "(failed_job_id, failure)"),
}


class _Plan:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.app: App | None = None

    def add(self, sig: Signature, inputs: str, depends_on: list[int], after: list[int],
            any_outcome: bool, on_error: bool = False) -> int:
        app = sig.task.app
        if self.app is None:
            self.app = app
        elif app is not self.app:
            raise EnqueueError(f"every task of a workflow must belong to one App; "
                               f"{sig.task.name} belongs to another")
        i = len(self.steps)
        where = f"step {i} ({sig.task.name})"
        o = sig.task.defaults
        opts = sig.options
        step: dict[str, Any] = {
            "task": sig.task.name,
            "args": serialization.encode(list(sig.args), f"{where} args"),
            "kwargs": serialization.encode(sig.kwargs, f"{where} kwargs"),
            "queue": opts.get("queue", o["queue"]),
            "priority": opts.get("priority", o["priority"]),
            "max_attempts": opts.get("max_attempts", o["max_attempts"]),
            "inputs": inputs,
        }
        if opts.get("delay"):
            step["delay"] = opts["delay"]
        if opts.get("name"):
            step["step"] = opts["name"]
        if opts.get("meta") is not None:
            step["meta"] = opts["meta"]
        if any_outcome:
            step["any_outcome"] = True
        deps = list(dict.fromkeys(depends_on))
        if deps:
            step["depends_on"] = deps
        aft = [a for a in dict.fromkeys(after) if a not in deps]
        if aft:
            step["after"] = aft
        if on_error:
            step["on_error"] = True
        n_inputs, note = _INPUTS[inputs]
        advice = "give the step arguments that bind to it"
        if inputs in ("previous", "results"):
            advice += ", or build it with .si(...) to pass it only its own arguments"
        sig.task.check_args(sig.args, sig.kwargs, inputs=n_inputs, where=f"step {i}: ",
                            note=note, advice=advice)
        self.steps.append(step)
        return i


def check_error_callback(on_error: Any) -> None:
    """Refuse an error callback that is not a mutable task signature (it receives
    ``(failed_job_id, failure)`` first). Raises :class:`EnqueueError`."""
    if not isinstance(on_error, Signature):
        raise EnqueueError(f"on_error needs a task signature (task.s(...)), got {on_error!r}")
    if on_error.immutable:
        raise EnqueueError("the error callback always receives (failed_job_id, failure) "
                           "first: build it with .s(...), not .si(...)")


def _enqueued(app: App, hooked: Any, wf_id: int, job_ids: list[int], tails: list[int],
              is_list: bool) -> WorkflowHandle:
    """After a workflow's insert: tell the enqueue hooks its ids, return its handle."""
    if hooked is not None:
        hooked[0].job_ids[:] = job_ids
        hooked[0].workflow_id = wf_id
        app.hooks.after_enqueue(hooked[1], job_id=job_ids[0])
    return WorkflowHandle(app, wf_id, job_ids=job_ids,
                          result_job_ids=[job_ids[i] for i in tails], result_is_list=is_list)


def _compile(root: _Canvas, on_error: Signature | None) -> tuple[_Plan, list[int], bool]:
    plan = _Plan()
    tails, is_list = root._emit(plan, [], False, [])
    if on_error is not None:
        check_error_callback(on_error)
        plan.add(on_error, "error", [], [], False, on_error=True)
    return plan, tails, is_list


def replacement_params(canvas: _Canvas) -> dict[str, Any]:
    """The ``pgqueue.replace_step`` parameters of a replacement (``ctx.replace``):
    steps (JSON text), result_steps, result_is_list. An empty group replaces a step
    by ``[]``.

    :raises EnqueueError: not a shape, a shape with its own error callback, or an
        invalid option; ``TypeError``: arguments that do not bind (before any SQL).
    """
    if not isinstance(canvas, _Canvas):
        raise EnqueueError(f"ctx.replace needs a signature, chain, group, chord or Workflow, "
                           f"got {canvas!r}")
    if canvas._error is not None:
        raise EnqueueError("a replacement has no error callback of its own: the workflow's "
                           "on_error applies to the steps it adds")
    if isinstance(canvas, group) and not canvas.tasks:
        steps: list[dict[str, Any]] = []
        tails: list[int] = []
        is_list = True
    else:
        plan, tails, is_list = _compile(canvas, None)
        steps = plan.steps
    return {"steps": serialization.json_text(steps),
            "result_steps": tails, "result_is_list": is_list}


class WorkflowCall:
    """A workflow bound to enqueue options (the result of ``.using(...)``)."""

    __slots__ = ("canvas", "connection", "error", "meta", "name")

    def __init__(self, canvas: _Canvas, connection: Any, name: str | None,
                 error: Signature | None, meta: dict[str, str] | None = None):
        if name is not None and (not isinstance(name, str) or "\x00" in name):
            raise EnqueueError(f"workflow name must be a string without NUL, got {name!r}")
        self.canvas = canvas
        self.connection = connection
        self.name = name
        self.error = error
        self.meta = check_meta(meta)

    def _params(self) -> tuple[App, dict[str, Any], list[int], bool, Any]:
        plan, tails, is_list = _compile(self.canvas, self.error)
        assert plan.app is not None  # noqa: S101 - narrows a type; _compile sets the app
        meta = self.meta
        hooked = None
        hooks = plan.app.hooks
        if hooks.enqueue or GLOBAL.enqueue:
            first = plan.steps[0]
            info = Enqueue(task=first["task"], queue=first["queue"], meta=dict(meta or {}),
                           kind="workflow")
            gens = hooks.before_enqueue(info)
            added = {k: v for k, v in info.meta.items() if (meta or {}).get(k) != v}
            meta = info.meta
            if added:   # the hooks' additions (trace context) reach steps with their own meta
                for step in plan.steps:
                    if "meta" in step:
                        step["meta"] = {**added, **step["meta"]}
            hooked = (info, gens)
        params = {"steps": serialization.json_text(plan.steps),
                  "name": self.name, "result_steps": tails, "result_is_list": is_list,
                  "meta": meta_json(meta)}
        return plan.app, params, tails, is_list, hooked

    def enqueue(self) -> WorkflowHandle:
        """Insert the workflow (one statement, one round trip) and return its handle.

        On a caller's connection the rows join its transaction and nothing is committed
        here; the NOTIFY that wakes workers is delivered at that commit, never before.

        :raises EnqueueError: invalid shape or options; :class:`SerializationError`:
            arguments JSON cannot carry; ``TypeError``: a step's arguments do not bind to
            its task's function as the worker will call it (after the previous result,
            the list of results, or ``(failed_job_id, failure)`` for the error
            callback), naming the step. All before any SQL, so a caller's transaction
            stays usable.
        """
        from ._connections import sync_connection
        app, params, tails, is_list, hooked = self._params()
        try:
            with sync_connection(app, self.connection) as conn:
                wf_id, job_ids = conn.execute(ENQUEUE_SQL, params).fetchone()
        except BaseException as e:
            if hooked is not None:
                app.hooks.after_enqueue(hooked[1], exc=e)
            raise
        return _enqueued(app, hooked, wf_id, job_ids, tails, is_list)

    async def aenqueue(self) -> WorkflowHandle:
        """``enqueue`` on a caller's ``AsyncConnection`` (its transaction) or a new one."""
        from ._connections import async_connection
        app, params, tails, is_list, hooked = self._params()
        try:
            async with async_connection(app, self.connection) as conn:
                cur = await conn.execute(ENQUEUE_SQL, params)
                wf_id, job_ids = await cur.fetchone()
        except BaseException as e:
            if hooked is not None:
                app.hooks.after_enqueue(hooked[1], exc=e)
            raise
        return _enqueued(app, hooked, wf_id, job_ids, tails, is_list)


# -- the handle -----------------------------------------------------------------------------

class WorkflowHandle:
    """A handle on one workflow: id, state, steps, result.

    Returned by ``.enqueue()``; ``WorkflowHandle(app, id)`` builds one for an existing id.
    Every property reads the database afresh (one query on the app's pool). A workflow
    enqueued in a caller's transaction is invisible to others until that commits.

    :ivar id: the workflow id (``pgqueue.workflows.id``).
    :ivar job_ids: the job ids in step order (the error callback last), when known.
    """

    def __init__(self, app: App, id: int, *, job_ids: Sequence[int] | None = None,
                 result_job_ids: Sequence[int] | None = None,
                 result_is_list: bool | None = None):
        self.app = app
        self.id = int(id)
        self.job_ids = list(job_ids) if job_ids is not None else None
        self._result_ids = list(result_job_ids) if result_job_ids is not None else None
        self._result_is_list = result_is_list

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    def row(self) -> dict[str, Any]:
        """The ``pgqueue.workflows`` row as a dict. Raises :class:`JobNotFound`-like
        :class:`LookupError` when it is not visible (not committed, or deleted)."""
        with self.app.connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                "select * from pgqueue.workflows where id = %s", (self.id,)).fetchone()
        if row is None:
            from .errors import JobNotFound
            raise JobNotFound(f"no workflow with id {self.id} (not committed yet, or deleted)")
        return row

    @property
    def state(self) -> str:
        """``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self.row()["state"]

    @property
    def failures(self) -> list[dict[str, Any]]:
        """One dict per step whose failure failed the workflow (see :class:`WorkflowFailed`)."""
        return self.row()["failures"]

    def steps(self) -> list[dict[str, Any]]:
        """Per-step rows of the ``pgqueue.workflow_steps`` view, in job id order: job_id,
        step, task, state, attempt, max_attempts, deps_pending, depends_on, started_at,
        finished_at, duration_seconds, last_error, ..."""
        with self.app.connection() as conn:
            return conn.cursor(row_factory=dict_row).execute(
                "select * from pgqueue.workflow_steps where workflow_id = %s order by job_id",
                (self.id,)).fetchall()

    @property
    def jobs(self) -> list[Job]:
        """:class:`~pgqueue.Job` handles of the steps, in step order."""
        ids = self.job_ids if self.job_ids is not None else [s["job_id"] for s in self.steps()]
        return [Job(self.app, i) for i in ids]

    def cancel(self) -> str | None:
        """Cancel the workflow (``pgqueue.cancel_workflow``), committed at once: steps that
        have not started become ``cancelled``, running ones are asked to stop, the error
        callback does not run. Returns the workflow state after the call."""
        with self.app.connection() as conn:
            (state,) = conn.execute("select pgqueue.cancel_workflow(%s)", (self.id,)).fetchone()
        return state

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to complete and return its result.

        The result is the final step's result; for a workflow that ends in a group, the
        list of the group's results in member order. Waits on ``LISTEN
        pgqueue_workflows`` (the fan-in trigger notifies the workflow id when it ends or
        fails), re-reading every 30 s as a safety net; it does not poll.

        :param timeout: seconds to wait at most; ``None`` waits indefinitely.
        :raises WorkflowFailed: the workflow failed (raised as soon as a step fails for
            good, even while other steps still run) or was cancelled.
        :raises ResultTimeout: ``timeout`` elapsed first.
        """
        deadline = result_deadline(timeout)
        with psycopg.connect(self.app.conninfo, autocommit=True) as conn:
            conn.execute("listen pgqueue_workflows")
            me = str(self.id)
            while True:
                row = conn.execute(_STATE_SQL, (self.id,)).fetchone()
                ids = self._finished(row)
                if ids is not None:
                    return self._value(ids, conn.execute(_RESULTS_SQL, (ids,)).fetchall())
                wait = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
                if wait <= 0:
                    raise self._timeout(timeout, row)
                end = time.monotonic() + wait
                for n in conn.notifies(timeout=wait):
                    if n.payload == me or time.monotonic() >= end:
                        break

    async def aresult(self, timeout: float | None = None) -> Any:
        """Wait for the workflow to complete and return its result, from async code.

        :meth:`result` for an event loop: waits on ``LISTEN pgqueue_workflows`` with a
        psycopg ``AsyncConnection`` of its own (autocommit), without polling and without
        blocking the loop; re-reads every 30 s as a safety net.

        :param timeout: seconds to wait at most; ``None`` waits indefinitely.
        :returns: as :meth:`result`.
        :raises WorkflowFailed: the workflow failed or was cancelled.
        :raises ResultTimeout: ``timeout`` elapsed first.

        >>> total = await chord([add.s(1, 2), add.s(3, 4)], tsum.s()).enqueue().aresult(60)
        """
        deadline = result_deadline(timeout)
        conn = await psycopg.AsyncConnection.connect(self.app.conninfo, autocommit=True)
        async with conn:
            await conn.execute("listen pgqueue_workflows")
            me = str(self.id)
            while True:
                row = await (await conn.execute(_STATE_SQL, (self.id,))).fetchone()
                ids = self._finished(row)
                if ids is not None:
                    cur = await conn.execute(_RESULTS_SQL, (ids,))
                    return self._value(ids, await cur.fetchall())
                wait = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
                if wait <= 0:
                    raise self._timeout(timeout, row)
                async with contextlib.aclosing(conn.notifies(timeout=wait)) as notes:
                    async for n in notes:
                        if n.payload == me:
                            break

    def _finished(self, row: Any) -> list[int] | None:
        """The result job ids of a completed workflow, ``None`` while it runs (or is not
        visible); raises :class:`WorkflowFailed` for a failed or cancelled one."""
        if row is None:
            return None
        state, failures, ids, is_list = row
        if state in ("failed", "cancelled"):
            raise WorkflowFailed(self.id, state, failures)
        if state != "completed":
            return None
        if self._result_ids is None:
            self._result_ids, self._result_is_list = list(ids or []), is_list
        return self._result_ids

    def _value(self, ids: list[int], rows: list[tuple[int, Any]]) -> Any:
        results = dict(rows)
        values = [serialization.decode(results.get(i)) for i in ids]
        return values if self._result_is_list else (values[0] if values else None)

    def _timeout(self, timeout: float | None, row: Any) -> ResultTimeout:
        return ResultTimeout(f"workflow {self.id} did not finish within {timeout} s "
                             f"(state {row[0] if row else 'not visible'})")


_STATE_SQL = ("select state, failures, result_job_ids, result_is_list "
              "from pgqueue.workflows where id = %s")
#: a step that replaced itself (ctx.replace) has its replacement's result
_RESULTS_SQL = ("select id, case when replaced_by is null then result "
                "else pgqueue.step_result(id) end from pgqueue.jobs where id = any(%s)")


# -- text rendering (``pgqueue workflows show``) ----------------------------------------------

def render(workflow: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """A workflow and its steps as an indented tree (one line per step).

    Each step sits under the first step it depends on; a step with several dependencies
    lists the others after ``also after`` (the first three and the last when there are
    more than six). Shows state, attempts and durations.
    """
    def fmt_time(t: dt.datetime | None) -> str:
        return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "-"

    def dur(s: dict[str, Any]) -> str:
        d = s.get("duration_seconds")
        if d is None and s.get("started_at") and s["state"] == "running":
            return "running"
        return "-" if d is None else (f"{d * 1000:.0f} ms" if d < 1 else f"{d:.2f} s")

    w = workflow
    took = (f"{(w['finished_at'] - w['created_at']).total_seconds():.2f} s"
            if w.get("finished_at") else "-")
    lines = [
        f"workflow {w['id']}{' ' + repr(w['name']) if w.get('name') else ''}: {w['state']}",
        f"  created {fmt_time(w['created_at'])}, finished {fmt_time(w.get('finished_at'))} "
        f"(took {took})",
        f"  steps {w['total']}: {w['completed']} completed, {w['discarded']} discarded, "
        f"{w['cancelled']} cancelled, {w['remaining']} unfinished"
        # the error callback is not a step of the counts: say where it stands
        + "".join(f"; error callback {s['state']}"
                  + (" (not needed)" if s["state"] == "cancelled" else "")
                  for s in steps if s.get("is_error_callback")),
    ]
    b = w.get("batch")
    if b:
        cb = (f"callback #{b['callback_job_id']} {b['callback_task']}: {b['callback_state']}"
              if b.get("callback_job_id") else "no callback")
        lines.append(f"  batch: {b['state']}, {b['members']} members ({b['completed']} completed, "
                     f"{b['discarded']} discarded, {b['cancelled']} cancelled, "
                     f"{b['unfinished']} unfinished), "
                     f"sealed {fmt_time(b.get('sealed_at'))}; {cb}")
    for f in w.get("failures") or []:
        err = f.get("error") or {}
        lines.append(f"  failed: job {f.get('job_id')} ({f.get('task')}) {f.get('state')}"
                     + (f": {err.get('type')}: {err.get('message')}" if err else ""))
    by_id = {s["job_id"]: s for s in steps}
    children: dict[int | None, list[int]] = {}
    for s in steps:
        deps = [d for d in (s.get("depends_on") or []) if d in by_id]
        children.setdefault(deps[0] if deps else None, []).append(s["job_id"])

    def line(s: dict[str, Any], depth: int) -> str:
        label = s["task"] + (f" [{s['step']}]" if s.get("step") else "")
        if s.get("is_error_callback"):
            label += " (on error)"
        elif s.get("batch_role") in ("seal", "callback"):
            label += f" (batch {s['batch_role']})"
        if s.get("replaced_by") is not None:
            label += f" (replaced by {len(s['replaced_by'])} step(s))"
        extra = [d for d in (s.get("depends_on") or [])[1:]]
        limit = s["max_attempts"] if s["max_attempts"] is not None else "task default"
        text = (f"{'  ' * depth}- #{s['job_id']} {label}: {s['state']}, attempt "
                f"{s['attempt']}/{limit}, {dur(s)}")
        if s["state"] == "pending":
            text += (", waiting for a step to fail" if s.get("is_error_callback")
                     else f", waiting for {s['deps_pending']}")
        if extra:
            shown = [f"#{d}" for d in extra]
            if len(shown) > 6:      # a chord callback after 100 members: keep the line short
                shown = [*shown[:3], f"... {shown[-1]} ({len(extra)} in all)"]
            text += f", also after {', '.join(shown)}"
        if s.get("last_error") and s["state"] != "completed":
            text += f" ({s['last_error']})"
        return text.replace("\n", "\\n")   # one line a step, whatever a name holds

    seen: set[int] = set()

    def walk(parent: int | None, depth: int) -> None:
        for cid in children.get(parent, []):
            if cid in seen:
                continue
            seen.add(cid)
            lines.append(line(by_id[cid], depth + 1))
            walk(cid, depth + 1)

    walk(None, 0)
    return "\n".join(lines)
