"""pgqueue: a job queue for Python that needs nothing but PostgreSQL.

Jobs live in ``pgqueue.jobs``; enqueue them in your own transaction, run them with
``pgqueue worker``, read their state with SQL. See README.md.
"""

from .app import App, Args, Task, TaskCall
from .context import JobContext
from .errors import (
    BatchSealed,
    Cancelled,
    ConfigurationError,
    Discard,
    EnqueueError,
    JobCancelled,
    JobError,
    JobFailed,
    JobNotFound,
    PgQueueError,
    ResultTimeout,
    RetryLater,
    SchemaError,
    SerializationError,
    UniqueKeyHeld,
    UnknownTaskError,
)
from .batch import Batch
from .job import Job, JobState
from .observe import ErrorContext
from .retry import RetryPolicy
from .worker import Worker
from .workflow import Signature, Workflow, WorkflowFailed, WorkflowHandle, chain, chord, group

__version__ = "0.1.0"

__all__ = [
    "App",
    "Args",
    "Batch",
    "BatchSealed",
    "Cancelled",
    "ConfigurationError",
    "Discard",
    "EnqueueError",
    "ErrorContext",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "PgQueueError",
    "ResultTimeout",
    "RetryLater",
    "RetryPolicy",
    "SchemaError",
    "SerializationError",
    "Signature",
    "Task",
    "TaskCall",
    "UniqueKeyHeld",
    "UnknownTaskError",
    "Worker",
    "Workflow",
    "WorkflowFailed",
    "WorkflowHandle",
    "chain",
    "chord",
    "group",
]

import logging as _logging

_logging.getLogger("pgqueue").addHandler(_logging.NullHandler())
