"""A read-only admin for ``pgqueue.jobs``: list, filter (state, queue, task), inspect
arguments, results and error tracebacks; *Retry* and *Cancel* actions call
``pgqueue.retry()`` / ``pgqueue.cancel()`` (each commits at once).

Who sees what: viewing needs the ``pgqueue.view_job`` permission; the actions need
``pgqueue.change_job``. Nothing can be added, edited or deleted here.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db import IntegrityError, connections, router, transaction
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from .models import Job


def _call(fn: str, queryset) -> dict[str, int]:
    """Run ``pgqueue.<fn>(id)`` for each selected job; count the resulting states.

    Each call commits on its own (in a savepoint inside a request transaction). A retry
    refused because another unfinished job holds the job's ``unique_key`` counts as
    ``skipped (unique_key held)`` and the other jobs go on."""
    db = router.db_for_write(Job)
    out: dict[str, int] = {}
    with connections[db].cursor() as cur:
        for job_id in queryset.values_list("id", flat=True):
            try:
                with transaction.atomic(using=db):
                    cur.execute(f"select pgqueue.{fn}(%s)", [job_id])
                    state = cur.fetchone()[0] or "unknown"
            except IntegrityError:
                state = "skipped (unique_key held)"
            out[state] = out.get(state, 0) + 1
    return out


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "queue", "state", "attempt", "max_attempts", "priority",
                    "run_at", "finished_at")
    list_filter = ("state", "queue", "task")
    search_fields = ("=id", "task", "unique_key")
    date_hierarchy = None
    actions = ["retry_jobs", "cancel_jobs"]
    fields = ("id", "task", "queue", "state", "priority", "attempt", "max_attempts",
              "run_at", "created_at", "started_at", "finished_at", "timeout", "unique_key",
              "worker_id", "cancel_requested_at", "pretty_args", "pretty_kwargs",
              "pretty_result", "pretty_errors")
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # The change form is read-only; the change permission only guards the actions.
        return obj is None and super().has_change_permission(request)

    @staticmethod
    def _pre(value) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>",
                           json.dumps(value, indent=2, ensure_ascii=False))

    @admin.display(description="args")
    def pretty_args(self, obj: Job) -> str:
        return self._pre(obj.args)

    @admin.display(description="kwargs")
    def pretty_kwargs(self, obj: Job) -> str:
        return self._pre(obj.kwargs)

    @admin.display(description="result")
    def pretty_result(self, obj: Job) -> str:
        return self._pre(obj.result)

    @admin.display(description="errors")
    def pretty_errors(self, obj: Job) -> str:
        parts = []
        for e in obj.errors or []:
            parts.append(format_html(
                "<p><b>attempt {} at {} on {}: {}: {}</b></p><pre>{}</pre>",
                e.get("attempt"), e.get("at"), e.get("worker"), e.get("type"),
                e.get("message"), e.get("traceback") or ""))
        return mark_safe("".join(parts))  # noqa: S308 - each part was escaped by format_html

    @admin.action(description="Retry selected jobs (make them available now)",
                  permissions=["change"])
    def retry_jobs(self, request, queryset) -> None:
        counts = _call("retry", queryset)
        self.message_user(request, f"Retry: {_summary(counts)}", messages.SUCCESS)

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset) -> None:
        counts = _call("cancel", queryset)
        self.message_user(request, f"Cancel: {_summary(counts)}", messages.SUCCESS)
