"""``pgqueue`` command line (click). Thin over the library.

With no ``--dsn``, no ``PGQUEUE_DSN`` and no libpq environment (``PGHOST``, ...),
commands that need a database use the embedded PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
import re
import shutil
import sys
from typing import Any

import click
import psycopg
from psycopg.rows import dict_row

from . import migrate as migrate_mod
from . import roles as roles_mod
from . import serialization
from ._sql import q
from .app import App, resolve_dsn
from .errors import PgQueueError, SerializationError
from .job import refusal_message
from .retry import MAX_DELAY

log = logging.getLogger("pgqueue")


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhdw])?\s*$")


class Duration(click.ParamType):
    """A duration option, converted to seconds (float): ``500ms``, ``30s``, ``15m``,
    ``12h``, ``7d``, ``2w``.

    :param bare: whether a bare number (seconds) is accepted. Timing options accept one;
        retention and age options do not: a bare ``1`` could mean a second or a day, and
        pruning on a guess deletes data.
    :param min: the smallest value in seconds (inclusive).
    :param max: the largest value in seconds (default 100 years, the bound of a delay:
        PostgreSQL timestamps end in the year 294276).
    """

    name = "duration"

    def __init__(self, *, bare: bool = True, min: float = 0.0, max: float = MAX_DELAY):
        self.bare = bare
        self.min = min
        self.max = max

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            m = _DURATION.match(str(value))
            if not m or (m.group(2) is None and not self.bare):
                self.fail(f"{value!r} is not a duration "
                          + ("(seconds, or with a unit: 500ms, 30s, 15m, 12h, 7d, 2w)"
                             if self.bare else "with a unit, like 30s, 15m, 12h, 7d or 2w"),
                          param, ctx)
            seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
        if seconds < self.min:
            self.fail(f"{value!r} is shorter than the minimum of {self.min:g} s", param, ctx)
        if not seconds <= self.max:
            self.fail(f"{value!r} is longer than the maximum of {self.max:g} s "
                      f"({self.max / 31_557_600:.0f} years)", param, ctx)
        return seconds


#: timing options (a bare number is seconds) and ages that select data (a unit required)
SECONDS = Duration()
AGE = Duration(bare=False)


#: a job or workflow id: a positive bigint (ids start at 1)
ID = click.IntRange(1, 2**63 - 1)


def parse_duration(text: str, option: str = "--older-than") -> float:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` -> seconds; a unit is required."""
    try:
        return AGE.convert(text, None, None)
    except click.BadParameter as e:
        raise click.BadParameter(e.message, param_hint=option) from None


#: every CLI connection's options: one-shot commands gain nothing from prepared
#: statements, and through a transaction pooler a statement prepared on one server
#: connection is missing on the next
CONNECTION: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}


class Ctx:
    def __init__(self, dsn: str | None):
        self._dsn = dsn
        self._resolved: str | None = None

    @property
    def dsn(self) -> str:
        if self._resolved is None:
            try:
                self._resolved = resolve_dsn(self._dsn)
            except PgQueueError as e:
                raise click.ClickException(str(e)) from None
        return self._resolved

    def connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.dsn, **CONNECTION)
        except psycopg.OperationalError as e:
            raise click.ClickException(f"cannot connect to the database: {str(e).strip()}\n"
                                       "Check --dsn / PGQUEUE_DSN.") from None


pass_ctx = click.make_pass_decorator(Ctx)


_GLOBAL_OPTIONS = ("--dsn", "--log-level")


class _Group(click.Group):
    """Turns database errors that have a known remedy into one-line click errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as e:
            if e.option_name in _GLOBAL_OPTIONS and e.ctx is not None:
                command = e.ctx.command_path.split(" ", 1)[-1]   # without the program name
                raise click.UsageError(
                    f"{e.option_name} is an option of `pgqueue` itself: put it before the "
                    f"command, as in `pgqueue {e.option_name} ... {command} ...`",
                    e.ctx) from None
            raise
        except (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedTable,
                psycopg.errors.UndefinedFunction) as e:
            raise click.ClickException(
                f"the pgqueue schema is missing or older than this pgqueue "
                f"({str(e).strip().splitlines()[0]}); run `pgqueue migrate`") from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise click.ClickException(
                f"{str(e).strip().splitlines()[0]}: this role lacks the grant; `pgqueue "
                "roles` prints the grants of the producer, worker and operator roles"
                ) from None
        except psycopg.OperationalError as e:
            raise click.ClickException(f"database error: {str(e).strip()}\n"
                                       "Check --dsn / PGQUEUE_DSN and that the server is up."
                                       ) from None
        except UnicodeEncodeError as e:
            # argv bytes that are not UTF-8 arrive as lone surrogates, which no database
            # text can hold
            raise click.UsageError(
                f"an argument is not valid UTF-8 (at {e.object[e.start:e.end]!r}); pass "
                "names and values as UTF-8 text", ctx) from None
        except psycopg.errors.NumericValueOutOfRange as e:
            raise click.UsageError(f"a number is out of range: {str(e).strip()}",
                                   ctx) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dsn", envvar="PGQUEUE_DSN", default=None, metavar="DSN",
              help="PostgreSQL connection string or URL [env: PGQUEUE_DSN]. Default: libpq's "
                   "environment (PGHOST, ...), else the embedded PostgreSQL.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="pgqueue")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, log_level: str) -> None:
    """pgqueue: a job queue that needs nothing but PostgreSQL."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(dsn)


# -- migrate ---------------------------------------------------------------------

@main.command()
@click.option("--status", is_flag=True, help="List migrations and whether each is applied.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@click.option("--target", type=int, default=None,
              help="Stop at this version. Migrations are forward-only: a version at or below "
                   "the applied one changes nothing.")
@pass_ctx
def migrate(obj: Ctx, status: bool, dry_run: bool, target: int | None) -> None:
    """Apply pending schema migrations (each in its own transaction, under an advisory lock)."""
    with obj.connect() as conn:
        try:
            if status:
                for m, applied in migrate_mod.status(conn):
                    _echo(f"{m.version:04d}  {'applied' if applied else 'pending':8}  {m.name}")
                return
            if dry_run:
                pending = migrate_mod.apply(conn, target=target, dry_run=True)
                _echo(migrate_mod.render(pending) if pending else "-- nothing to apply")
                return
            done = migrate_mod.apply(conn, target=target)
        except PgQueueError as e:
            raise click.ClickException(str(e)) from None
    if done:
        for m in done:
            _echo(f"applied {m.name}")
    else:
        _echo(f"schema is up to date (version {migrate_mod.latest_version()})")


@main.command()
@click.option("--producer", default=None, metavar="ROLE",
              help="Role that enqueues (jobs, bulk, workflows) and reads jobs.")
@click.option("--worker", "worker_role", default=None, metavar="ROLE",
              help="Role of `pgqueue worker`: claim, finish, heartbeat, rescue, prune, "
                   "schedules; no DDL.")
@click.option("--operator", default=None, metavar="ROLE",
              help="Role that cancels, retries, prunes, pauses queues and schedules.")
@click.option("--apply", "do_apply", is_flag=True,
              help="Run the grants (as the schema's owner, in one transaction) instead of "
                   "printing them.")
@pass_ctx
def roles(obj: Ctx, producer: str | None, worker_role: str | None, operator: str | None,
          do_apply: bool) -> None:
    """Print (or --apply) the least-privilege grants for the given role names.

    Create the roles first; run this as the role that ran `pgqueue migrate`, again
    after every migration. Each role's grants start from a revoke of everything it held
    on the pgqueue schema.
    """
    names = {k: v for k, v in (("producer", producer), ("worker", worker_role),
                                ("operator", operator)) if v is not None}
    if not names:
        raise click.UsageError("name at least one role: --producer, --worker or --operator")
    try:
        statements = roles_mod.grants(**names)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if not do_apply:
        _echo(roles_mod.render(statements), nl=False)
        return
    with obj.connect() as conn:
        try:
            roles_mod.apply(conn, **names)
        except psycopg.errors.UndefinedObject as e:
            raise click.ClickException(f"{str(e).strip().splitlines()[0]}: create the role "
                                       "first") from None
    _echo(f"granted: {', '.join(f'{k} {v}' for k, v in names.items())}")


# -- worker ----------------------------------------------------------------------

def load_app(spec: str) -> App:
    """Import ``module[:attr]`` (attr defaults to ``app``) and return the App."""
    module_name, _, attr = spec.partition(":")

    def a_path() -> click.BadParameter:
        dotted = module_name.removesuffix(".py").strip("./").replace(os.sep, ".").replace(
            "/", ".")
        return click.BadParameter(
            f"{spec!r} looks like a file path; --app takes a module name, as import "
            f"would: --app {dotted}{':' + attr if attr else ''} (run from the directory "
            "that holds it, or add that directory to PYTHONPATH)", param_hint="--app")
    if not module_name.strip():
        raise click.BadParameter(f"{spec!r} names no module; give MODULE or MODULE:ATTR, "
                                 "e.g. --app myproject.tasks", param_hint="--app")
    if module_name.startswith(".") or "/" in module_name or os.sep in module_name:
        raise a_path()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if module_name.endswith(".py"):
            raise a_path() from None
        hint = ""
        if getattr(e, "name", None) and module_name.split(".")[0] == e.name.split(".")[0]:
            hint = (f" (looked in the current directory {os.getcwd()} and on sys.path; run "
                    "from the directory that holds it or add that directory to PYTHONPATH)")
        raise click.BadParameter(f"cannot import {module_name!r}: {e}{hint}",
                                 param_hint="--app") from None
    obj: Any = module
    for part in (attr or "app").split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise click.BadParameter(f"{module_name!r} has no attribute {attr or 'app'!r}",
                                     param_hint="--app")
    if not isinstance(obj, App):
        raise click.BadParameter(f"{spec!r} is a {type(obj).__name__}, not a pgqueue.App",
                                 param_hint="--app")
    return obj


@main.command()
@click.option("--app", "app_spec", required=True, metavar="MODULE[:ATTR]",
              help="Module holding the pgqueue.App (ATTR defaults to 'app').")
@click.option("-q", "--queue", "queues", multiple=True, help="Queue to claim from (repeatable; default all).")
@click.option("-c", "--concurrency", default=10, show_default=True, type=click.IntRange(1),
              help="Jobs run at once (threads; with process tasks, one child each). "
                   "The worker refuses more than it can run.")
@click.option("--poll-interval", default=5.0, show_default=True, type=Duration(min=0.01),
              help="Seconds between claims without a notification.")
@click.option("--shutdown-grace", default=30.0, show_default=True, type=SECONDS,
              help="Seconds running jobs may finish after SIGTERM before they are handed back.")
@click.option("--heartbeat-interval", default=2.0, show_default=True, type=Duration(min=0.05),
              help="Seconds between heartbeats; at most a third of --stale-after.")
@click.option("--stale-after", default=10.0, show_default=True, type=Duration(min=0.2),
              help="Seconds without heartbeat after which a worker's jobs are rescued.")
@click.option("--no-listen", is_flag=True,
              help="Poll only (no LISTEN, no prepared statements): for PgBouncer transaction mode.")
@click.option("--name", default=None, help="Label shown in `pgqueue workers`.")
@click.option("--schema-wait", default=30.0, show_default=True, type=SECONDS,
              help="Seconds to wait for `pgqueue migrate` before refusing an outdated schema.")
@click.option("--metrics-port", default=None, type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (needs pgqueue-jobs[metrics]).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address the metrics server binds (0.0.0.0: every interface).")
@click.option("--metrics-interval", default=15.0, show_default=True, type=Duration(min=0.1),
              help="Seconds between refreshes of the database-derived metrics.")
@click.option("--retention", default="7d", show_default=True, metavar="DURATION",
              help="Delete finished jobs older than this (30s, 15m, 12h, 7d); 'off' keeps them.")
@click.option("--maintenance-interval", default=60.0, show_default=True,
              type=Duration(min=0.1),
              help="Seconds between maintenance rounds (pruning, long-transaction check).")
@click.option("--xmin-warn-after", default=60.0, show_default=True, type=SECONDS,
              help="Warn when a transaction holding back vacuum is older than this (s).")
@click.option("--no-scheduler", is_flag=True,
              help="Do not fire periodic jobs from this worker (others still do; the app's "
                   "declarations are still written).")
@click.option("--executor", type=click.Choice(["thread", "process"]), default="thread",
              show_default=True,
              help="Where def tasks without their own executor= run: threads of this "
                   "process, or a pool of --concurrency child processes (a timeout kills "
                   "the child; a task holding the GIL cannot delay heartbeats).")
@click.option("--max-tasks-per-child", type=click.IntRange(1), default=None,
              help="Replace a child process after this many jobs (process executor).")
@click.option("--max-memory-per-child", type=click.FloatRange(1), default=None,
              metavar="MIB",
              help="Replace a child process whose resident memory exceeds this many MiB "
                   "after a job (process executor).")
@pass_ctx
def worker(obj: Ctx, app_spec: str, queues: tuple[str, ...], concurrency: int,
           poll_interval: float, shutdown_grace: float, heartbeat_interval: float,
           stale_after: float, no_listen: bool, name: str | None, schema_wait: float,
           metrics_port: int | None, metrics_host: str, metrics_interval: float,
           retention: str, maintenance_interval: float, xmin_warn_after: float,
           no_scheduler: bool, executor: str, max_tasks_per_child: int | None,
           max_memory_per_child: float | None) -> None:
    """Run jobs until SIGTERM/SIGINT (graceful: finish, then hand back, exit 0)."""
    from .worker import Worker
    prune_after = None if retention.strip().lower() in ("off", "none", "never") \
        else parse_duration(retention, "--retention")
    app = load_app(app_spec)
    if app._dsn is None and obj._dsn is not None:
        app._dsn = obj._dsn
    try:
        w = Worker(app, queues=list(queues) or None, concurrency=concurrency,
                   poll_interval=poll_interval, shutdown_grace=shutdown_grace,
                   heartbeat_interval=heartbeat_interval, stale_after=stale_after,
                   listen=not no_listen, name=name, schema_wait=schema_wait,
                   metrics_port=metrics_port, metrics_host=metrics_host,
                   metrics_interval=metrics_interval, prune_after=prune_after,
                   maintenance_interval=maintenance_interval, xmin_warn_after=xmin_warn_after,
                   scheduler=not no_scheduler, executor=executor, app_spec=app_spec,
                   max_tasks_per_child=max_tasks_per_child,
                   max_memory_per_child=max_memory_per_child)
        code = w.run()
    except PgQueueError as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


# -- enqueue ---------------------------------------------------------------------

def _json_arg(value: str | None, kind: type, what: str) -> str:
    """A ``--args``/``--kwargs`` value checked as the Python API checks arguments."""
    if value is None:
        return "[]" if kind is list else "{}"

    def no_constant(name: str) -> Any:
        raise click.BadParameter(f"{name} is not a JSON number (JSON has no NaN or "
                                 "Infinity); pass a string or null", param_hint=what)
    try:
        parsed = json.loads(value, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint=what) from None
    except RecursionError:
        raise click.BadParameter("is nested too deeply to read; flatten the structure",
                                 param_hint=what) from None
    except ValueError:     # an integer longer than Python reads (4300 digits)
        raise click.BadParameter("holds an integer of more than "
                                 f"{getattr(sys, 'get_int_max_str_digits', lambda: 4300)()} "
                                 "digits, too long to read; pass long numbers as strings",
                                 param_hint=what) from None
    if not isinstance(parsed, kind):
        raise click.BadParameter(f"must be a JSON {'array' if kind is list else 'object'}",
                                 param_hint=what)
    try:
        # the checks of the Python API (NUL, lone surrogates, 1e999, size, and on the
        # values that tagged JSON ({"$type": ...}) stands for: a naive datetime, a bad
        # date); the JSON itself is stored as given, so tagged values keep their meaning
        serialization.dumps(serialization.decode(parsed), what.lstrip("-"))
    except SerializationError as e:
        raise click.BadParameter(str(e), param_hint=what) from None
    except (ValueError, TypeError, KeyError) as e:
        raise click.BadParameter(f"holds a tagged value that cannot be read: {e}",
                                 param_hint=what) from None
    # written as the Python API writes it: a float of 1e16 or more keeps a fraction
    # (jsonb would turn 1e+16 into the integer 10000000000000000)
    return serialization.json_text(parsed)


@main.command()
@click.argument("task")
@click.option("--args", "args_json", default=None, metavar="JSON", help="Positional arguments, a JSON array.")
@click.option("--kwargs", "kwargs_json", default=None, metavar="JSON", help="Keyword arguments, a JSON object.")
@click.option("--queue", default=None,
              help="Queue to put the job in. Default: the task's declared queue (with "
                   "--app), else 'default'.")
@click.option("--priority", default=None, type=click.IntRange(-32768, 32767),
              help="Higher runs first. Default: the task's declared priority (with --app), "
                   "else 0.")
@click.option("--delay", default=None, type=SECONDS, help="Seconds from now (database clock).")
@click.option("--max-attempts", default=None, type=click.IntRange(1, 2**31 - 2),
              help="Attempts before the job is discarded (when not given, the task's "
                   "declared max_attempts, applied by the worker).")
@click.option("--unique-key", default=None,
              help="At most one unfinished job per key, across all tasks and queues; if one "
                   "holds the key, print its id and enqueue nothing.")
@click.option("--partition-key", default=None,
              help="The job's partition key (tenant, customer...): the queue's partition "
                   "limits apply per key, and keys are served in turn.")
@click.option("--app", "app_spec", default=None, metavar="MODULE[:ATTR]",
              help="Import this pgqueue.App (ATTR defaults to 'app'): TASK must be one of its "
                   "tasks, the arguments must bind to its function, and its declared queue "
                   "and priority apply; an App created with a DSN is enqueued to there, as "
                   "its workers read. Without --app nothing is checked.")
@click.option("--unregistered", is_flag=True,
              help="With --app: enqueue TASK although the app does not register it (a task "
                   "that a worker of another service runs).")
@pass_ctx
def enqueue(obj: Ctx, task: str, args_json: str | None, kwargs_json: str | None,
            queue: str | None, priority: int | None, delay: float | None,
            max_attempts: int | None, unique_key: str | None, partition_key: str | None,
            app_spec: str | None, unregistered: bool) -> None:
    """Enqueue a job of TASK (a registered task name) and print its id.

    With --app, TASK must be registered in that app (or --unregistered given) and the
    arguments must bind to its function; the task's declared queue and priority apply
    unless --queue/--priority say otherwise. Without --app the command cannot know the
    tasks: any name is enqueued, to queue 'default' with priority 0 unless told.
    """
    from .app import (
        _validate_key,
        _validate_options,
        _validate_task_name,
        _validate_unique_key,
        _validate_when,
        unknown_task_message,
    )
    for hint, check in (("TASK", lambda: _validate_task_name(task)),
                        ("--queue", lambda: _validate_options(queue=queue)),
                        ("--delay", lambda: _validate_when(delay, None)),
                        ("--unique-key", lambda: _validate_unique_key(unique_key)),
                        ("--partition-key",
                         lambda: _validate_key(partition_key, "partition_key"))):
        try:
            check()
        except PgQueueError as e:
            raise click.BadParameter(str(e), param_hint=hint) from None
    args_text = _json_arg(args_json, list, "--args")
    kwargs_text = _json_arg(kwargs_json, dict, "--kwargs")
    declared = None
    if app_spec is not None:
        app = load_app(app_spec)
        if app._dsn:            # the database its workers use (as `pgqueue worker --app`)
            obj = Ctx(app._dsn)
        declared = app.tasks.get(task)
        if declared is None and not unregistered:
            raise click.BadParameter(unknown_task_message(
                app, task, "pass --unregistered to enqueue a task that a worker of another "
                "service runs", where=app_spec), param_hint="TASK")
    if declared is not None:
        try:
            declared.check_args(json.loads(args_text), json.loads(kwargs_text))
        except TypeError as e:
            raise click.BadParameter(str(e), param_hint="--args/--kwargs") from None
    params = {"task": task, "args": args_text, "kwargs": kwargs_text,
              "queue": queue if queue is not None else (declared.queue if declared else "default"),
              "priority": priority if priority is not None else (
                  declared.priority if declared else 0),
              "run_at": None, "delay": delay,
              "max_attempts": max_attempts, "unique_key": unique_key,
              "meta": None, "partition_key": partition_key, "debounce": None, "debounce_key": None,
              "debounce_max": None}
    with obj.connect() as conn:
        (job_id,) = conn.execute(q("enqueue"), params).fetchone()
    _echo(job_id)


# -- jobs ------------------------------------------------------------------------

def _fmt_time(t: dt.datetime | None) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, dt.datetime):
        return _fmt_time(v)
    if isinstance(v, float):
        return f"{v:.1f}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return " ".join(str(v).split())       # one line per row, whatever the value holds


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    """Print ``rows`` as aligned columns (headers upper-cased). On a terminal the lines
    fit its width: the widest columns are shortened first, their values ending in "…".
    Piped or redirected (and no ``COLUMNS`` set), nothing is shortened."""
    if not rows:
        _echo("(none)")
        return
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    term = (shutil.get_terminal_size((120, 20)).columns
            if sys.stdout.isatty() or os.environ.get("COLUMNS")
            else sum(widths) + 2 * len(widths))
    while sum(widths) + 2 * (len(widths) - 1) > term:
        i = max(range(len(widths)), key=widths.__getitem__)
        if widths[i] <= 6:
            break      # a very narrow terminal: cut the lines instead
        widths[i] -= 1

    def fit(v: str, w: int) -> str:
        return v.ljust(w) if len(v) <= w else v[:w - 1] + "…"

    _echo("  ".join(fit(c.upper(), w) for c, w in zip(cols, widths, strict=True))
          .rstrip()[:term])
    for row in cells:
        _echo("  ".join(fit(v, w) for v, w in zip(row, widths, strict=True)).rstrip()[:term])


#: control characters a terminal would act on (ESC starts colour, title, cursor and
#: screen sequences; CR, BS and BEL rewrite or ring), from task names, queue names,
#: arguments and error messages that any producer wrote; newline and tab stay
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _echo(message: Any = None, **kwargs: Any) -> None:
    """``click.echo`` with control characters written as escapes (``\x1b``): what the
    CLI prints comes from the database, and must not drive the reader's terminal."""
    if isinstance(message, str):
        message = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", message)
    click.echo(message, **kwargs)


def _one_line(text: str) -> str:
    """``text`` on one line: its newlines written as ``\\n``."""
    return text.replace("\n", "\\n")


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, indent=2)


@main.group()
def jobs() -> None:
    """List, show, retry and cancel jobs."""


STATES = ["pending", "scheduled", "available", "running", "retryable", "completed",
          "discarded", "cancelled"]


@jobs.command("list")
@click.option("--state", default=None, type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--queue", default=None, help="Only jobs of this queue.")
@click.option("--task", default=None, help="Only jobs of this task name.")
@click.option("--since", default=None, metavar="DURATION",
              help="Only jobs enqueued within this long: 30s, 15m, 12h, 7d.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 2**62),
              help="Most jobs to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array).")
@pass_ctx
def jobs_list(obj: Ctx, state: str | None, queue: str | None, task: str | None,
              since: str | None, limit: int, as_json: bool) -> None:
    """Newest jobs first, filtered by state, queue, task and age."""
    seconds = parse_duration(since, "--since") if since is not None else None
    with obj.connect() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(
            q("jobs_list"), {"state": state, "queue": queue, "task": task, "since": seconds,
                             "limit": limit}).fetchall()
    if as_json:
        _echo(_dump(rows))
    else:
        for r in rows:
            limit = r["max_attempts"] if r["max_attempts"] is not None else "task default"
            r["attempts"] = f"{r['attempt']}/{limit}"
        _table(rows, ["id", "queue", "task", "state", "attempts", "run_at", "finished_at",
                      "last_error"])


@jobs.command("show")
@click.argument("job_id", type=ID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON object).")
@pass_ctx
def jobs_show(obj: Ctx, job_id: int, as_json: bool) -> None:
    """Every column of a job, with each error's traceback."""
    with obj.connect() as conn:
        row = conn.cursor(row_factory=dict_row).execute(q("job_get"), {"id": job_id}).fetchone()
    if row is None:
        raise click.ClickException(f"no job with id {job_id}")
    if as_json:
        _echo(_dump(row))
        return
    for k, v in row.items():
        if k == "errors":
            continue
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
        _echo(f"{k:>20}: {_one_line(text)}")     # a newline in a value fakes a field
    for e in row["errors"]:
        _echo(f"\n--- attempt {e.get('attempt')} at {e.get('at')} on {e.get('worker')}: "
              + _one_line(f"{e.get('type')}: {e.get('message')}"))
        if e.get("traceback"):
            _echo(e["traceback"].rstrip())


@jobs.command("retry")
@click.argument("job_id", type=ID, required=False)
@click.option("--failed", is_flag=True, help="Retry every discarded job (see --queue, --task).")
@click.option("--queue", default=None, help="With --failed: only this queue.")
@click.option("--task", default=None, help="With --failed: only this task name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def jobs_retry(obj: Ctx, job_id: int | None, failed: bool, queue: str | None,
               task: str | None, as_json: bool) -> None:
    """Make job JOB_ID (discarded, cancelled, retryable or scheduled) available now, or
    with --failed every discarded job. A job out of attempts gets one more; a workflow
    step waits (pending) for dependencies that run again. A pending, running or
    completed job is left as it is: exit 1 with the reason."""
    if (job_id is None) == (not failed):
        raise click.UsageError("give a JOB_ID or --failed (one of them)")
    if job_id is not None and (queue or task):
        raise click.UsageError("--queue and --task go with --failed")
    with obj.connect() as conn:
        if job_id is not None:
            before = conn.execute("select state from pgqueue.jobs where id = %s",
                                  (job_id,)).fetchone()
            try:
                (state,) = conn.execute(q("retry"), {"id": job_id}).fetchone()
            except (psycopg.errors.UniqueViolation,
                    psycopg.errors.ObjectNotInPrerequisiteState) as e:
                raise click.ClickException(refusal_message(e)) from None
            if state is None:
                raise click.ClickException(f"no job with id {job_id}")
            if state in ("running", "completed") or before == ("pending",):
                raise click.ClickException(
                    f"job {job_id} is {state}: only discarded, cancelled, retryable or "
                    "scheduled jobs can be retried (enqueue a new job to run it again)")
            rows = [(job_id, state, None)]
        else:
            with conn.transaction():
                rows = conn.execute(q("retry_failed"), {"queue": queue, "task": task}).fetchall()
    if as_json:
        _echo(_dump([{"id": i, "state": st, **({"held_by": h} if h else {})}
                     for i, st, h in rows]))
    elif job_id is not None:
        _echo(f"job {job_id}: {rows[0][1]}"
              + (" (a workflow step: it runs once its dependencies have completed)"
                 if rows[0][1] == "pending" else ""))
    else:
        done = [i for i, _, h in rows if h is None]
        held = [(i, h) for i, _, h in rows if h is not None]
        _echo(f"retried {len(done)} discarded jobs"
              + (f": {', '.join(str(i) for i in done[:20])}"
                 + (", ..." if len(done) > 20 else "") if done else ""))
        if held:
            _echo(f"skipped {len(held)} whose unique_key an unfinished job holds: "
                  + ", ".join(f"{i} (held by {h})" for i, h in held[:20])
                  + (", ..." if len(held) > 20 else ""))


@jobs.command("cancel")
@click.argument("job_id", type=ID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def jobs_cancel(obj: Ctx, job_id: int, as_json: bool) -> None:
    """Cancel a job (a running job is asked to stop; its worker decides the outcome)."""
    with obj.connect() as conn:
        (state,) = conn.execute(q("cancel"), {"id": job_id}).fetchone()
    if state is None:
        raise click.ClickException(f"no job with id {job_id}")
    if as_json:
        _echo(_dump({"id": job_id, "state": state}))
    else:
        note = (" (asked to stop)" if state == "running" else
                " (already finished: not cancelled)" if state in ("completed", "discarded")
                else "")
        _echo(f"job {job_id}: {state}{note}")


# -- queues, workers, prune ----------------------------------------------------------

@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array).")
@click.option("--stale-after", default=10.0, show_default=True, type=SECONDS,
              help="Seconds without heartbeat after which a worker counts as dead, for "
                   "workers that did not record their own --stale-after.")
@click.pass_context
def queues(ctx: click.Context, as_json: bool, stale_after: float) -> None:
    """Queues: jobs by state, oldest ready job, paused, jobs no live worker can run."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    with obj.connect() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(
            q("queue_stats"), {"stale_after": stale_after}).fetchall()
    if as_json:
        _echo(_dump(rows))
    else:
        for r in rows:
            r["limits"] = _limits_text(r)
        _table(rows, ["queue", "ready", "waiting", "pending", "running", "completed",
                      "discarded", "cancelled", "oldest_ready_seconds", "paused", "no_worker",
                      "limits", "held_back"])


def _limits_text(r: dict[str, Any]) -> str:
    """One queue's limits, as `pgqueue queues set` takes them ("-": none)."""
    from .limits import rate_text as _rate_text
    parts = []
    if r.get("concurrency") is not None:
        parts.append(f"concurrency={r['concurrency']}")
    rate = _rate_text(r.get("rate_limit"), r.get("rate_period"))
    if rate:
        parts.append(f"rate={rate}")
    if r.get("partition_concurrency") is not None:
        parts.append(f"partition-concurrency={r['partition_concurrency']}")
    rate = _rate_text(r.get("partition_rate_limit"), r.get("partition_rate_period"))
    if rate:
        parts.append(f"partition-rate={rate}")
    return " ".join(parts) or "-"


class _Limit(click.ParamType):
    """A concurrency (int >= 1) or `none`."""

    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or value == "none":
            return "none"
        try:
            n = int(value)
        except (TypeError, ValueError):
            n = 0
        if not 1 <= n <= 2**31 - 1:
            self.fail(f"expected an integer >= 1 or none, got {value!r}", param, ctx)
        return n


class _Rate(click.ParamType):
    """A rate N/PERIOD (20/1s, 1000/1h) or `none`."""

    name = "N/PERIOD|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from .limits import parse_rate
        try:
            rate = parse_rate(value)
        except (ValueError, PgQueueError) as e:
            self.fail(str(e), param, ctx)
        return "none" if rate is None else rate


@queues.command("set")
@click.argument("name")
@click.option("--concurrency", type=_Limit(), default=None,
              help="Most jobs of the queue running at once, across all workers (none: no limit).")
@click.option("--rate", type=_Rate(), default=None,
              help="Most jobs started per sliding window, e.g. 20/1s, 1000/1h (none: no limit).")
@click.option("--partition-concurrency", type=_Limit(), default=None,
              help="Most running jobs per partition key (none: no limit).")
@click.option("--partition-rate", type=_Rate(), default=None,
              help="Most starts per partition key per window, e.g. 5/1s (none: no limit).")
@click.option("--reset", is_flag=True,
              help="Clear every limit and hand the queue back to the app's declaration "
                   "(app.queue), applied at the next worker start.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def queues_set(obj: Ctx, name: str, concurrency: Any, rate: Any, partition_concurrency: Any,
               partition_rate: Any, reset: bool, as_json: bool) -> None:
    """Set limits of queue NAME at run time (workers apply them at their next claim).

    Options not given keep their value; `none` clears one. An operator's setting wins
    over the app's `app.queue(...)` declaration until --reset.
    """
    from .app import _validate_options
    from .limits import QueueLimits
    try:
        _validate_options(queue=name)
    except PgQueueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    if reset and any(v is not None for v in (concurrency, rate, partition_concurrency,
                                            partition_rate)):
        raise click.UsageError("--reset clears every limit: give no other limit with it")
    with obj.connect() as conn, conn.transaction():
        conn.execute("select pg_advisory_xact_lock(hashtext('pgqueue.queues set'))")
        known = _queue_known(conn, name)
        row = conn.execute(q("queue_limits_get"), {"queue": name}).fetchone()
        cur = list(row[:6]) if row else [None] * 6

        def pick(new: Any, old: Any) -> Any:
            return old if new is None else (None if new == "none" else new)
        old_rate = (cur[1], cur[2]) if cur[1] is not None else None
        old_prate = (cur[4], cur[5]) if cur[4] is not None else None
        limits = QueueLimits(name=name) if reset else QueueLimits(
            name=name, concurrency=pick(concurrency, cur[0]), rate_limit=pick(rate, old_rate),
            partition_concurrency=pick(partition_concurrency, cur[3]),
            partition_rate_limit=pick(partition_rate, old_prate))
        conn.execute(q("set_queue_limits"), limits.params(None if reset else "operator"))
    out = {"queue": name, "concurrency": limits.concurrency,
           "rate_limit": limits.rate_limit[0] if limits.rate_limit else None,
           "rate_period": limits.rate_limit[1] if limits.rate_limit else None,
           "partition_concurrency": limits.partition_concurrency,
           "partition_rate_limit": (limits.partition_rate_limit[0]
                                    if limits.partition_rate_limit else None),
           "partition_rate_period": (limits.partition_rate_limit[1]
                                     if limits.partition_rate_limit else None)}
    _warn_unknown_queue(name, known)
    if as_json:
        _echo(_dump(out))
    elif reset:
        _echo(f"queue {name}: {_limits_text(out)} (the app's app.queue() declaration, "
              "if any, applies again from the next worker start)")
    else:
        _echo(f"queue {name}: {_limits_text(out)}")


def _queue_known(conn: psycopg.Connection, name: str) -> bool:
    return bool(conn.execute(q("queue_known"), {"queue": name}).fetchone()[0])


def _warn_unknown_queue(name: str, known: bool) -> None:
    """On stderr: a setting for a queue nothing knows is most likely a misspelt name."""
    if not known:
        _echo(f"note: no job waits in queue {name!r}, no worker claims it by name and "
              "no app declared it: check the spelling (`pgqueue queues` lists the "
              "queues); the setting is kept for the queue's jobs to come", err=True)


def _set_paused(obj: Ctx, name: str, paused: bool, as_json: bool) -> None:
    from .app import _validate_options
    try:
        _validate_options(queue=name)   # the rules of an enqueued job's queue
    except PgQueueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    with obj.connect() as conn, conn.transaction():
        known = _queue_known(conn, name)
        conn.execute(q("queue_pause"), {"name": name, "paused": paused})
        if not paused:   # wake the workers now rather than at their next poll
            conn.execute("select pg_notify('pgqueue_jobs', %s)", (name,))
    _warn_unknown_queue(name, known)
    if as_json:
        _echo(_dump({"queue": name, "paused": paused}))
    else:
        _echo(f"queue {name}: {'paused' if paused else 'active'}")


@queues.command("pause")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def queues_pause(obj: Ctx, name: str, as_json: bool) -> None:
    """Stop claiming from queue NAME (stored in pgqueue.queues: survives restarts;
    running jobs finish). A queue with no jobs yet can be paused too: its jobs wait
    from the first one on."""
    _set_paused(obj, name, True, as_json)


@queues.command("resume")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def queues_resume(obj: Ctx, name: str, as_json: bool) -> None:
    """Resume claiming from queue NAME (workers are woken at once)."""
    _set_paused(obj, name, False, as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array).")
@click.option("--stale-after", default=10.0, show_default=True, type=SECONDS,
              help="Seconds without heartbeat after which a worker counts as dead, for "
                   "workers that did not record their own --stale-after.")
@click.option("--all", "show_all", is_flag=True, help="Include dead workers not yet removed.")
@pass_ctx
def workers(obj: Ctx, as_json: bool, stale_after: float, show_all: bool) -> None:
    """Live worker processes: their queues, heartbeat age (s) and busy slots."""
    with obj.connect() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(q("workers_list")).fetchall()
    for r in rows:
        own = r.pop("stale_after")   # the worker's own setting, when it recorded one
        r["alive"] = (r["heartbeat_age"] is not None
                      and r["heartbeat_age"] <= (own if own is not None else stale_after))
    if not show_all:
        rows = [r for r in rows if r["alive"]]
    if as_json:
        _echo(_dump(rows))
    else:
        for r in rows:
            r["queues"] = r["queues"] or "all"
            r["busy"] = f"{r['running']}/{r['concurrency']}"
        _table(rows, ["name", "id", "queues", "busy", "heartbeat_age", "alive", "started_at"])


@main.command()
@click.option("--older-than", required=True, help="Age of finished jobs to delete, with a unit: 30s, 15m, 12h, 7d, 2w.")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["completed", "discarded", "cancelled"]),
              help="States to prune (repeatable; default all three).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def prune(obj: Ctx, older_than: str, states: tuple[str, ...], as_json: bool) -> None:
    """Delete finished jobs older than a given age."""
    seconds = parse_duration(older_than)
    chosen = list(states) or ["completed", "discarded", "cancelled"]
    with obj.connect() as conn:
        (n,) = conn.execute(q("prune"), {"older_than": seconds, "states": chosen}).fetchone()
    if as_json:
        _echo(_dump({"deleted": n, "older_than_seconds": seconds, "states": chosen}))
    else:
        _echo(f"deleted {n} jobs")


# -- monitoring ------------------------------------------------------------------

@main.command()
@click.option("--stale-after", default=10.0, show_default=True, type=SECONDS,
              help="Seconds without heartbeat after which a worker is not counted alive.")
@pass_ctx
def metrics(obj: Ctx, stale_after: float) -> None:
    """Print the database-derived Prometheus metrics once (text exposition format):
    unfinished jobs by queue and state, oldest available age, paused queues, live
    workers. Needs pgqueue-jobs[metrics]."""
    try:
        from .metrics import render_database_metrics
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    try:
        text = render_database_metrics(obj.dsn, stale_after)
    except psycopg.Error as e:
        raise click.ClickException(f"cannot read metrics: {str(e).strip()}") from None
    _echo(text.decode(), nl=False)


@main.command()
@click.option("--max-heartbeat-age", default="30s", show_default=True, metavar="DURATION",
              help="Unhealthy when no worker heartbeated within this long (0s: skip the check).")
@click.option("--max-job-age", default="5m", show_default=True, metavar="DURATION",
              help="Unhealthy when a due job of an active queue has waited longer (0s: skip).")
@click.option("--max-unserved-age", default="1m", show_default=True, metavar="DURATION",
              help="Unhealthy when a due job that no live worker runs (its task or queue "
                   "unknown to every worker) has waited longer (0s: skip).")
@click.option("--max-schedule-lag", default="1m", show_default=True, metavar="DURATION",
              help="Unhealthy when an active schedule's slot is overdue by longer (0s: skip).")
@click.option("-q", "--queue", "queues", multiple=True,
              help="Check only these queues and the workers serving them (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def check(obj: Ctx, max_heartbeat_age: str, max_job_age: str, max_unserved_age: str,
          max_schedule_lag: str, queues: tuple[str, ...], as_json: bool) -> None:
    """Health check for probes and cron: exit 0 when healthy, else exit 1 with the
    reasons: database unreachable, schema not at this code's version, no worker
    heartbeat within --max-heartbeat-age, a due job waiting longer than --max-job-age,
    or a due job that no live worker runs waiting longer than --max-unserved-age
    (paused queues are not checked)."""
    hb_limit = parse_duration(max_heartbeat_age, "--max-heartbeat-age")
    age_limit = parse_duration(max_job_age, "--max-job-age")
    unserved_limit = parse_duration(max_unserved_age, "--max-unserved-age")
    lag_limit = parse_duration(max_schedule_lag, "--max-schedule-lag")
    qs = list(queues) or None
    reasons: list[str] = []
    report: dict[str, Any] = {"schema_version": None,
                              "schema_expected": migrate_mod.latest_version(),
                              "heartbeat_age_seconds": None, "oldest_available_seconds": {}}
    try:
        conn = psycopg.connect(obj.dsn, connect_timeout=10, **CONNECTION)
    except psycopg.Error as e:
        reasons.append(f"database: cannot connect: {str(e).strip()}")
        conn = None
    if conn is not None:
        with conn:
            try:
                report["schema_version"] = migrate_mod.check_schema(conn)
            except PgQueueError as e:
                reasons.append(f"schema: {e}")
                applied = migrate_mod.applied_versions(conn)
                report["schema_version"] = max(applied) if applied else None
            try:
                if hb_limit > 0:
                    (age,) = conn.execute(q("check_heartbeat"), {"queues": qs}).fetchone()
                    report["heartbeat_age_seconds"] = age
                    if age is None:
                        reasons.append("workers: no worker is running (none has "
                                       "registered, or every one stopped)"
                                       + (f" for queues {', '.join(qs)}" if qs else ""))
                    elif age > hb_limit:
                        reasons.append(f"workers: no heartbeat for {age:.0f} s "
                                       f"(limit {hb_limit:g} s)")
                if age_limit > 0:
                    rows = conn.execute(q("check_oldest"), {"queues": qs}).fetchall()
                    report["oldest_available_seconds"] = dict(rows)
                    for queue, age in rows:
                        if age > age_limit:
                            reasons.append(f"queue {queue}: a due job has waited {age:.0f} s "
                                           f"(limit {age_limit:g} s)")
                if unserved_limit > 0:
                    rows = conn.execute(q("check_unserved"),
                                        {"queues": qs, "limit": unserved_limit}).fetchall()
                    report["unserved"] = [{"queue": qn, "task": t, "jobs": n, "age_seconds": a}
                                          for qn, t, n, a in rows]
                    for queue, task, n, age in rows:
                        reasons.append(f"queue {queue}: {n} due job(s) of task {task} that no "
                                       f"live worker runs, oldest waiting {age:.0f} s (limit "
                                       f"{unserved_limit:g} s); start a worker whose app "
                                       "registers that task and claims that queue")
                if lag_limit > 0:
                    rows = conn.execute(q("schedules_overdue"), {"lag": lag_limit}).fetchall()
                    report["overdue_schedules"] = [{"name": n, "next_slot": t, "lag_seconds": a}
                                                   for n, t, a in rows]
                    for name, _, lag in rows:
                        reasons.append(f"schedule {name}: its slot is overdue by {lag:.0f} s "
                                       f"(limit {lag_limit:g} s); is any worker running?")
            except psycopg.Error as e:
                if not any(r.startswith("schema:") for r in reasons):
                    reasons.append(f"database: {str(e).strip()}")
    report["ok"] = not reasons
    report["reasons"] = reasons
    if as_json:
        _echo(_dump(report))
    elif reasons:
        for r in reasons:
            _echo(f"UNHEALTHY {r}", err=True)
    else:
        hb = report["heartbeat_age_seconds"]
        waits = report["oldest_available_seconds"].values()
        _echo(f"ok: schema version {report['schema_version']}"
              + (f", last heartbeat {hb:.1f} s ago" if hb is not None else "")
              + (f", oldest due job waiting {max(waits):.1f} s" if waits
                 else ", no due job waiting"))
    if reasons:
        sys.exit(1)


# -- embedded --------------------------------------------------------------------

@main.group()
def embedded() -> None:
    """The local PostgreSQL used when no DSN is configured: one server, one database
    per project (the project directory, or $PGQUEUE_EMBEDDED_NAME)."""


def _embedded_server(start: bool) -> Any:
    """The default embedded server, started if ``start`` and it is set up but stopped."""
    from .embedded import EmbeddedServer
    s = EmbeddedServer()
    if not (s.data / "PG_VERSION").exists():
        raise click.ClickException(f"no embedded server is set up in {s.directory} (the "
                                   "first command that needs a database sets it up)")
    if start and not s.is_running():
        try:
            s.start()
        except PgQueueError as e:
            raise click.ClickException(str(e)) from None
        _echo(f"started the embedded server in {s.directory}", err=True)
    return s


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


@embedded.command("status")
def embedded_status() -> None:
    """This project, its database, where the server keeps its data, whether it runs
    and how to connect. Starts nothing."""
    from .embedded import NAME_ENV, PROJECT_MARKERS, EmbeddedServer, current_project
    s = EmbeddedServer()
    p = current_project()
    running = s.is_running()
    if p.key.startswith("name:"):
        project = f"{p.key[5:]!r} (from ${NAME_ENV})"
    elif p.how in PROJECT_MARKERS:
        project = f"{p.key} (holds {p.how}; ${NAME_ENV} overrides)"
    else:
        project = (f"{p.key} (the current directory: no {', '.join(PROJECT_MARKERS)} in it "
                   f"or above; ${NAME_ENV} overrides)")
    state = "server not running"
    if running:
        try:
            names = {d["name"] for d in s.databases()}
            state = "exists" if p.database in names else "created by the first command " \
                                                         "that needs it"
        except psycopg.Error as e:
            state = f"unknown: {str(e).strip()}"
    dsn = s.dsn_for(p.database)
    try:
        psql = str(s.psql)
    except PgQueueError as e:
        psql = f"- ({e})"
    _echo(f"project:   {project}\n"
          f"database:  {p.database} ({state})\n"
          f"directory: {s.directory}\n"
          f"data:      {s.data}\n"
          f"running:   {'yes' if running else 'no'}\n"
          f"dsn:       {dsn}\n"
          f"psql:      {psql}\n"
          f"connect:   {psql} \"{dsn}\"\n"
          + ("stop:      pgqueue embedded stop (the server keeps running after each "
             "command, for every project)" if running else
             "start:     any command that needs the database starts it (pgqueue "
             "migrate, pgqueue worker, ...)"))


@embedded.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def embedded_list(as_json: bool) -> None:
    """The databases of the embedded server and the project of each (starts the server
    if it is stopped). `*` marks this project's."""
    from .embedded import current_project
    s = _embedded_server(start=True)
    mine = current_project().database
    rows = s.databases()
    if as_json:
        _echo(_dump([dict(r, current=r["name"] == mine) for r in rows]))
        return
    width = max(len("DATABASE"), *(len(str(r["name"])) for r in rows))
    _echo(f"  {'DATABASE':<{width}}  {'SIZE':>10}  PROJECT")
    for r in rows:
        key = r["key"]
        project = (f"name {key[5:]!r}" if isinstance(key, str) and key.startswith("name:")
                   else key if key is not None else "- (not a project's)")
        _echo(f"{'*' if r['name'] == mine else ' '} {r['name']:<{width}}  "
              f"{_mib(int(r['size'])):>10}  {project}")
    _echo(f"data: {s.data}")


@embedded.command("drop")
@click.argument("database", required=False)
@click.option("--force", is_flag=True, help="Disconnect the database's sessions (workers, "
                                            "shells) first.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def embedded_drop(database: str | None, force: bool, yes: bool) -> None:
    """Delete DATABASE (default: this project's) with all its jobs, from the embedded
    server (starts the server if it is stopped). `pgqueue embedded list` names them."""
    from .embedded import current_project
    s = _embedded_server(start=True)
    database = database or current_project().database
    if not yes:
        click.confirm(f"Drop database {database} and every job in it?", abort=True)
    try:
        s.drop_database(database, force=force)
    except PgQueueError as e:
        raise click.ClickException(str(e)) from None
    _echo(f"dropped {database}")


@embedded.command("stop")
def embedded_stop() -> None:
    """Stop the embedded server (every project's database on it). The next command
    that needs it starts it again."""
    from .embedded import EmbeddedServer
    s = EmbeddedServer()
    if not s.is_running():
        _echo(f"not running ({s.directory})")
        return
    s.stop()
    _echo(f"stopped the embedded server in {s.directory}")


# -- workflows -------------------------------------------------------------------------

@main.group()
def workflows() -> None:
    """Show workflows (chains, groups, chords, DAGs) and their steps."""


@workflows.command("show")
@click.argument("workflow_id", type=ID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def workflows_show(obj: Ctx, workflow_id: int, as_json: bool) -> None:
    """A workflow as a tree: each step's state, attempts and duration; for a batch, its
    state (open, sealed, finished), member counts and callback."""
    from .workflow import render
    with obj.connect() as conn:
        cur = conn.cursor(row_factory=dict_row)
        wf = cur.execute("select * from pgqueue.workflows where id = %s",
                         (workflow_id,)).fetchone()
        if wf is None:
            raise click.ClickException(f"no workflow with id {workflow_id}; "  # noqa: S608 - a message naming a query to type, not SQL that runs
                                       "list them with: select * from pgqueue.workflows")
        steps = cur.execute("select * from pgqueue.workflow_steps where workflow_id = %s "
                            "order by job_id", (workflow_id,)).fetchall()
        if wf.get("batch_seal_job_id") is not None:
            wf["batch"] = cur.execute("select * from pgqueue.batches where batch_id = %s",
                                      (workflow_id,)).fetchone()
    if as_json:
        _echo(_dump({"workflow": wf, "steps": steps}))
    else:
        _echo(render(wf, steps))


# -- schedules -----------------------------------------------------------------------

@main.group(invoke_without_command=True)
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Periodic jobs (pgqueue.schedules): list, show, pause, resume, trigger."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(schedules_list)


def _schedule_rows(obj: Ctx, name: str | None) -> list[dict[str, Any]]:
    with obj.connect() as conn:
        rows = conn.cursor(row_factory=dict_row).execute(
            q("schedules_list"), {"name": name}).fetchall()
    if name is not None and not rows:
        raise click.ClickException(f"no schedule named {name!r}; pgqueue schedules list "
                                   "shows them")
    for r in rows:
        r["expression"] = r["cron"] if r["cron"] is not None else f"every {r['every']:g}s"
    return rows


def _local(t: dt.datetime | None, tz: str) -> str:
    from zoneinfo import ZoneInfo
    if t is None:
        return "-"
    try:
        return t.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S %Z")
    except Exception:  # noqa: BLE001 - a zone this machine lacks
        return "?"


@schedules.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (a JSON array).")
@pass_ctx
def schedules_list(obj: Ctx, as_json: bool) -> None:
    """Every schedule: expression, time zone, next slot (UTC and local), last fired."""
    rows = _schedule_rows(obj, None)
    if as_json:
        _echo(_dump(rows))
        return
    for r in rows:
        r["next_utc"] = _fmt_time(r["next_slot"])
        r["next_local"] = _local(r["next_slot"], r["tz"])
        r["last_fired"] = _fmt_time(r["last_fired_at"])
        r["state"] = ("paused" if r["paused"] else "undeclared" if not r["declared"]
                      else "active")
    _table(rows, ["name", "task", "expression", "tz", "next_utc", "next_local",
                  "last_fired", "state"])


@schedules.command("show")
@click.argument("name")
@click.option("--next", "count", default=5, show_default=True, type=click.IntRange(0, 1000),
              help="How many coming slots to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def schedules_show(obj: Ctx, name: str, count: int, as_json: bool) -> None:
    """One schedule and its next COUNT slots, computed by the worker's own code."""
    from .schedule import Schedule, ScheduleError
    (r,) = _schedule_rows(obj, name)
    coming: list[dt.datetime] = []
    try:
        sched = Schedule(cron=r["cron"], every=r["every"], tz=r["tz"])
        start = r["next_slot"] or dt.datetime.now(dt.timezone.utc)
        if r["next_slot"] is not None and count:
            coming.append(r["next_slot"])
        it = sched.iter_after(start)
        while len(coming) < count:
            coming.append(next(it))
    except ScheduleError as e:
        r["error"] = str(e)
    r["coming"] = coming
    if as_json:
        _echo(_dump(r))
        return
    for k in ("name", "task", "expression", "tz", "args", "kwargs", "queue", "priority",
              "catch_up", "paused", "declared", "declared_by", "last_slot", "last_fired_at",
              "last_job_id"):
        # the arguments as the job gets them (JSON): an empty list is not a blank
        v = json.dumps(r[k], ensure_ascii=False) if k in ("args", "kwargs") else _cell(r[k])
        _echo(f"{k + ':':15} {v}")
    if r.get("error"):
        _echo(f"{'error:':15} {r['error']}")
    _echo("next slots:")
    for t in coming:
        _echo(f"  {_fmt_time(t)}  ({_local(t, r['tz'])})")


def _pause_schedule(obj: Ctx, name: str, paused: bool) -> None:
    with obj.connect() as conn:
        try:
            conn.execute(q("schedule_pause"), {"name": name, "paused": paused})
        except psycopg.errors.NoDataFound:
            raise click.ClickException(f"no schedule named {name!r}; pgqueue schedules list "
                                       "shows them") from None
    _echo(f"schedule {name}: {'paused' if paused else 'active'}")


@schedules.command("pause")
@click.argument("name")
@pass_ctx
def schedules_pause(obj: Ctx, name: str) -> None:
    """Stop firing schedule NAME (slots missed meanwhile follow its catch-up policy)."""
    _pause_schedule(obj, name, True)


@schedules.command("resume")
@click.argument("name")
@pass_ctx
def schedules_resume(obj: Ctx, name: str) -> None:
    """Fire schedule NAME again; also adopts a schedule no app declares any more."""
    _pause_schedule(obj, name, False)


@schedules.command("trigger")
@click.argument("name")
@pass_ctx
def schedules_trigger(obj: Ctx, name: str) -> None:
    """Enqueue one run of schedule NAME now, outside its slot series."""
    with obj.connect() as conn:
        try:
            (job_id,) = conn.execute(q("schedule_trigger"), {"name": name}).fetchone()
        except psycopg.errors.NoDataFound:
            raise click.ClickException(f"no schedule named {name!r}; pgqueue schedules list "
                                       "shows them") from None
    _echo(f"schedule {name}: enqueued job {job_id}")


def _register_optional() -> None:
    # the dashboard command imports its extra (starlette, uvicorn) only when it runs
    from .dashboard._command import dashboard
    main.add_command(dashboard)
    try:
        from .bench import bench
    except ImportError:  # pragma: no cover
        return
    main.add_command(bench)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
