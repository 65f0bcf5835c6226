"""JobContext: what a task that asks for it (``pass_context=True``) receives first."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import Cancelled
from .hooks import EMPTY_META

if TYPE_CHECKING:  # pragma: no cover
    from .app import App

__all__ = ["JobContext"]

_CANCEL_LOCK = threading.Lock()


class JobContext:
    """The running job, as seen from inside its task.

    :ivar job_id: the job's id (int).
    :ivar task: the task name (str).
    :ivar queue: the queue (str).
    :ivar attempt: this attempt's number, 1-based (int).
    :ivar max_attempts: attempts allowed (int).
    :ivar worker_id: the worker process instance running it (UUID).
    :ivar connection: for ``transactional=True`` tasks, the job's own transaction (a
        psycopg ``Connection``, or ``AsyncConnection`` for ``async def`` tasks); its
        writes commit together with the job's completion, or roll back with a failed
        attempt. ``None`` otherwise.
    :ivar app: the :class:`~pgqueue.App`.
    :ivar meta: the job's metadata, set at enqueue (a read-only mapping of str to str;
        empty when none): ``traceparent``/``tracestate`` of the enqueuing trace, a
        tenant, a request id (README "Job metadata").
    :ivar workflow_id: the workflow of a workflow step (int), else ``None``.
    :ivar waited: seconds from the enqueue to this attempt's claim (database clock;
        float, ``None`` when unknown).
    """

    __slots__ = (
        "_cancel_event",
        "_replacement",
        "_schedule",
        "app",
        "attempt",
        "connection",
        "job_id",
        "max_attempts",
        "meta",
        "queue",
        "task",
        "waited",
        "worker_id",
        "workflow_id",
    )

    def __init__(self, *, job_id: int, task: str, queue: str, attempt: int, max_attempts: int,
                 worker_id: uuid.UUID, app: App, connection: Any = None,
                 meta: Mapping[str, str] = EMPTY_META, workflow_id: int | None = None,
                 waited: float | None = None):
        self.job_id = job_id
        self.task = task
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.worker_id = worker_id
        self.app = app
        self.connection = connection
        self.meta = meta
        self.workflow_id = workflow_id
        self.waited = waited
        self._cancel_event: threading.Event | None = None
        self._schedule: tuple[Any, Any] | None = None
        #: set by :meth:`replace`: the ``pgqueue.replace_step`` parameters the worker
        #: passes when it records this attempt's success
        self._replacement: dict[str, Any] | None = None

    @property
    def _cancel(self) -> threading.Event:
        # Made on first use: most jobs never look at cancellation, and an Event costs a
        # Condition and a lock per job in the worker's hot path.
        ev = self._cancel_event
        if ev is None:
            with _CANCEL_LOCK:
                ev = self._cancel_event
                if ev is None:
                    ev = self._cancel_event = threading.Event()
        return ev

    def __repr__(self) -> str:
        return f"<JobContext job={self.job_id} task={self.task} attempt={self.attempt}>"

    def _schedule_origin(self) -> tuple[Any, Any]:
        if self._schedule is None:
            with self.app.connection() as conn:
                row = conn.execute("select schedule_name, schedule_slot from pgqueue.jobs "
                                   "where id = %s", (self.job_id,)).fetchone()
            self._schedule = (row[0], row[1]) if row else (None, None)
        return self._schedule

    @property
    def schedule_name(self) -> str | None:
        """The periodic schedule that enqueued this job, or ``None`` (one query on first
        use, on the app's pool)."""
        return self._schedule_origin()[0]

    @property
    def schedule_slot(self) -> Any:
        """The slot this periodic job was enqueued for, an aware UTC ``datetime``;
        ``None`` for a manual trigger or a job no schedule enqueued."""
        return self._schedule_origin()[1]

    def replace(self, replacement: Any) -> None:
        """End this workflow step by replacing it with a signature, chain, group, chord
        or :class:`~pgqueue.Workflow` (Celery's ``self.replace``).

        Takes effect when the task returns normally: the step ends ``completed``
        without a result of its own (what the task returns is ignored), and in the
        same transaction that records it the replacement's steps join this workflow
        and every dependent of this step waits for the replacement instead, receiving
        its result (a group's list of results, a chain's last result). If the task
        then raises, or that transaction fails, nothing is added and the attempt is a
        failure like any other (the step retries as usual). The replacement's first
        steps receive only their own arguments. An empty ``group()`` makes the step's
        result ``[]``. A replacement that would bring the workflow past its bound
        (``pgqueue.workflows.max_steps``, 1,000,000 by default) discards the step
        (error type ``pgqueue.StepLimitExceeded``), failing the workflow.

        One query (on the app's pool) checks that this job is a workflow step.

        :param replacement: the shape to run instead of this step.
        :raises EnqueueError: not a workflow step (or its error callback), called twice,
            a shape with its own ``on_error``, or invalid options; ``TypeError``: a step's
            arguments do not bind to its task.

        >>> @app.task(pass_context=True)
        ... def split(ctx, n):
        ...     return ctx.replace(group(work.s(i) for i in range(n)))
        """
        from .errors import EnqueueError
        from .workflow import replacement_params
        if self._replacement is not None:
            raise EnqueueError(f"job {self.job_id}: ctx.replace was already called in this attempt")
        params = replacement_params(replacement)
        with self.app.connection() as conn:
            row = conn.execute("select workflow_id, inputs from pgqueue.jobs where id = %s",
                               (self.job_id,)).fetchone()
        if row is None or row[0] is None or row[1] == "error":
            raise EnqueueError(f"job {self.job_id} ({self.task}) is not a workflow step: "
                               "ctx.replace is only allowed in a step of a chain, group, "
                               "chord, Workflow or batch (and not in an error callback)")
        self._replacement = params

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested (``pgqueue jobs cancel``) or the attempt
        timed out or the worker is shutting down past its grace period."""
        return self._cancel.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds for cancellation; returns whether it came."""
        return self._cancel.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~pgqueue.Cancelled` if cancellation was requested."""
        if self._cancel.is_set():
            raise Cancelled(f"job {self.job_id} was asked to stop")
