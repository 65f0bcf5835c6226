"""Schema migrations: numbered, forward-only SQL files under ``sql/migrations/``.

Each migration runs in its own transaction together with its row in
``pgqueue.migrations``, under ``pg_advisory_xact_lock`` (a transaction-scoped lock,
so nothing leaks behind a transaction pooler). A process that waited for the lock
re-reads the applied versions and skips what another process applied meanwhile, so
any number of ``pgqueue migrate`` runs and worker starts may race safely.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from importlib import resources

import psycopg

from .embedded import project_key
from .errors import SchemaError

__all__ = [
    "MIGRATION_LOCK",
    "Migration",
    "applied_versions",
    "apply",
    "check_schema",
    "latest_version",
    "migrations",
    "status",
]

#: Key of the transaction-scoped advisory lock held while migrating ("pgqueue" in ASCII).
MIGRATION_LOCK = 0x706771756575


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations() -> list[Migration]:
    """All migrations shipped with this version of pgqueue, oldest first."""
    folder = resources.files("pgqueue").joinpath("sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(0)[:-4],
                                   entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for i, m in enumerate(found, start=1):
        if m.version != i:
            raise SchemaError(f"migration numbering has a gap or duplicate at {m.name}")
    return found


def latest_version() -> int:
    """The schema version this code needs (the highest migration number)."""
    return migrations()[-1].version


def applied_versions(conn: psycopg.Connection) -> set[int]:
    """Versions recorded in ``pgqueue.migrations`` (empty when the schema is absent)."""
    # A plain scan of pg_class, not to_regclass(): after waiting on the advisory lock the
    # catalog cache may not have seen another session's DDL yet, a fresh snapshot has.
    # prepare=False throughout: these statements repeat once per migration, and a
    # prepared statement made on one server connection is missing on the next one a
    # transaction pooler hands out.
    row = conn.execute("select exists (select 1 from pg_catalog.pg_class c "
                       "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
                       "where n.nspname = 'pgqueue' and c.relname = 'migrations')",
                       prepare=False).fetchone()
    if not row or not row[0]:
        return set()
    return {r[0] for r in conn.execute("select version from pgqueue.migrations",
                                       prepare=False)}


def status(conn: psycopg.Connection) -> list[tuple[Migration, bool]]:
    """Each shipped migration with whether it is applied."""
    done = applied_versions(conn)
    return [(m, m.version in done) for m in migrations()]


def apply(conn: psycopg.Connection, *, target: int | None = None,
          dry_run: bool = False) -> list[Migration]:
    """Apply pending migrations up to ``target`` (default: all), one transaction each.

    :param conn: a psycopg connection (autocommit or not; it must not be inside a
        transaction block that the caller still needs: each migration commits). A
        connection through a transaction pooler works: nothing is prepared.
    :param target: highest version to apply, or ``None`` for all.
    :param dry_run: apply nothing; return what would be applied.
    :returns: the migrations applied (or, for ``dry_run``, pending).
    :raises SchemaError: when the database has versions newer than this code knows.
    """
    pending = _pending(conn, target)
    if dry_run:
        return pending
    done: list[Migration] = []
    for m in pending:
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,),
                         prepare=False)
            if m.version in applied_versions(conn):
                continue  # another process applied it while we waited
            conn.execute(m.sql, prepare=False)
            conn.execute("insert into pgqueue.migrations (version, name) values (%s, %s)",
                         (m.version, m.name), prepare=False)
            done.append(m)
    return done


def _pending(conn: psycopg.Connection, target: int | None) -> list[Migration]:
    applied = applied_versions(conn)
    known = {m.version for m in migrations()}
    unknown = applied - known
    if unknown:
        raise SchemaError(
            f"the database has pgqueue schema version {max(unknown)}, newer than this code "
            f"(version {latest_version()}); upgrade pgqueue")
    return [m for m in migrations()
            if m.version not in applied and (target is None or m.version <= target)]


def check_schema(conn: psycopg.Connection) -> int:
    """Raise :class:`SchemaError` unless the database schema is exactly this code's version.

    :returns: the version.
    """
    need = latest_version()
    applied = applied_versions(conn)
    have = max(applied) if applied else 0
    # Which database: with no DSN set, the embedded server's database follows the
    # project directory, and `pgqueue migrate` run elsewhere installs it in another.
    where = f"database {conn.info.dbname!r} on {conn.info.host}"
    migrate_there = ("run `pgqueue migrate` with the same DSN (with none set, from the same "
                     "project directory: `pgqueue embedded status` names its database)")
    if have == 0:
        raise SchemaError(f"the pgqueue schema is not installed in {where} (this code needs "
                          f"version {need}); {migrate_there}{_stray_hint(conn)}")
    if have < need or len(applied) < need:
        raise SchemaError(f"the pgqueue schema in {where} is at version {have}, this code "
                          f"needs version {need}; {migrate_there}")
    if have > need:
        raise SchemaError(f"the pgqueue schema in {where} is at version {have}, newer than "
                          f"this code (version {need}); upgrade pgqueue on this host")
    return have


def _stray_hint(conn: psycopg.Connection) -> str:
    """For an embedded project database: how to remove it if it was created by mistake
    (a command run from another directory creates that directory's database)."""
    try:
        comment = conn.execute(
            "select shobj_description(oid, 'pg_database') from pg_catalog.pg_database "
            "where datname = current_database()").fetchone()[0]
    except psycopg.Error:
        return ""
    key = project_key(comment)
    if key is None:
        return ""
    return (f". The embedded server created this database for the project {key}; if "
            f"that is not your project, `pgqueue embedded drop {conn.info.dbname}` "
            "removes it")


def render(ms: Iterable[Migration]) -> str:
    """The SQL that ``apply`` would run, for ``--dry-run``."""
    out = []
    for m in ms:
        out.append(f"-- {m.name}\nbegin;\nselect pg_advisory_xact_lock({MIGRATION_LOCK});\n"
                   f"{m.sql.rstrip()}\ninsert into pgqueue.migrations (version, name) "
                   f"values ({m.version}, '{m.name}');\ncommit;\n")
    return "\n".join(out)
