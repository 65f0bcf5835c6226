"""Runtime SQL, loaded once by name from ``sql/queries.sql`` and ``sql/dashboard.sql``
(shipped in the package)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from typing import Any
from uuid import UUID

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


def array(values: Iterable[Any] | None) -> str | None:
    """``values`` as a one-dimensional PostgreSQL array literal, for a parameter the query
    casts (``%(ids)s::bigint[]``); ``None`` stays ``None`` (SQL null).

    Elements: ``None`` (NULL), ``bool``, ``int``, ``float``, ``str`` (subclasses by
    their value, e.g. a ``(str, Enum)`` member), ``datetime``, ``UUID``. Each is written in the text form its type's input function reads (strings
    always double-quoted, ``\\`` and ``"`` escaped), so the server parses the same array
    that psycopg's list dumper would send, at a tenth of its cost per element (the
    worker's claim and completion parameters).

    :raises TypeError: an element of another type.
    :raises ValueError: a string holding a NUL character, which PostgreSQL's text cannot.

    >>> array([1, None, 'a "b"'])
    '{1,NULL,"a \\\\"b\\\\""}'
    """
    if values is None:
        return None
    out = "{" + ",".join([_element(v) for v in values]) + "}"
    if "\x00" in out:
        raise ValueError("PostgreSQL text cannot hold a NUL character (0x00); "
                         "remove it from the value")
    return out


_FLOATS = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def _element(v: Any) -> str:
    t = type(v)
    if t is str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if t is int:
        return str(v)
    if v is None:
        return "NULL"
    if t is bool:
        return "t" if v else "f"
    # Subclasses are written by their value, as psycopg writes them: a (str, Enum)
    # member's str() is its name, an IntEnum's its value only by luck.
    if isinstance(v, str):
        return _element(str.__str__(v))
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        r = float.__repr__(v)
        return _FLOATS.get(r, r)
    if isinstance(v, (datetime, UUID)):
        return '"' + str(v) + '"'
    raise TypeError(f"cannot write a {t.__name__} into an array literal: "
                    "pass None, bool, int, float, str, datetime or UUID elements")
