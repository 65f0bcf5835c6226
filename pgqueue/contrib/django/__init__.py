"""pgqueue for Django: ``INSTALLED_APPS += ["pgqueue.contrib.django"]``.

What the app gives (Django >= 4.2, PostgreSQL through the psycopg 3 backend; the
psycopg2 backend works for enqueueing):

- migrations (app label ``pgqueue``) that run pgqueue's own SQL migrations, read from
  the files shipped in the package, so ``manage.py migrate`` installs and upgrades the
  schema; ``manage.py migrate pgqueue zero`` drops the ``pgqueue`` schema and every job
  in it;
- enqueue on Django's connection: ``task.using(connection=django.db.connection)``, and
  a plain ``task.enqueue()`` uses Django's connection (``PGQUEUE["DATABASE"]``) too.
  Inside ``transaction.atomic()`` the job row is part of that transaction: it exists
  iff the block commits; a rolled-back inner ``atomic()`` (a savepoint) discards the
  jobs enqueued inside it. No ``on_commit`` hook or in-process pending list is used;
- ``manage.py pgqueue_worker`` (the options of ``pgqueue worker``);
- a read-only admin for ``pgqueue.jobs`` with retry and cancel actions;
- the web dashboard behind Django's staff login:
  ``path("queue/", pgqueue.contrib.django.dashboard.dashboard_urls())``;
- a ``django.tasks`` backend: :class:`pgqueue.contrib.django.backend.PgQueueBackend`.

Settings (all optional)::

    PGQUEUE = {
        "APP": "myproject.jobs:app",  # the pgqueue.App whose tasks the worker runs;
                                      # default: one App shared by the tasks backend
        "DATABASE": "default",        # Django database alias pgqueue uses
        "DEFAULT_CONNECTION": True,   # task.enqueue() without connection= uses Django's
    }

An App without a DSN of its own gets the one of ``PGQUEUE["DATABASE"]``.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

__all__ = ["conninfo", "get_app", "settings"]

_lock = threading.Lock()
_app: Any = None


def settings() -> dict[str, Any]:
    """``settings.PGQUEUE`` with defaults filled in."""
    from django.conf import settings as dj
    out = {"APP": None, "DATABASE": "default", "DEFAULT_CONNECTION": True}
    out.update(getattr(dj, "PGQUEUE", None) or {})
    return out


def conninfo(alias: str | None = None) -> str:
    """A libpq connection string for the Django database ``alias`` (default
    ``PGQUEUE["DATABASE"]``), built from ``DATABASES`` exactly as Django connects.

    :raises ImproperlyConfigured: the database is not PostgreSQL.
    """
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    alias = alias or settings()["DATABASE"]
    wrapper = connections[alias]
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(f"pgqueue needs PostgreSQL; database {alias!r} is "
                                   f"{wrapper.vendor}")
    params = wrapper.get_connection_params()
    known = {d.keyword.decode() for d in pq.Conninfo.get_defaults()}
    return make_conninfo(**{k: v for k, v in params.items()
                            if k in known and v is not None and isinstance(v, (str, int))})


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    return obj


def adopt(app: Any) -> Any:
    """Give ``app`` the DSN of Django's database if it has none; returns ``app``."""
    if app._dsn is None:
        app._dsn = conninfo()
    return app


def get_app() -> Any:
    """The project's :class:`pgqueue.App`: ``PGQUEUE["APP"]`` if set, else one App
    shared by the ``django.tasks`` backend and ``manage.py pgqueue_worker``, connected to
    ``PGQUEUE["DATABASE"]``.

    :raises ImproperlyConfigured: ``PGQUEUE["APP"]`` does not name a ``pgqueue.App``.
    """
    global _app
    if _app is not None:
        return _app
    import pgqueue
    from django.core.exceptions import ImproperlyConfigured
    with _lock:
        if _app is None:
            spec = settings()["APP"]
            if spec:
                try:
                    app = _import(spec)
                except (ImportError, AttributeError) as e:
                    raise ImproperlyConfigured(f"PGQUEUE['APP'] = {spec!r}: {e}") from e
                if not isinstance(app, pgqueue.App):
                    raise ImproperlyConfigured(f"PGQUEUE['APP'] = {spec!r} is a "
                                               f"{type(app).__name__}, not a pgqueue.App")
            else:
                app = pgqueue.App()
            _app = adopt(app)
    return _app
