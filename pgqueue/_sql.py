"""Runtime SQL, loaded once by name from ``sql/queries.sql`` and ``sql/dashboard.sql``
(shipped in the package)."""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)


def read_text(*parts: str) -> str:
    """Read a file shipped under ``pgqueue/sql/``."""
    node = resources.files("pgqueue").joinpath("sql")
    for p in parts:
        node = node.joinpath(p)
    return node.read_text(encoding="utf-8")


@functools.cache
def named(filename: str) -> dict[str, str]:
    """The ``-- name:`` blocks of ``sql/<filename>``, by name (comment lines dropped)."""
    text = read_text(filename)
    out: dict[str, str] = {}
    pieces = _NAME.split(text)
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        body = "\n".join(line for line in body.strip().splitlines()
                         if not line.lstrip().startswith("--")).strip().rstrip(";")
        out[name] = body
    return out


def queries() -> dict[str, str]:
    return named("queries.sql")


def q(name: str) -> str:
    """The query named ``name`` in ``sql/queries.sql``."""
    try:
        return queries()[name]
    except KeyError:  # pragma: no cover - a programming error
        raise KeyError(f"no query named {name!r} in sql/queries.sql") from None
