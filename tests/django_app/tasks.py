"""Tasks used by tests/test_django.py: a native pgqueue task and django.tasks functions."""

from __future__ import annotations

import pgqueue

try:
    from django.tasks import task
except ImportError:  # Django < 6: the django-tasks backport
    from django_tasks import task

app = pgqueue.App()


@app.task(name="tests.django.note")
def note(*args, **kwargs):
    return list(args)


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="other", priority=7)
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def which_attempt(context, tag: str) -> dict:
    return {"tag": tag, "attempt": context.attempt, "id": context.task_result.id}


@task()
async def async_double(x: int) -> int:
    return 2 * x


@task()
def touch_db() -> int:
    from django.db import connection
    with connection.cursor() as cur:
        cur.execute("select count(*) from pgqueue.jobs")
        return cur.fetchone()[0]
