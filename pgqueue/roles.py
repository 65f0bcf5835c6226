"""The least-privilege role split: grants for a producer, a worker and an operator role.

The grants live in one place, ``sql/roles.sql``, one block per role; role names reach
the SQL only through :class:`psycopg.sql.Identifier`. ``pgqueue roles`` prints them and,
with ``--apply``, runs them in one transaction as the schema's owner.

- producer: enqueue (single, bulk, workflows) and read jobs;
- worker: everything ``pgqueue worker`` does, no DDL;
- operator: cancel, retry, prune, pause queues and schedules, trigger schedules.

The owner is the role that runs ``pgqueue migrate`` and so owns every object.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from ._sql import read_text

__all__ = ["ROLES", "apply", "blocks", "grants", "render"]

#: the roles ``sql/roles.sql`` has a block for, in the order they are applied
ROLES = ("producer", "worker", "operator")

_BLOCK = re.compile(r"^--\s*role:\s*(\S+)\s*$", re.MULTILINE)


def blocks() -> dict[str, str]:
    """The text of each block of ``sql/roles.sql`` by name (``common`` and each role)."""
    pieces = _BLOCK.split(read_text("roles.sql"))
    return {name: body.strip() for name, body in zip(pieces[1::2], pieces[2::2], strict=True)}


def _statements(block: str) -> list[str]:
    text = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";") if s.strip()]


def grants(**names: str) -> list[sql.Composed]:
    """The statements that give each named role its grants, common ones first.

    :param names: role name per role, e.g. ``producer="app_producer"``; roles left out
        are not touched. Keys must be among :data:`ROLES`.
    :raises ValueError: for an unknown role key or an empty role name.
    """
    unknown = sorted(set(names) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r}; the roles are {', '.join(ROLES)}")
    for key, name in names.items():
        if not name:
            raise ValueError(f"the {key} role name is empty")
    text = blocks()
    out = [sql.SQL(s).format() for s in _statements(text["common"])]
    for role in ROLES:
        if role in names:
            ident = sql.Identifier(names[role])
            out += [sql.SQL(s).format(**{role: ident}) for s in _statements(text[role])]
    return out


def render(statements: list[sql.Composed], conn: psycopg.Connection | None = None) -> str:
    """The statements as a script, one per line group, each ending in ``;``."""
    return "\n".join(s.as_string(conn) + ";" for s in statements) + "\n"


def apply(conn: psycopg.Connection, **names: str) -> None:
    """Run :func:`grants` for ``names`` in one transaction on ``conn``.

    Run it as the schema's owner. Rolls back on any error (an unknown role, a schema
    not migrated), so a role never holds half of its grants.
    """
    statements = grants(**names)
    with conn.transaction():
        for s in statements:
            conn.execute(s)
