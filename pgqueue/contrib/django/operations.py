"""Django migration operations that run pgqueue's SQL migrations.

Each Django migration ``000N_*`` of the ``pgqueue`` app runs the SQL file
``sql/migrations/000N_*.sql`` shipped in the package, read when the migration module
is loaded (so ``manage.py sqlmigrate pgqueue 0001`` prints it), exactly as
``pgqueue migrate`` runs it: under the same transaction-scoped advisory lock, in the
migration's transaction, with its row in ``pgqueue.migrations``.

A version that is already recorded in ``pgqueue.migrations`` (installed by
``pgqueue migrate``, or by another Django project sharing the database) is skipped, so
switching between the two tools is safe.

Reversal: unapplying ``0001`` drops the ``pgqueue`` schema with every job in it
(``manage.py migrate pgqueue zero``). Unapplying a later migration changes nothing in
the database (pgqueue's migrations are forward-only; the schema stays at the newer
version, which ``pgqueue.migrations`` still records); migrating forward again is then a
no-op.
"""

from __future__ import annotations

from django.db import migrations

from pgqueue import migrate

_TAG = "$pgqueue_sql$"


def migration_sql(version: int) -> list[str]:
    """The statements that apply pgqueue SQL migration ``version`` (list of str)."""
    by_version = {m.version: m for m in migrate.migrations()}
    m = by_version[version]
    if _TAG in m.sql:  # pragma: no cover - a file that would break the quoting below
        raise ValueError(f"{m.name} contains {_TAG}")
    body = f"""do $pgqueue_migration$
begin
    if exists (select 1 from pg_catalog.pg_class c
                 join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                where n.nspname = 'pgqueue' and c.relname = 'migrations') then
        if exists (select 1 from pgqueue.migrations where version = {m.version}) then
            raise notice 'pgqueue migration {m.name} is already applied; skipping';
            return;
        end if;
    end if;
    execute {_TAG}
{m.sql}
{_TAG};
    insert into pgqueue.migrations (version, name) values ({m.version}, '{m.name}');
end
$pgqueue_migration$"""  # noqa: S608 - the shipped migration file, never input, under a tag it cannot contain
    return [f"select pg_advisory_xact_lock({migrate.MIGRATION_LOCK})", body]


def ApplySqlMigration(version: int) -> migrations.RunSQL:  # noqa: N802 - reads like a class
    """A ``RunSQL`` operation applying pgqueue SQL migration ``version``."""
    if version == 1:
        reverse: list[str] | str = ["drop schema if exists pgqueue cascade"]
    else:
        reverse = migrations.RunSQL.noop
    return migrations.RunSQL(migration_sql(version), reverse_sql=reverse)
