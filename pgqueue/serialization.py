"""Tagged JSON: job arguments and results as plain JSON that any language can read.

JSON has no dates, decimals or UUIDs, so those values travel as small tagged
objects. The format is part of the SQL contract (see README, "Argument format"):

=====================  ==============================================================
Python value           JSON
=====================  ==============================================================
None, bool, int,       themselves (ints of any size; floats must be finite)
float, str
list, tuple            array (a tuple comes back as a list)
dict (str keys)        object; a dict that has the key ``"$type"`` is wrapped as
                       ``{"$type": "object", "value": {...}}`` so it never reads as a tag
aware datetime         ``{"$type": "datetime", "value": "2026-11-29T09:00:00+00:00"}``
date                   ``{"$type": "date", "value": "2026-11-29"}``
time (naive or aware)  ``{"$type": "time", "value": "10:00:00"}``
timedelta              ``{"$type": "timedelta", "value": 1.5}`` (seconds)
Decimal                ``{"$type": "decimal", "value": "12.30"}`` (scale kept)
UUID                   ``{"$type": "uuid", "value": "12345678-1234-5678-1234-567812345678"}``
bytes                  ``{"$type": "bytes", "value": "<base64>"}``
=====================  ==============================================================

Rejected with :class:`~pgqueue.SerializationError` (a ``TypeError``) before any SQL
runs: naive datetimes (they name no instant; attach a tzinfo), strings or keys with
NUL characters (PostgreSQL's ``jsonb`` cannot store them), non-finite floats, ints of
more than 131072 digits (the most a ``jsonb`` number holds), dict keys that are not
strings, any other type (sets, objects, ...), and a document (a job's arguments, its
keyword arguments, a result) larger than :data:`MAX_DOCUMENT_BYTES` as JSON text.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import json.encoder
import math
import uuid
from decimal import Decimal
from typing import Any

from .errors import SerializationError

__all__ = ["MAX_DOCUMENT_BYTES", "TAG", "decode", "dumps", "encode", "loads"]

TAG = "$type"

#: Largest JSON text (UTF-8 bytes) of one document: a job's args, its kwargs, a result.
#: Jobs carry references to large data, not the data: each claim reads whole rows, and
#: a ``jsonb`` value cannot exceed 255 MiB anyway. 16 MiB is also the largest message a
#: stock RabbitMQ broker accepts, so Celery payloads that work there fit here.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: ``numeric`` (which ``jsonb`` numbers are) holds at most 131072 digits before the point
_MAX_INT_BITS = 435_411   # 10**131072 < 2**435412


def _bad(path: str, message: str) -> SerializationError:
    return SerializationError(f"argument {path}: {message}")


#: below this many seconds (2**33, about 272 years) a float holds every whole
#: microsecond, so a timedelta's seconds read back exactly
_EXACT_TIMEDELTA_SECONDS = float(2 ** 33)


def _exact_seconds(value: dt.timedelta, seconds: float) -> bool:
    try:
        return dt.timedelta(seconds=seconds) == value
    except OverflowError:     # rounded past timedelta.max
        return False


def _utf8_ok(text: str) -> bool:
    """False if ``text`` holds a lone surrogate (PostgreSQL accepts only valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode(value: Any, path: str = "value") -> Any:
    """Turn a Python value into plain JSON types (tagging rich types).

    :param value: the value to encode.
    :param path: where the value sits, used in error messages (``args[0]["when"]``).
    :returns: a structure of dict/list/str/int/float/bool/None.
    :raises SerializationError: (a ``TypeError``) for values the format refuses.
    """
    t = type(value)
    if value is None or t is bool:
        return value
    if t is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise _bad(path, "int has more than 131072 digits, more than a PostgreSQL "
                             "number holds; send it as a string")
        return value
    if t is str:
        if "\x00" in value:
            raise _bad(path, "contains a NUL character (\\x00), which PostgreSQL cannot store; "
                             "remove it or send the data as bytes")
        if not value.isascii() and not _utf8_ok(value):
            raise _bad(path, "contains a lone surrogate (\\ud800-\\udfff), which is not valid "
                             "UTF-8; decode the text with errors='replace' or send it as bytes")
        return value
    if t is float:
        if not math.isfinite(value):
            raise _bad(path, f"float {value!r} is not finite; JSON has no NaN or Infinity")
        return value
    if t is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _bad(path, f"dict key {k!r} is a {type(k).__name__}; keys must be str")
            if "\x00" in k:
                raise _bad(path, "dict key contains a NUL character (\\x00)")
            if not k.isascii() and not _utf8_ok(k):
                raise _bad(path, f"dict key {k!r} contains a lone surrogate, which is not "
                                 "valid UTF-8")
            out[k] = encode(v, f"{path}[{k!r}]")
        if TAG in out:
            return {TAG: "object", "value": out}
        return out
    if t is list or t is tuple:
        return [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise _bad(path, f"naive datetime {value.isoformat()} names no instant; "
                             "attach a timezone, e.g. datetime.now(timezone.utc)")
        return {TAG: "datetime", "value": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "value": value.isoformat()}
    if isinstance(value, dt.time):
        return {TAG: "time", "value": value.isoformat()}
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
        if abs(seconds) >= _EXACT_TIMEDELTA_SECONDS and not _exact_seconds(value, seconds):
            raise _bad(path, f"{value!r} cannot be stored exactly: it is stored as seconds in "
                             "a float, which keeps whole microseconds only up to about 272 "
                             "years; round it to seconds or send its parts as ints")
        return {TAG: "timedelta", "value": seconds}
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _bad(path, f"Decimal {value} is not finite")
        return {TAG: "decimal", "value": str(value)}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "value": str(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "value": base64.b64encode(bytes(value)).decode("ascii")}
    # Subclasses of the basic types (IntEnum, str subclasses, OrderedDict...), by the
    # value they hold, as json.dumps writes them: str(), int() and float() would call a
    # subclass's own __str__ (a (str, Enum) member's is "Color.RED"), __int__, __float__.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return encode(int.__index__(value), path)
    if isinstance(value, float):
        return encode(float.__float__(value), path)
    if isinstance(value, str):
        return encode(str.__str__(value), path)
    if isinstance(value, dict):
        return encode(dict(value), path)
    if isinstance(value, (list, tuple)):
        return encode(list(value), path)
    raise _bad(path, f"type {t.__module__}.{t.__qualname__} is not supported; pass JSON types, "
                     "datetime (aware), date, time, timedelta, Decimal, UUID or bytes")


_DECODERS = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(seconds=v),
    "decimal": Decimal,
    "uuid": uuid.UUID,
    "bytes": lambda v: base64.b64decode(v),
}


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`: rebuild rich Python values from tagged JSON."""
    t = type(value)
    if t is list:
        return [decode(v) for v in value]
    if t is dict:
        tag = value.get(TAG)
        if tag is not None and len(value) == 2 and "value" in value:
            if tag == "object":
                return {k: decode(v) for k, v in value["value"].items()}
            fn = _DECODERS.get(tag)
            if fn is not None:
                return fn(value["value"])
        return {k: decode(v) for k, v in value.items()}
    return value


def _plain_scalar(v: Any) -> bool:
    """A value that encode() returns unchanged and that needs no check beyond its type:
    None, a bool, an int of at most 64 bits, a short ASCII str without NUL."""
    t = type(v)
    if t is int:
        return -(1 << 63) <= v < (1 << 63)
    if t is str:
        return len(v) <= 256 and v.isascii() and "\x00" not in v
    return v is None or t is bool


#: ``compact(value)``: JSON text without spaces, non-ASCII kept (``json.dumps`` with
#: these options, without building an encoder per call)
compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# The C encoder built once, for the flat lists of plain scalars below (no container to
# check for cycles, no float to write out): a third of compact()'s cost per call.
_c_encoder = json.encoder.c_make_encoder    # type: ignore[attr-defined]
if _c_encoder is not None:
    _flat_encoder = _c_encoder(None, None, json.encoder.encode_basestring, None, ":", ",",
                               False, False, True)

    def _flat_json(value: Any) -> str:
        return "".join(_flat_encoder(value, 0))
else:  # pragma: no cover - a Python built without the json C accelerator
    _flat_json = compact


def json_text(encoded: Any) -> str:
    """The JSON text of a value already encoded (:func:`encode`), its floats written so that
    they read back as the same float (``1e16`` as ``10000000000000000.0``, not as an
    int)."""
    text = compact(encoded)
    if "e+" in text:     # perhaps a float of 1e16 or more (else a string: harmless)
        text = "".join(_exact_floats(encoded))
    return text


def dumps(value: Any, path: str = "value") -> str:
    """Encode and serialize to a JSON string (for a ``jsonb`` parameter)."""
    # Fast paths for the most common values: no result, no arguments.
    if value is None:
        return "null"
    t = type(value)
    if (t is list or t is tuple) and not value:
        return "[]"
    if t is dict and not value:
        return "{}"
    if (t is list or t is tuple) and len(value) <= 16 and all(map(_plain_scalar, value)):
        # A short flat list of small ints, ASCII strings, booleans and nulls (most
        # arguments): JSON as it stands, no tagging walk, no float to write out.
        return _flat_json(value)
    if (t is str or t is bytes) and len(value) > MAX_DOCUMENT_BYTES:
        _too_large(path, len(value))     # before base64 or a copy doubles it
    try:
        text = json_text(encode(value, path))
    except RecursionError:
        raise _bad(path, "is nested too deeply (or contains itself); flatten the "
                         "structure") from None
    except ValueError as e:   # e.g. an int with more digits than int->str conversion allows
        raise _bad(path, f"cannot be written as JSON: {e}") from None
    if len(text) > MAX_DOCUMENT_BYTES // 4:
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_DOCUMENT_BYTES:
            _too_large(path, size)
    return text


def _floatstr(value: float) -> str:
    # jsonb stores numbers as numeric and prints 1e+16 as 10000000000000000, which reads
    # back as an int (of another value, for 1.801439850948199e+16): written out in full
    # with a fraction, the number reads back as the same float.
    text = float.__repr__(value)
    return f"{Decimal(text):f}.0" if "e+" in text else text


def _exact_floats(encoded: Any) -> Any:
    """The JSON text of an encoded value, chunk by chunk, floats by :func:`_floatstr`."""
    return json.encoder._make_iterencode(   # type: ignore[attr-defined]
        {}, None, json.encoder.py_encode_basestring, None, _floatstr, ":", ",", False,
        False, True)(encoded, 0)


def _too_large(path: str, size: int) -> None:
    raise _bad(path, f"is {size / 2**20:.1f} MiB as JSON, over the limit of "
                     f"{MAX_DOCUMENT_BYTES // 2**20} MiB; store large data elsewhere (a table, "
                     "a file store) and pass its key")


def loads(text: str | bytes | None) -> Any:
    """Parse JSON text and decode tags."""
    if text is None:
        return None
    return decode(json.loads(text))
