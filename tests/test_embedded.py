"""The embedded PostgreSQL keeps projects apart: one server, one database per project.

Two projects with a task of the same name once shared the embedded server's only
database and ran each other's jobs. The unit tests pin how a project is found and
named; the last test starts a real embedded server (in its own directory, inside a
user namespace when run as root) and uses it from two project directories.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

import pgqueue
from pgqueue.app import LIBPQ_ENV
from pgqueue.cli import main
from pgqueue.migrate import check_schema
from pgqueue.embedded import (
    NAME_ENV,
    EmbeddedServer,
    current_project,
    database_name,
    project_dir,
)

VALID = re.compile(r"^[a-z][a-z0-9_]*_[0-9a-f]{10}$")


@pytest.fixture
def no_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing configured: commands fall back to the embedded server."""
    for k in ("PGQUEUE_DSN", NAME_ENV, *LIBPQ_ENV):
        monkeypatch.delenv(k, raising=False)


def make_project(root: Path, marker: str) -> Path:
    root.mkdir(parents=True)
    if marker == ".git":
        (root / ".git").mkdir()
    else:
        (root / marker).write_text("")
    (root / "src" / "deep").mkdir(parents=True)
    return root


# -- finding and naming the project (no server) -----------------------------------------

def test_project_is_the_nearest_ancestor_with_a_marker(tmp_path, no_dsn):
    outer = make_project(tmp_path / "outer", ".git")
    inner = make_project(outer / "libs" / "inner", "pyproject.toml")
    assert project_dir(outer / "src" / "deep") == (outer, ".git")
    assert project_dir(inner / "src") == (inner, "pyproject.toml")
    assert project_dir(outer / "libs") == (outer, ".git")
    bare = tmp_path / "scratch" / "dir"
    bare.mkdir(parents=True)
    assert project_dir(bare) == (bare, None)
    p = current_project(inner / "src" / "deep")
    assert (p.key, p.how) == (str(inner), "pyproject.toml")
    assert p.database == database_name(str(inner))


def test_database_names_are_valid_distinct_and_stable(tmp_path):
    a, b = str(tmp_path / "one" / "shop"), str(tmp_path / "two" / "shop")
    assert database_name(a) != database_name(b)
    assert database_name(a).startswith("shop_") and database_name(a) == database_name(a)
    # the name of an existing project's database never changes between versions
    assert database_name("/home/ada/src/shop") == "shop_2c146bae3c"
    for key in ("/srv/My Shop (v2)", "/x/" + "é" * 80, "/x/123", "/", "name:O'Brien; drop",
                "name:" + "x" * 200, "/x/\udcff"):
        name = database_name(key)
        assert VALID.match(name), name
        assert len(name.encode()) <= 63


def test_explicit_name_overrides_the_directory(tmp_path, monkeypatch, no_dsn):
    one = make_project(tmp_path / "one", "setup.py")
    two = make_project(tmp_path / "two", "setup.cfg")
    monkeypatch.setenv(NAME_ENV, "  ")          # blank: ignored
    assert current_project(one).key == str(one)
    monkeypatch.setenv(NAME_ENV, "Shared Queue")
    p1, p2 = current_project(one), current_project(two)
    assert p1 == p2
    assert (p1.key, p1.how) == ("name:Shared Queue", f"${NAME_ENV}")
    assert p1.database.startswith("shared_queue_")


# -- a real embedded server, used from two projects ------------------------------------

@pytest.fixture
def embedded_home(monkeypatch: pytest.MonkeyPatch, no_dsn: None) -> Iterator[Path]:
    """An empty PGQUEUE_EMBEDDED_DIR (short: the socket path must stay under 108 bytes);
    its server is stopped and removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="pgqueue-emb-"))
    monkeypatch.setenv("PGQUEUE_EMBEDDED_DIR", str(home))
    try:
        yield home
    finally:
        EmbeddedServer(home).stop("immediate")
        shutil.rmtree(home, ignore_errors=True)


def cli(*args: str, input: str | None = None) -> str:
    res = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout


def jobs(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as c:
        return c.execute("select task, args from pgqueue.jobs").fetchall()


def register(app: pgqueue.App) -> pgqueue.Task:
    @app.task(name="tasks.send_welcome")
    def send_welcome(user_id: int) -> None:
        return None
    return send_welcome


@pytest.mark.slow
def test_two_projects_get_separate_databases(embedded_home, tmp_path, monkeypatch):
    shop = make_project(tmp_path / "one" / "shop", "pyproject.toml")
    other = make_project(tmp_path / "two" / "shop", ".git")

    monkeypatch.chdir(shop / "src" / "deep")        # anywhere inside the project
    app_a = pgqueue.App()
    app_a.migrate()
    job = register(app_a).enqueue(7)
    db_a = conninfo_to_dict(app_a.conninfo)["dbname"]
    status_a = cli("embedded", "status")

    monkeypatch.chdir(other)
    app_b = pgqueue.App()
    app_b.migrate()
    register(app_b)
    db_b = conninfo_to_dict(app_b.conninfo)["dbname"]
    try:
        assert db_a != db_b
        assert db_a == database_name(str(shop)) and db_b == database_name(str(other))
        assert jobs(app_a.conninfo) == [("tasks.send_welcome", [7])]
        assert jobs(app_b.conninfo) == []
        with pytest.raises(pgqueue.JobNotFound):
            app_b.job(job.id).refresh()
    finally:
        app_a.close()

    # a command run from a third directory (no project there) finds its database, new
    # and empty: the error says how to remove it
    stray = tmp_path / "elsewhere"
    stray.mkdir()
    monkeypatch.chdir(stray)
    app_c = pgqueue.App()
    db_c = conninfo_to_dict(app_c.conninfo)["dbname"]
    with psycopg.connect(app_c.conninfo) as c, pytest.raises(pgqueue.SchemaError) as e:
        check_schema(c)
    app_c.close()
    assert f"database {db_c!r}" in str(e.value) and f"for the project {stray};" in str(e.value)
    assert f"`pgqueue embedded drop {db_c}` removes it" in str(e.value)
    cli("embedded", "drop", db_c, "--yes")
    monkeypatch.chdir(other)

    # status says which project, database and data directory, and how to connect
    assert f"project:   {shop} (holds pyproject.toml" in status_a
    assert f"database:  {db_a} (exists)" in status_a
    assert f"data:      {embedded_home / 'data'}\n" in status_a
    assert "running:   yes" in status_a
    assert f"dsn:       {app_a.conninfo}\n" in status_a
    assert "pgqueue embedded stop" in status_a

    listing = cli("embedded", "list")
    assert re.search(rf"^  {db_a} +[\d.]+ MiB  {re.escape(str(shop))}$", listing, re.M), listing
    assert re.search(rf"^\* {db_b} +[\d.]+ MiB  {re.escape(str(other))}$", listing, re.M)

    # remove the first project's database from the second project's directory
    res = CliRunner().invoke(main, ["embedded", "drop", db_a], input="n\n")
    assert res.exit_code == 1 and "Aborted" in res.output
    assert db_a in cli("embedded", "list")
    cli("embedded", "drop", db_a, "--yes")
    assert db_a not in cli("embedded", "list")
    res = CliRunner().invoke(main, ["embedded", "drop", "postgres", "--yes"])
    assert res.exit_code == 1 and "not a project database" in res.output
    res = CliRunner().invoke(main, ["embedded", "drop", "--yes"])   # this project's, in use
    assert res.exit_code == 1 and "in use" in res.output
    app_b.close()

    assert "stopped the embedded server" in cli("embedded", "stop")
    assert not EmbeddedServer(embedded_home).is_running()
    assert "running:   no" in cli("embedded", "status")
