"""pgqueue: a job queue for Python that needs nothing but PostgreSQL.

Jobs live in ``pgqueue.jobs``; enqueue them in your own transaction, run them with
``pgqueue worker``, read their state with SQL. See README.md.

The modules stack in layers, bottom to top; a module imports only from its own layer
or below (imports for annotations alone excepted), and no imports form a circle
(``tests/test_layers.py`` checks both):

1. ``sql/`` (schema, migrations, named queries) and the modules that need nothing else
   of pgqueue: ``_sql``, ``serialization``, ``errors``, ``retry``, ``migrate``,
   ``_positions``, ``embedded``, ``hooks`` (the hook mechanism), ``roles``;
2. enqueue and job handles: ``_options`` (checks of enqueue options),
   ``_connections`` (enqueue on any connection), ``job``, ``limits`` (queue limits);
3. the app and what it declares: ``schedule``, ``workflow``, ``batch``, ``app``, and
   ``context`` (what a task sees; it can replace a workflow step);
4. what watches a worker: ``observe`` (logs, outcome hooks), ``metrics``;
5. the worker, one module per component: ``worker/``;
6. on top: this package, ``cli``, ``bench``, ``testing``, ``contrib/``, ``dashboard/``.
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
    RetryRefused,
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
    "RetryRefused",
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
