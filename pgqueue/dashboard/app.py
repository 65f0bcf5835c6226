"""The dashboard's ASGI application: pages (GET) and actions (POST), over one pool.

Pages: ``/`` overview, ``/jobs`` (filters, keyset pages), ``/jobs/{id}``, ``/workflows``,
``/workflows/{id}`` (an SVG graph), ``/batches``, ``/batches/{id}`` (counts, callback,
members), ``/queues/limits?name=``, ``/schedules``, ``/workers``. Actions, each a POST
that needs the page's CSRF token and is refused in read-only mode: retry or cancel a
job, bulk retry or cancel of a filter (``/jobs/bulk``: a confirmation with the count,
then one statement), pause or resume a queue, set or clear its limits, pause, resume or
trigger a schedule. Each action is logged on the ``pgqueue.dashboard`` logger with the
user who did it.

Queries live in ``sql/dashboard.sql`` (reads) and ``sql/queries.sql`` (the actions the
command line runs too). Connections never prepare statements: the list filters are
optional parameters that must fold away at planning.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._options import _validate_options
from .._sql import named, q
from ..errors import PgQueueError
from ..limits import QueueLimits, check_concurrency, parse_rate, rate_text
from ._security import (CSRF_COOKIE, CSRF_FIELD, TOKEN_COOKIE, Auth, Csrf, SecurityHeaders,
                        authenticate, token_auth)
from ._svg import throughput_chart, workflow_graph

log = logging.getLogger("pgqueue.dashboard")

STATES = ("pending", "scheduled", "available", "running", "retryable", "completed",
          "discarded", "cancelled")
UNFINISHED = ("pending", "scheduled", "available", "retryable", "running")
RETRYABLE = ("discarded", "cancelled", "retryable", "scheduled")
PAGE = 50
MAX_PAGE = 500
MAX_ID = 2**63 - 1
#: steps drawn in a workflow graph; a larger workflow lists the rest
GRAPH_STEPS = 300
CONNECTION_OPTIONS = {"autocommit": True, "prepare_threshold": None,
                      "application_name": "pgqueue dashboard"}
#: the request's own connection when the dashboard runs without a pool (pool_size=0)
_request_connection: contextvars.ContextVar[psycopg.AsyncConnection | None] = (
    contextvars.ContextVar("pgqueue_dashboard_connection", default=None))
FILTERS = ("state", "queue", "task", "workflow", "partition_key", "schedule", "created_from",
           "created_to")


def dq(name: str) -> str:
    """The query named ``name`` in ``sql/dashboard.sql``."""
    return named("dashboard.sql")[name]


class BadRequest(Exception):
    """A parameter the dashboard cannot use; answered with 400 and the reason."""


def _int(value: str | None, what: str, lo: int = 1, hi: int = MAX_ID) -> int | None:
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or not lo <= int(value) <= hi:
        raise BadRequest(f"{what} must be a whole number from {lo} to {hi}")
    return int(value)


def _time(value: str | None, what: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{what} must be a date and time like 2024-05-01T12:00") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _text(value: str | None, what: str) -> str | None:
    if not value:
        return None
    if len(value) > 512 or "\x00" in value:
        raise BadRequest(f"{what} is not a valid name")
    return value


def _queue_name(form: Any) -> str:
    """The form's queue name, checked as every queue name is (the CLI could not address
    a longer one)."""
    name = _text(form.get("name"), "queue")
    if name is None:
        raise BadRequest("which queue? (the form's name field is empty)")
    try:
        _validate_options(queue=name)
    except PgQueueError as e:
        raise BadRequest(str(e)) from None
    return name


def parse_filters(params: Any) -> dict[str, Any]:
    """The job list's filters from a query string or a form; raises :class:`BadRequest`."""
    state = params.get("state") or None
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    return {"state": state, "queue": _text(params.get("queue"), "queue"),
            "task": _text(params.get("task"), "task"),
            "workflow": _int(params.get("workflow"), "workflow"),
            "partition_key": _text(params.get("partition_key"), "partition_key"),
            "schedule": _text(params.get("schedule"), "schedule"),
            "created_from": _time(params.get("created_from"), "created_from"),
            "created_to": _time(params.get("created_to"), "created_to")}


LIMIT_FIELDS = ("concurrency", "rate", "partition_concurrency", "partition_rate")


def limits_text(row: dict[str, Any]) -> list[str]:
    """A queue's limits as short phrases (``concurrency 5``, ``rate 20/1s``...)."""
    out = []
    if row.get("concurrency") is not None:
        out.append(f"concurrency {row['concurrency']}")
    rate = rate_text(row.get("rate_limit"), row.get("rate_period"))
    if rate:
        out.append(f"rate {rate}")
    if row.get("partition_concurrency") is not None:
        out.append(f"per key {row['partition_concurrency']}")
    rate = rate_text(row.get("partition_rate_limit"), row.get("partition_rate_period"))
    if rate:
        out.append(f"per key rate {rate}")
    return out


def limits_form(row: dict[str, Any]) -> dict[str, str]:
    """The limits form's values for a queue's row (empty: no limit)."""
    c, pc = row.get("concurrency"), row.get("partition_concurrency")
    return {"concurrency": "" if c is None else str(c),
            "rate": rate_text(row.get("rate_limit"), row.get("rate_period")) or "",
            "partition_concurrency": "" if pc is None else str(pc),
            "partition_rate": rate_text(row.get("partition_rate_limit"),
                                        row.get("partition_rate_period")) or ""}


def parse_limits(name: str, form: Any) -> QueueLimits:
    """The limits form (empty field: no limit); raises :class:`BadRequest`."""
    values: dict[str, Any] = {}
    for field in LIMIT_FIELDS:
        raw = (form.get(field) or "").strip()
        if field.endswith("rate"):
            try:
                values[field] = parse_rate(raw) if raw else None
            except (ValueError, PgQueueError) as e:
                raise BadRequest(f"{field.replace('_', ' ')}: {e}") from None
        else:
            n = _int(raw, field.replace("_", " "), 1, 2**31 - 1)
            values[field] = check_concurrency(n, field)
    return QueueLimits(name=name, concurrency=values["concurrency"],
                       rate_limit=values["rate"],
                       partition_concurrency=values["partition_concurrency"],
                       partition_rate_limit=values["partition_rate"])


def _query_string(filters: dict[str, Any], **extra: Any) -> str:
    raw = {k: (v.isoformat() if isinstance(v, dt.datetime) else v)
           for k, v in {**filters, **extra}.items() if v is not None}
    return urlencode(raw)


# -- template helpers --------------------------------------------------------------

def _moment(value: Any) -> dt.datetime | None:
    """A timestamp of the job row or of an errors entry (ISO text), else None."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, dt.datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _ts(value: Any) -> str:
    moment = _moment(value)
    if moment is None:      # not a time (an errors entry written by hand): as it is
        return "" if value is None else str(value)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if s < 0:
        return f"in {_age(-seconds)}"
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} m"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _since(value: dt.datetime | None, now: dt.datetime) -> str:
    return "" if value is None else _age((now - value).total_seconds())


#: order of events that carry the same time
_EVENT_RANK = {"enqueued": 0, "due": 1, "started": 2, "failed": 3, "cancel": 4, "finished": 5}


def _timeline(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's events in time order: ``{"kind", "at", ...}`` (``at`` None for an
    errors entry without a readable time, kept after the events before it)."""
    waiting = job["state"] in ("scheduled", "retryable", "pending", "available")
    events: list[dict[str, Any]] = [
        {"kind": "enqueued", "at": job["created_at"]},
        {"kind": "due", "at": job["run_at"], "waiting": waiting}]
    errors = job["errors"] if isinstance(job["errors"], list) else []
    for e in errors:
        if isinstance(e, dict):
            events.append({"kind": "failed", "at": _moment(e.get("at")),
                           "attempt": e.get("attempt"), "type": e.get("type"),
                           "message": e.get("message")})
    if job["started_at"] is not None:
        events.append({"kind": "started", "at": job["started_at"], "attempt": job["attempt"]})
    if job["cancel_requested_at"] is not None:
        events.append({"kind": "cancel", "at": job["cancel_requested_at"]})
    if job["finished_at"] is not None:
        events.append({"kind": "finished", "at": job["finished_at"], "state": job["state"]})
    last = job["created_at"]
    for e in events:       # an entry without a time stays after the one before it
        e["key"] = e["at"] if e["at"] is not None else last
        last = e["key"]
    events.sort(key=lambda e: (e["key"], _EVENT_RANK[e["kind"]]))
    return events


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pgqueue.dashboard", "templates"),
        autoescape=True,
        trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ts=_ts, age=_age, json=_json)
    env.globals.update(since=_since, states=STATES)
    return env


# -- the application ---------------------------------------------------------------

class Dashboard:
    """The pages and actions, over one lazily opened connection pool."""

    def __init__(self, dsn: str, *, read_only: bool, auth: Auth | None,
                 pool_size: int = 4, csrf_key: bytes | None = None):
        self.dsn = dsn
        self.read_only = read_only
        self.auth = auth
        self.csrf = Csrf(csrf_key)
        self.pool_size = pool_size
        self.env = _environment()
        self._pool: AsyncConnectionPool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> AsyncConnectionPool:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    pool = AsyncConnectionPool(
                        self.dsn, min_size=1, max_size=self.pool_size, open=False,
                        kwargs=CONNECTION_OPTIONS, configure=_configure)
                    await pool.open(wait=True, timeout=15)
                    self._pool = pool
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def fetch(self, sql: str, params: dict | None = None) -> list[dict]:
        if self.pool_size == 0:
            # one connection per request, opened at its first query and closed by guard()
            # (hosts that run each request in a new event loop, such as Django under WSGI)
            conn = _request_connection.get()
            if conn is None:
                conn = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=15,
                                                             **CONNECTION_OPTIONS)
                await _configure(conn)
                _request_connection.set(conn)
            return await _fetch(conn, sql, params)
        async with (await self.pool()).connection() as conn:
            return await _fetch(conn, sql, params)

    async def fetchone(self, sql: str, params: dict | None = None) -> dict | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    # -- rendering ---------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        token, new_cookie = self.csrf.token_for(request)
        base = request.scope.get("root_path", "").rstrip("/")
        html = self.env.get_template(template).render(
            request=request, base=base, csrf_field=CSRF_FIELD, csrf_token=token,
            read_only=self.read_only, user=request.scope.get("pgqueue_user"),
            here=request.url.path + ("?" + request.url.query if request.url.query else ""),
            **{"live": False, **context})
        response = HTMLResponse(html, status_code=status)
        response.headers["cache-control"] = "no-store"
        if new_cookie:
            response.set_cookie(CSRF_COOKIE, new_cookie, httponly=True, samesite="strict",
                                path=base or "/")
        return response

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, status_code=status,
                           message=message)

    def back(self, request: Request, target: Any) -> RedirectResponse:
        """303 to ``target`` if it is a path of this dashboard, else to the overview."""
        base = request.scope.get("root_path", "").rstrip("/")
        if (not isinstance(target, str) or not target.startswith(base + "/")
                or target.startswith("//") or "\\" in target or "\r" in target
                or "\n" in target):
            target = base + "/"
        return RedirectResponse(target, status_code=303)

    # -- the guard around every endpoint ------------------------------------------

    def guard(self, endpoint: Callable[[Request], Awaitable[Response]], *,
              action: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            reset = _request_connection.set(None)
            try:
                return await self._guarded(endpoint, action, request)
            finally:
                conn = _request_connection.get()
                _request_connection.reset(reset)
                if conn is not None:
                    await conn.close()
        return guarded

    async def _guarded(self, endpoint: Callable[[Request], Awaitable[Response]],
                       action: bool, request: Request) -> Response:
        try:
            user = await authenticate(self.auth, request)
            if user is None:
                if request.method == "POST":
                    log.warning("dashboard: refused unauthenticated POST %s from %s",
                                request.url.path, _client(request))
                return self.render(request, "login.html", status=401,
                                   wrong=False, next=request.url.path)
            request.scope["pgqueue_user"] = user
            if action:
                if self.read_only:
                    return self.error(request, 403,
                                      "This dashboard is read-only: actions are off.")
                form = await request.form()
                if any(not isinstance(v, str) for _, v in form.multi_items()):
                    return self.error(request, 400, "The dashboard's forms take text "
                                      "fields only, not files.")
                if not self.csrf.valid(request, form.get(CSRF_FIELD)):
                    log.warning("dashboard: refused POST %s without a valid CSRF token "
                                "(user %s, from %s)", request.url.path, user,
                                _client(request))
                    return self.error(request, 403, "The form's CSRF token is missing "
                                      "or stale: reload the page and try again.")
                request.scope["pgqueue_form"] = form
            return await endpoint(request)
        except BadRequest as e:
            return self.error(request, 400, str(e))
        except psycopg.OperationalError as e:
            log.error("dashboard: database unavailable: %s", str(e).strip())
            return self.error(request, 503, "The database does not answer; retry in "
                              "a moment.")

    def audit(self, request: Request, what: str) -> None:
        log.info("dashboard action: %s by %s from %s", what,
                 request.scope.get("pgqueue_user"), _client(request))

    # -- pages -----------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        queues = await self.fetch(dq("overview_queues"))
        finished = await self.fetch(dq("overview_throughput"))
        totals = await self.fetchone(dq("overview_totals"))
        by_queue: dict[str, dict] = {r["queue"]: r for r in queues}
        for r in finished:
            row = by_queue.setdefault(r["queue"], {
                "queue": r["queue"], "pending": 0, "ready": 0, "waiting": 0, "running": 0,
                "oldest_ready_seconds": None, "paused": False, "held_back": 0})
            row[r["state"]] = row.get(r["state"], 0) + r["jobs"]
        rows = [by_queue[k] for k in sorted(by_queue)]
        for row in rows:
            for state in ("completed", "discarded", "cancelled"):
                row.setdefault(state, 0)
            row["limits"] = limits_text(row)
        return self.render(request, "overview.html", queues=rows, totals=totals,
                           chart=throughput_chart(finished), live=True)

    async def queue_limits(self, request: Request) -> Response:
        name = _text(request.query_params.get("name"), "queue")
        if name is None:
            raise BadRequest("which queue? (the name parameter is empty)")
        row = await self.fetchone(dq("queue_limits"), {"name": name}) or {"name": name}
        return self.render(request, "queue_limits.html", name=name, row=row,
                           limits=limits_text(row), form=limits_form(row))

    async def jobs(self, request: Request) -> Response:
        filters = parse_filters(request.query_params)
        limit = _int(request.query_params.get("limit"), "limit", 1, MAX_PAGE) or PAGE
        sort = request.query_params.get("sort") or "id"
        if sort not in ("id", "run_at"):
            raise BadRequest("sort must be id or run_at")
        if sort == "run_at" and filters["state"] not in ("scheduled", "retryable"):
            raise BadRequest("sorting by run_at needs the state filter scheduled or "
                             "retryable (the jobs waiting for their time)")
        params = dict(filters, limit=limit + 1)
        if sort == "id":
            params["before_id"] = _int(request.query_params.get("before"), "before")
            rows = await self.fetch(dq("jobs_page"), params)
        else:
            after = request.query_params.get("after") or ""
            run_at, _, job_id = after.rpartition(",")
            params["after_run_at"] = _time(run_at, "after") if after else None
            params["after_id"] = _int(job_id, "after") if after else None
            if after and (params["after_run_at"] is None or params["after_id"] is None):
                raise BadRequest("after must be a run_at and an id, as the next link gives")
            rows = await self.fetch(dq("jobs_page_by_run_at"), params)
        more = len(rows) > limit
        rows = rows[:limit]
        next_url = None
        if more:
            last = rows[-1]
            cursor = ({"before": last["id"]} if sort == "id"
                      else {"after": f"{last['run_at'].isoformat()},{last['id']}"})
            extra = {"sort": sort if sort != "id" else None,
                     "limit": limit if limit != PAGE else None, **cursor}
            next_url = "?" + _query_string(filters, **extra)
        first_url = "?" + _query_string(filters, sort=sort if sort != "id" else None)
        raw = {k: request.query_params.get(k, "") for k in FILTERS}
        return self.render(request, "jobs.html", jobs=rows, filters=filters, raw=raw,
                           sort=sort, next_url=next_url, first_url=first_url,
                           filter_query=_query_string(filters), paged=bool(
                               request.query_params.get("before")
                               or request.query_params.get("after")))

    async def job(self, request: Request) -> Response:
        job_id = _int(request.path_params["id"], "job id")
        job = await self.fetchone(dq("job_detail"), {"id": job_id})
        if job is None:
            return self.error(request, 404, f"No job {job_id} (pruned, or never enqueued).")
        return self.render(request, "job.html", job=job, now=job["now"],
                           timeline=_timeline(job), live=job["state"] in UNFINISHED)

    async def workflows(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        if state not in (None, "running", "completed", "failed", "cancelled"):
            raise BadRequest("state must be running, completed, failed or cancelled")
        before = _int(request.query_params.get("before"), "before")
        rows = await self.fetch(dq("workflows_page"),
                                {"state": state, "before_id": before, "limit": PAGE + 1})
        next_url = None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            next_url = "?" + urlencode({k: v for k, v in
                                        {"state": state, "before": rows[-1]["id"]}.items()
                                        if v is not None})
        return self.render(request, "workflows.html", workflows=rows, state=state,
                           next_url=next_url)

    async def workflow(self, request: Request) -> Response:
        wf_id = _int(request.path_params["id"], "workflow id")
        wf = await self.fetchone(dq("workflow"), {"id": wf_id})
        if wf is None:
            return self.error(request, 404, f"No workflow {wf_id}.")
        steps = await self.fetch(dq("workflow_steps"), {"id": wf_id, "limit": GRAPH_STEPS + 1})
        more = len(steps) > GRAPH_STEPS
        steps = steps[:GRAPH_STEPS]
        return self.render(request, "workflow.html", wf=wf, steps=steps, more=more,
                           graph=workflow_graph(steps), live=wf["state"] == "running")

    async def batches(self, request: Request) -> Response:
        state = request.query_params.get("state") or None
        if state not in (None, "open", "sealed", "finished"):
            raise BadRequest("state must be open, sealed or finished")
        before = _int(request.query_params.get("before"), "before")
        rows = await self.fetch(dq("batches_page"),
                                {"state": state, "before_id": before, "limit": PAGE + 1})
        next_url = None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            next_url = "?" + urlencode({k: v for k, v in
                                        {"state": state, "before": rows[-1]["batch_id"]}.items()
                                        if v is not None})
        return self.render(request, "batches.html", batches=rows, state=state,
                           next_url=next_url)

    async def batch(self, request: Request) -> Response:
        batch_id = _int(request.path_params["id"], "batch id")
        b = await self.fetchone(dq("batch"), {"id": batch_id})
        if b is None:
            return self.error(request, 404, f"No batch {batch_id} (a workflow id that is "
                              "not a batch, or pruned).")
        after = _int(request.query_params.get("after"), "after")
        members = await self.fetch(dq("batch_members"),
                                   {"id": batch_id, "after_id": after, "limit": PAGE + 1})
        next_url = None
        if len(members) > PAGE:
            members = members[:PAGE]
            next_url = "?" + urlencode({"after": members[-1]["job_id"]})
        return self.render(request, "batch.html", b=b, members=members, next_url=next_url,
                           paged=after is not None, live=b["state"] != "finished")

    async def schedules(self, request: Request) -> Response:
        rows = await self.fetch(dq("schedules"))
        now = rows[0]["now"] if rows else None
        return self.render(request, "schedules.html", schedules=rows, now=now)

    async def workers(self, request: Request) -> Response:
        rows = await self.fetch(dq("workers"))
        return self.render(request, "workers.html", workers=rows, live=True)

    async def login(self, request: Request) -> Response:
        form = await request.form()
        nxt = form.get("next")
        make_cookie = getattr(self.auth, "login_cookie", None)
        token = form.get("token")
        cookie = make_cookie(token) if make_cookie and isinstance(token, str) else None
        if cookie is None:
            log.warning("dashboard: wrong token from %s", _client(request))
            return self.render(request, "login.html", status=401, wrong=True,
                               next=nxt if isinstance(nxt, str) else "/")
        response = self.back(request, nxt)
        base = request.scope.get("root_path", "").rstrip("/")
        response.set_cookie(TOKEN_COOKIE, cookie, httponly=True, samesite="strict",
                            path=base or "/")
        return response

    # -- actions -----------------------------------------------------------------------

    async def job_action(self, request: Request) -> Response:
        job_id = _int(request.path_params["id"], "job id")
        action = request.path_params["action"]
        if action not in ("retry", "cancel"):
            return self.error(request, 404, "Jobs have two actions: retry and cancel.")
        form = request.scope["pgqueue_form"]
        try:
            row = await self.fetchone(q(action), {"id": job_id})
        except (psycopg.errors.UniqueViolation,
                psycopg.errors.ObjectNotInPrerequisiteState) as e:
            return self.error(request, 409, str(e).strip().splitlines()[0])
        state = next(iter(row.values())) if row else None
        if state is None:
            return self.error(request, 404, f"No job {job_id}.")
        self.audit(request, f"{action} job {job_id} (now {state})")
        return self.back(request, form.get("next"))

    async def bulk_confirm(self, request: Request) -> Response:
        action = request.query_params.get("action")
        if action not in ("retry", "cancel"):
            raise BadRequest("action must be retry or cancel")
        filters = parse_filters(request.query_params)
        states = list(RETRYABLE if action == "retry" else UNFINISHED)
        row = await self.fetchone(dq("jobs_bulk_count"), dict(filters, states=states))
        raw = {k: request.query_params.get(k, "") for k in FILTERS}
        return self.render(request, "bulk.html", action=action, count=row["count"],
                           filters=filters, raw=raw, filter_query=_query_string(filters))

    async def bulk(self, request: Request) -> Response:
        form = request.scope["pgqueue_form"]
        action = form.get("action")
        if action not in ("retry", "cancel"):
            raise BadRequest("action must be retry or cancel")
        filters = parse_filters(form)
        try:
            row = await self.fetchone(dq(f"jobs_bulk_{action}"), filters)
        except (psycopg.errors.UniqueViolation,
                psycopg.errors.ObjectNotInPrerequisiteState) as e:
            return self.error(request, 409, "Nothing was retried: "
                              + str(e).strip().splitlines()[0])
        refused = row.get("refused") or 0
        self.audit(request, f"bulk {action} of {row['count']} jobs matching "
                            f"{_query_string(filters) or 'every job'}"
                            + (f"; {refused} refused ({row['reason']})" if refused else ""))
        return self.back(request, request.scope.get("root_path", "").rstrip("/") + "/jobs?"
                         + _query_string(filters))

    async def queue_action(self, request: Request) -> Response:
        form = request.scope["pgqueue_form"]
        name = _queue_name(form)
        if request.path_params["action"] not in ("pause", "resume"):
            return self.error(request, 404, "Queues have two actions: pause and resume.")
        paused = request.path_params["action"] == "pause"
        await self.fetch(q("queue_pause"), {"name": name, "paused": paused})
        self.audit(request, f"{'pause' if paused else 'resume'} queue {name!r}")
        return self.back(request, form.get("next"))

    async def queue_limits_action(self, request: Request) -> Response:
        form = request.scope["pgqueue_form"]
        name = _queue_name(form)
        if form.get("clear"):
            limits = QueueLimits(name=name)
        else:
            limits = parse_limits(name, form)
        try:
            await self.fetch(q("set_queue_limits"), limits.params("operator"))
        except psycopg.errors.InvalidParameterValue as e:
            raise BadRequest(str(e).strip().splitlines()[0]) from None
        self.audit(request, f"set limits of queue {name!r}: "
                            f"{', '.join(limits_text(limits.params(None))) or 'none'}")
        return self.back(request, form.get("next"))

    async def schedule_action(self, request: Request) -> Response:
        form = request.scope["pgqueue_form"]
        name = _text(form.get("name"), "schedule")
        if name is None:
            raise BadRequest("which schedule? (the form's name field is empty)")
        action = request.path_params["action"]
        if action not in ("pause", "resume", "trigger"):
            return self.error(request, 404, "Schedules have three actions: pause, resume "
                              "and trigger.")
        try:
            if action == "trigger":
                row = await self.fetchone(q("schedule_trigger"), {"name": name})
                what = f"trigger schedule {name!r} (job {next(iter(row.values()))})"
            else:
                await self.fetch(q("schedule_pause"), {"name": name,
                                                       "paused": action == "pause"})
                what = f"{action} schedule {name!r}"
        except psycopg.errors.NoDataFound:
            return self.error(request, 404, f"No schedule named {name!r}.")
        self.audit(request, what)
        return self.back(request, form.get("next"))


async def _fetch(conn: psycopg.AsyncConnection, sql: str, params: dict | None) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(sql, params or {})
    return await cur.fetchall()


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # a page that cannot answer in time is a page to fix, not a load to keep running
    await conn.execute("set statement_timeout = '30s'")


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def create_app(dsn: str, *, read_only: bool = False, auth: Auth | str | None = None,
               pool_size: int = 4) -> Starlette:
    """The Starlette application; see :func:`pgqueue.dashboard.asgi_app`."""
    if isinstance(auth, str):
        auth = token_auth(auth)
    d = Dashboard(dsn, read_only=read_only, auth=auth, pool_size=pool_size)
    g = d.guard
    routes = [
        Route("/", g(d.overview)),
        Route("/jobs", g(d.jobs)),
        Route("/jobs/bulk", g(d.bulk_confirm)),
        Route("/jobs/bulk", g(d.bulk, action=True), methods=["POST"]),
        Route("/jobs/{id}", g(d.job)),
        Route("/jobs/{id}/{action}", g(d.job_action, action=True), methods=["POST"]),
        Route("/workflows", g(d.workflows)),
        Route("/workflows/{id}", g(d.workflow)),
        Route("/batches", g(d.batches)),
        Route("/batches/{id}", g(d.batch)),
        Route("/schedules", g(d.schedules)),
        Route("/schedules/{action}", g(d.schedule_action, action=True),
              methods=["POST"]),
        Route("/workers", g(d.workers)),
        Route("/queues/limits", g(d.queue_limits)),
        Route("/queues/limits", g(d.queue_limits_action, action=True), methods=["POST"]),
        Route("/queues/{action}", g(d.queue_action, action=True), methods=["POST"]),
        Route("/login", d.login, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(resources.files("pgqueue.dashboard")
                                                   / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=_lifespan(d))
    app.state.dashboard = d
    app.add_middleware(SecurityHeaders)
    return app


def _lifespan(d: Dashboard):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            await d.close()
    return lifespan
