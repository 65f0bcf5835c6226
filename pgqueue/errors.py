"""Exceptions raised by pgqueue, and the ones a task raises to steer its job.

The tree::

    PgQueueError
    ├── ConfigurationError          bad settings: no usable DSN, embedded server impossible
    ├── SchemaError                 the pgqueue schema is missing or older than this code
    ├── SerializationError          (also TypeError) arguments/result not representable
    ├── EnqueueError                (also ValueError) invalid enqueue options
    ├── UnknownTaskError            (also LookupError) a task name not registered in the App
    ├── JobNotFound                 (also LookupError) no job with that id
    ├── ResultTimeout               (also TimeoutError) Job.result() waited in vain
    ├── UniqueKeyHeld               Job.retry() of a job whose unique_key another job holds
    ├── BatchSealed                 Batch.add() after the batch was sealed (or cancelled)
    └── JobError                    Job.result() of a job that did not complete
        ├── JobFailed               discarded: attempts exhausted or not retryable
        └── JobCancelled            cancelled

    Raised by a task to steer its own job (not errors of pgqueue itself):
    RetryLater(delay)               retry after this many seconds (counts as an attempt)
    Discard(reason)                 fail now, do not retry
    Cancelled                       stop; the job ends cancelled if cancellation was requested

Database errors from psycopg pass through unchanged, except where a message names
what to do next (e.g. a missing schema becomes :class:`SchemaError`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BatchSealed",
    "Cancelled",
    "ConfigurationError",
    "Discard",
    "EnqueueError",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "PgQueueError",
    "ResultTimeout",
    "RetryLater",
    "SchemaError",
    "SerializationError",
    "UniqueKeyHeld",
    "UnknownTaskError",
]


class PgQueueError(Exception):
    """Base class of every error pgqueue raises."""


class ConfigurationError(PgQueueError):
    """Settings that cannot work (no DSN and no embedded server, bad option values)."""


class SchemaError(PgQueueError):
    """The database lacks the pgqueue schema, or its version differs from this code's."""


class SerializationError(PgQueueError, TypeError):
    """A value that tagged JSON cannot carry (raised before any SQL runs)."""


class EnqueueError(PgQueueError, ValueError):
    """Invalid enqueue options (negative delay, naive run_at, bad priority, ...)."""


class UnknownTaskError(PgQueueError, LookupError):
    """A task name that the App does not know."""


class JobNotFound(PgQueueError, LookupError):
    """No job has that id (it may have been pruned)."""


class ResultTimeout(PgQueueError, TimeoutError):
    """``Job.result(timeout=...)`` ran out of time before the job finished."""


class UniqueKeyHeld(PgQueueError):
    """A finished job cannot be retried: another unfinished job holds its ``unique_key``.

    At most one unfinished job may hold a key (README, *Unique jobs*). Nothing changed;
    wait for the holder to finish or cancel it, then retry, or enqueue a new job.

    :ivar job_id: the job that was to be retried.
    """

    def __init__(self, job_id: int, message: str):
        self.job_id = job_id
        super().__init__(message)


class RetryRefused(PgQueueError):
    """A workflow step cannot be retried: a dependency whose result it needs ended
    ``discarded`` or ``cancelled``. Nothing changed; retry that dependency first (the
    step can then be retried: it waits for it, and runs once it has completed).

    :ivar job_id: the job that was to be retried.
    """

    def __init__(self, job_id: int, message: str):
        self.job_id = job_id
        super().__init__(message)


class JobError(PgQueueError):
    """The job reached a terminal state other than ``completed``.

    :ivar job_id: the job's id.
    :ivar state: ``"discarded"`` or ``"cancelled"``.
    :ivar errors: the job's error history (list of dicts, oldest first).
    """

    def __init__(self, job_id: int, state: str, errors: list[dict[str, Any]]):
        self.job_id = job_id
        self.state = state
        self.errors = errors
        last = errors[-1] if errors else {}
        detail = f"{last.get('type')}: {last.get('message')}" if last else "no error recorded"
        super().__init__(f"job {job_id} ended {state} ({detail})")

    @property
    def last_error(self) -> dict[str, Any] | None:
        return self.errors[-1] if self.errors else None


class JobFailed(JobError):
    """The job was discarded: attempts exhausted, or the task raised :class:`Discard`."""


class JobCancelled(JobError):
    """The job was cancelled."""


class RetryLater(Exception):
    """Raise from a task to retry after ``delay`` seconds (the attempt counts).

    :param delay: seconds (float) before the next attempt, measured on the database
        clock; ``None`` uses the task's backoff.
    """

    def __init__(self, delay: float | None = None, reason: str = ""):
        self.delay = delay
        super().__init__(reason or (f"retry in {delay} s" if delay is not None else "retry"))


class Discard(Exception):
    """Raise from a task to fail the job now, without further attempts."""


class Cancelled(Exception):
    """Raised by ``JobContext.raise_if_cancelled()`` once cancellation was requested."""


class BatchSealed(PgQueueError):
    """:meth:`Batch.add <pgqueue.Batch.add>` on a batch that is sealed or cancelled.

    Raised by the database (``pgqueue.add_to_batch``): a caller's transaction is left
    aborted, as after any failed statement; roll it back.

    :ivar batch_id: the batch's id.
    """

    def __init__(self, batch_id: int, message: str):
        self.batch_id = batch_id
        super().__init__(message)
