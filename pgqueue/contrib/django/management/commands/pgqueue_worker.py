"""``manage.py pgqueue_worker``: ``pgqueue worker`` with Django's settings loaded.

Options are those of ``pgqueue worker`` (read from the command line tool itself, so
they never drift apart), plus ``--database``; ``--app`` defaults to
``PGQUEUE["APP"]`` or the App of the ``django.tasks`` backend. Before starting, the
``tasks`` module of every installed app is imported, so their ``@task`` functions
(``django.tasks``) are registered and claimed.

Each sync job runs between two ``django.db.close_old_connections()`` calls in its
worker thread, as a request would: connections past ``CONN_MAX_AGE`` or left broken
by the task are closed, healthy ones are reused.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError

from pgqueue import cli

#: where the App to run is published for the CLI's ``--app`` loader
_APP_SPEC = "pgqueue.contrib.django.management.commands.pgqueue_worker:current_app"
current_app: Any = None


def _worker_options() -> list[click.Option]:
    return [p for p in cli.worker.params if isinstance(p, click.Option) and p.name != "app_spec"]


def _with_django_connections(fn):
    """Wrap a sync task function with close_old_connections() before and after."""
    if getattr(fn, "_pgqueue_django_wrapped", False) or inspect.iscoroutinefunction(fn):
        return fn
    from django.db import close_old_connections

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()
    wrapper._pgqueue_django_wrapped = True  # type: ignore[attr-defined]
    return wrapper


class Command(BaseCommand):
    help = ("Run pgqueue jobs until SIGTERM/SIGINT (graceful), with Django's settings; "
            "the options of `pgqueue worker`.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("--app", dest="app_spec", default=None, metavar="MODULE[:ATTR]",
                            help="The pgqueue.App to run (default: PGQUEUE['APP'], else the "
                                 "App of the django.tasks backend).")
        parser.add_argument("--database", default=None,
                            help="Django database alias to connect to (default: "
                                 "PGQUEUE['DATABASE']).")
        parser.add_argument("--pgqueue-log-level", default="INFO",
                            choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        for opt in _worker_options():
            kwargs: dict[str, Any] = {"dest": opt.name, "help": opt.help or ""}
            if opt.is_flag:
                kwargs["action"] = "store_true"
            else:
                if opt.multiple:
                    kwargs["action"] = "append"
                kwargs["default"] = None
                if opt.default is not None and not opt.multiple:
                    kwargs["help"] += f" [default: {opt.default}]"
            parser.add_argument(*opt.opts, *opt.secondary_opts, **kwargs)

    def handle(self, *args: Any, **options: Any) -> None:
        global current_app
        from django.utils.module_loading import autodiscover_modules

        from pgqueue.contrib.django import _import, adopt, conninfo, get_app, settings

        autodiscover_modules("tasks")
        backend_apps = self._load_backends()
        if options["app_spec"]:
            app = adopt(_import(options["app_spec"]))
        elif settings()["APP"] or not backend_apps:
            app = get_app()
        else:
            app = backend_apps[0]
        for t in app.tasks.values():
            if t.fn is not None and not t.is_async:
                t.fn = _with_django_connections(t.fn)
        current_app = app

        argv = ["--dsn", app._dsn or conninfo(options["database"] or settings()["DATABASE"]),
                "--log-level", options["pgqueue_log_level"], "worker", "--app", _APP_SPEC]
        for opt in _worker_options():
            value = options.get(opt.name)
            if value is None or value is False:
                continue
            flag = opt.opts[-1]
            if opt.is_flag:
                argv.append(flag)
            elif opt.multiple:
                for v in value:
                    argv += [flag, str(v)]
            else:
                argv += [flag, str(value)]
        try:
            cli.main.main(args=argv, prog_name="manage.py pgqueue_worker",
                          standalone_mode=False)
        except click.ClickException as e:
            raise CommandError(e.format_message()) from None
        except SystemExit as e:
            if e.code not in (0, None):
                raise

    @staticmethod
    def _load_backends() -> list[Any]:
        """The Apps of the configured pgqueue ``django.tasks`` backends."""
        from django.conf import settings
        out = []
        for alias, conf in (getattr(settings, "TASKS", None) or {}).items():
            if conf.get("BACKEND", "").startswith("pgqueue.contrib.django."):
                try:
                    from django.tasks import task_backends
                except ImportError:
                    from django_tasks import task_backends
                out.append(task_backends[alias].app)
        return out
