"""``pgqueue dashboard``: serve the dashboard with uvicorn (imports the extra lazily)."""

from __future__ import annotations

import click

from ._security import LOOPBACK_NAMES, HostCheck, is_loopback


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any address other than loopback needs a token.")
@click.option("--port", default=8900, show_default=True, type=click.IntRange(0, 65535))
@click.option("--read-only", is_flag=True, help="Hide every action and refuse every POST.")
@click.option("--base-path", default="", metavar="PATH",
              help="Serve under this path prefix, e.g. /queue (behind a reverse proxy).")
@click.option("--token", envvar="PGQUEUE_DASHBOARD_TOKEN", default=None,
              help="Require this token (sign-in form or 'Authorization: Bearer') "
                   "[env: PGQUEUE_DASHBOARD_TOKEN].")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable): the name a "
                   "reverse proxy forwards, or this machine's. On loopback the dashboard "
                   "answers only localhost, 127.0.0.1 and ::1 otherwise (a page of another "
                   "site re-bound to 127.0.0.1 is refused); elsewhere, with --token, any "
                   "name unless this is given.")
@click.pass_obj
def dashboard(obj, host: str, port: int, read_only: bool, base_path: str,
              token: str | None, allowed_hosts: tuple[str, ...]) -> None:
    """Serve the web dashboard: queues, jobs, workflows, schedules, workers."""
    loopback = is_loopback(host)
    if not loopback and not token:
        raise click.UsageError(
            f"refusing to listen on {host} without authentication: anyone who can reach "
            "it could read job arguments and retry or cancel jobs. Pass --token (or set "
            "PGQUEUE_DASHBOARD_TOKEN), or listen on 127.0.0.1 and put it behind a proxy "
            "that authenticates")
    base_path = base_path.rstrip("/")
    if base_path and (not base_path.startswith("/") or "//" in base_path):
        raise click.BadParameter("must be a path like /queue", param_hint="--base-path")
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import RedirectResponse
        from starlette.routing import Mount, Route

        from .app import create_app
    except ImportError as e:
        from . import EXTRA_MISSING
        raise click.ClickException(f"{EXTRA_MISSING} ({e})") from None
    app = create_app(obj.dsn, read_only=read_only, auth=token or None)
    if base_path:
        inner = app

        async def to_base(request):
            return RedirectResponse(base_path + "/")
        app = Starlette(routes=[Route("/", to_base), Mount(base_path, inner)],
                        lifespan=inner.router.lifespan_context)
    if loopback or allowed_hosts:
        app = HostCheck(app, {host, *allowed_hosts, *(LOOPBACK_NAMES if loopback else ())})
    click.echo(f"pgqueue dashboard on http://{host}:{port}{base_path}/"
               f"{' (read-only)' if read_only else ''}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                server_header=False)
