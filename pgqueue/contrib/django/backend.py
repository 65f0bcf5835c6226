"""A ``django.tasks`` backend that stores tasks as pgqueue jobs and runs them on
pgqueue's worker.

Settings (Django >= 6.0; on Django 4.2-5.2 the same works with the ``django-tasks``
backport, whose ``django_tasks`` package is used when ``django.tasks`` is absent)::

    INSTALLED_APPS = [..., "pgqueue.contrib.django"]
    TASKS = {
        "default": {
            "BACKEND": "pgqueue.contrib.django.backend.PgQueueBackend",
            "QUEUES": ["default", "emails"],      # pgqueue queue names allowed
            "OPTIONS": {
                "DATABASE": "default",            # Django alias to enqueue on
                "MAX_ATTEMPTS": 1,                # attempts per task (1: no retries)
                "APP": "myproject.jobs:app",      # optional: register into this App
            },
        }
    }

Then::

    from django.tasks import task

    @task(queue_name="emails", priority=10)
    def send_welcome(user_id: int) -> str: ...

    with transaction.atomic():
        user = User.objects.create(...)
        result = send_welcome.enqueue(user.id)   # a row in pgqueue.jobs, same transaction
    # later, anywhere:
    send_welcome.get_result(result.id).status    # READY/RUNNING/SUCCESSFUL/FAILED

and ``python manage.py pgqueue_worker`` runs it.

Mapping to pgqueue:

- ``TaskResult.id`` is the job id as a string; the job's ``task`` column is the
  function's module path (``myapp.tasks.send_welcome``); ``queue_name`` is the queue,
  ``priority`` (-100..100, higher first) the priority, ``run_after`` the ``run_at``
  (a naive ``run_after`` with ``USE_TZ = False`` is read in Django's current time zone).
- ``enqueue`` inserts on Django's connection ``OPTIONS["DATABASE"]``, inside the
  current ``atomic()`` block if any: the job exists iff that transaction commits.
- Arguments and return values follow Django's contract: JSON values only (a datetime,
  Decimal or UUID raises ``TypeError`` at enqueue, before any SQL, and the transaction
  stays usable). Use pgqueue's own tasks for richer types.
- Status: pending/scheduled/available/retryable -> ``READY``, running -> ``RUNNING``,
  completed -> ``SUCCESSFUL``, discarded/cancelled -> ``FAILED``. ``errors`` holds one
  ``TaskError`` per failed attempt (exception class path and traceback), ``attempts``
  counts the attempts started, ``return_value`` is the stored result.
- The worker registers every ``@task`` function imported in its process (the
  management command imports each installed app's ``tasks`` module) and claims only
  those, so old and new deployments can share a queue.
"""

from __future__ import annotations

import json
import traceback
from typing import Any

from django.db import close_old_connections, connections
from django.utils import timezone
from django.utils.module_loading import import_string

from pgqueue import serialization

try:  # Django >= 6.0
    from django.tasks import TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task as DjangoTask
    from django.tasks.base import TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # Django 4.2-5.2 with the django-tasks backport
    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task as DjangoTask
    from django_tasks.base import TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

__all__ = ["PgQueueBackend"]

_STATUS = {
    "pending": TaskResultStatus.READY,
    "scheduled": TaskResultStatus.READY,
    "available": TaskResultStatus.READY,
    "retryable": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "completed": TaskResultStatus.SUCCESSFUL,
    "discarded": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
}

_GET = """select task, queue, priority, state, args, kwargs, result, errors, created_at,
                 started_at, finished_at, attempt, worker_id
            from pgqueue.jobs where id = %s"""


def _json(value: Any) -> Any:
    """A jsonb value as Django's cursor returns it (text, or parsed) -> Python."""
    if isinstance(value, (str, bytes)):
        return serialization.loads(value)
    return serialization.decode(value)


class PgQueueBackend(BaseTaskBackend):
    """``django.tasks`` backend on pgqueue (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]):
        super().__init__(alias, params)
        from . import settings
        self.database: str = self.options.get("DATABASE") or settings()["DATABASE"]
        self.max_attempts: int = int(self.options.get("MAX_ATTEMPTS", 1))
        if self.max_attempts < 1:
            from django.core.exceptions import ImproperlyConfigured
            raise ImproperlyConfigured("TASKS OPTIONS MAX_ATTEMPTS must be >= 1")
        self._app_spec: str | None = self.options.get("APP")
        self._app: Any = None

    # -- the pgqueue App the tasks are registered in ---------------------------------

    @property
    def app(self) -> Any:
        """The :class:`pgqueue.App` holding this backend's tasks."""
        if self._app is None:
            from . import _import, adopt, get_app
            self._app = adopt(_import(self._app_spec)) if self._app_spec else get_app()
        return self._app

    def _pgqueue_task(self, task: Any) -> Any:
        """The pgqueue Task that runs Django task ``task`` (registered on first use)."""
        name = task.module_path
        existing = self.app.tasks.get(name)
        if existing is not None:
            return existing
        backend = self

        def run(ctx: Any, /, *args: Any, **kwargs: Any) -> Any:
            return backend._run(ctx, name, args, kwargs)
        run.__qualname__ = run.__name__ = f"django_task:{name}"
        return self.app.task(run, name=name, queue=task.queue_name,
                             max_attempts=self.max_attempts, pass_context=True,
                             retry=self.max_attempts > 1)

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        # Called for every Task created (at @task decoration time): register it, so a
        # worker that imported the module can run it. No database access here.
        self._pgqueue_task(task)

    # -- enqueue ---------------------------------------------------------------------

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Insert the job on Django's connection, in the current transaction.

        :returns: a ``TaskResult`` with status ``READY`` and ``id`` = the job id.
        :raises TypeError: arguments that are not JSON values (Django's contract),
            before any SQL runs.
        :raises InvalidTask: the task fails validation (queue not in ``QUEUES``, ...).
        """
        self.validate_task(task)
        result = TaskResult(
            task=task, id="", status=TaskResultStatus.READY, enqueued_at=None,
            started_at=None, last_attempted_at=None, finished_at=None,
            args=list(args), kwargs=dict(kwargs), backend=self.alias, errors=[],
            worker_ids=[])   # normalizes args: TypeError for non-JSON values
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):
            run_at = timezone.make_aware(run_at)
        job = self._pgqueue_task(task).using(
            connection=connections[self.database], queue=task.queue_name,
            priority=task.priority, run_at=run_at).enqueue(*result.args, **result.kwargs)
        object.__setattr__(result, "id", str(job.id))
        object.__setattr__(result, "enqueued_at", timezone.now())
        task_enqueued.send(type(self), task_result=result)
        return result

    # -- results ---------------------------------------------------------------------

    def get_result(self, result_id: str) -> Any:
        """The ``TaskResult`` of job ``result_id``, read on Django's connection (so
        inside the enqueuing transaction an uncommitted job is visible to it).

        :raises TaskResultDoesNotExist: no such job, or the job is not a Django task.
        """
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        with connections[self.database].cursor() as cur:
            cur.execute(_GET, [job_id])
            row = cur.fetchone()
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        (name, queue, priority, state, args, kwargs, value, errors, created_at, started_at,
         finished_at, attempt, worker_id) = row
        task = self._task_for(name, result_id)
        try:
            task = task.using(queue_name=queue, priority=priority)
        except Exception:  # noqa: BLE001, S110 - a queue outside QUEUES: keep the declared task
            pass
        errors = _json(errors) or []
        by_attempt = {e.get("attempt"): str(e.get("worker")) for e in errors}
        worker_ids = [by_attempt.get(i, str(worker_id)) for i in range(1, attempt + 1)]
        result = TaskResult(
            task=task, id=str(job_id), status=_STATUS[state], enqueued_at=created_at,
            started_at=started_at, last_attempted_at=started_at, finished_at=finished_at,
            args=_json(args), kwargs=_json(kwargs), backend=self.alias,
            errors=[TaskError(exception_class_path=e.get("type") or "builtins.Exception",
                              traceback=e.get("traceback")
                              or f"{e.get('type')}: {e.get('message')}") for e in errors],
            worker_ids=worker_ids)
        if state == "completed":
            object.__setattr__(result, "_return_value", _json(value))
        return result

    def _task_for(self, name: str, result_id: str) -> Any:
        try:
            task = import_string(name)
        except ImportError:
            raise TaskResultDoesNotExist(
                f"job {result_id} runs {name!r}, which is not importable here") from None
        if not isinstance(task, DjangoTask):
            raise TaskResultDoesNotExist(f"job {result_id} ({name}) is not a Django task")
        return task

    # -- execution (in the worker) -------------------------------------------------------

    def _run(self, ctx: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        close_old_connections()
        try:
            task = self._task_for(name, str(ctx.job_id))
            now = timezone.now()
            result = TaskResult(
                task=task, id=str(ctx.job_id), status=TaskResultStatus.RUNNING,
                enqueued_at=None, started_at=now, last_attempted_at=now, finished_at=None,
                args=list(args), kwargs=dict(kwargs), backend=self.alias, errors=[],
                worker_ids=[str(ctx.worker_id)] * ctx.attempt)
            task_started.send(type(self), task_result=result)
            try:
                if task.takes_context:
                    value = task.call(TaskContext(task_result=result), *args, **kwargs)
                else:
                    value = task.call(*args, **kwargs)
                value = normalize_json(value)
                json.dumps(value)
            except BaseException as e:
                cls = type(e)
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
                object.__setattr__(result, "finished_at", timezone.now())
                result.errors.append(TaskError(
                    exception_class_path=f"{cls.__module__}.{cls.__qualname__}",
                    traceback="".join(traceback.format_exception(cls, e, e.__traceback__))))
                task_finished.send(type(self), task_result=result)
                raise
            object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "finished_at", timezone.now())
            object.__setattr__(result, "_return_value", value)
            task_finished.send(type(self), task_result=result)
            return value
        finally:
            close_old_connections()

    def check(self, **kwargs: Any) -> list[Any]:
        from django.apps import apps
        from django.core import checks
        out = list(super().check(**kwargs))
        if not apps.is_installed("pgqueue.contrib.django"):
            out.append(checks.Warning(
                "PgQueueBackend is configured but 'pgqueue.contrib.django' is not in "
                "INSTALLED_APPS: `manage.py migrate` will not install the pgqueue schema "
                "and `manage.py pgqueue_worker` is unavailable.",
                id="pgqueue.W001"))
        return out

