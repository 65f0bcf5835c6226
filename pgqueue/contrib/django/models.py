"""An unmanaged model over ``pgqueue.jobs``, for the admin and for ORM queries.

Read-only by intent: change jobs through the SQL API (``pgqueue.retry``,
``pgqueue.cancel``) or the :class:`pgqueue.Job` handle, never with ``save()``, which
would bypass the state machine. Example::

    from pgqueue.contrib.django.models import Job
    Job.objects.filter(state="discarded", queue="emails").count()
"""

from __future__ import annotations

from django.db import models

STATES = ["pending", "scheduled", "available", "running", "retryable", "completed",
          "discarded", "cancelled"]


class Job(models.Model):
    id = models.BigIntegerField(primary_key=True)
    queue = models.TextField()
    task = models.TextField()
    args = models.JSONField()
    kwargs = models.JSONField()
    state = models.TextField(choices=[(s, s) for s in STATES])
    priority = models.IntegerField()
    run_at = models.DateTimeField()
    attempt = models.IntegerField()
    max_attempts = models.IntegerField(null=True)  # null: the task's default, until claimed
    timeout = models.DurationField(null=True)
    unique_key = models.TextField(null=True)
    result = models.JSONField(null=True)
    errors = models.JSONField()
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    worker_id = models.UUIDField(null=True)
    cancel_requested_at = models.DateTimeField(null=True)

    class Meta:
        managed = False
        db_table = 'pgqueue"."jobs'
        app_label = "pgqueue"
        ordering = ["-id"]
        verbose_name = "job"
        verbose_name_plural = "jobs"

    def __str__(self) -> str:
        return f"job {self.id} {self.task} ({self.state})"

    def save(self, *args, **kwargs):  # noqa: D401 - refuse writes
        raise TypeError("pgqueue jobs are read-only through the ORM; use pgqueue.retry() / "
                        "pgqueue.cancel() or the pgqueue.Job handle")

    def delete(self, *args, **kwargs):
        raise TypeError("pgqueue jobs are read-only through the ORM; prune them with "
                        "`pgqueue prune` or pgqueue.prune()")
