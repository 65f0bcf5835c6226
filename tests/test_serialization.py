"""Tagged JSON round trips (case B16's types) and refusals, without a database."""

import datetime as dt
import uuid
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from pgqueue import SerializationError
from pgqueue.serialization import decode, dumps, encode, loads


def test_rich_types_round_trip_with_their_types():
    value = {
        "aware": dt.datetime(2026, 11, 29, 10, 0, tzinfo=ZoneInfo("Europe/Paris")),
        "date": dt.date(2026, 11, 29),
        "dec": Decimal("12.30"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "nested": [{"a": [1, 2.5, None, True]}, ("x", "y")],
        "td": dt.timedelta(seconds=90),
        "raw": b"\x00\x01",
        "big": 2**80,
    }
    back = loads(dumps(value))
    assert back["aware"] == dt.datetime(2026, 11, 29, 9, 0, tzinfo=dt.timezone.utc)
    assert back["aware"].tzinfo is not None
    assert type(back["date"]) is dt.date and back["date"] == dt.date(2026, 11, 29)
    assert type(back["dec"]) is Decimal and str(back["dec"]) == "12.30"
    assert back["uuid"] == value["uuid"]
    assert back["nested"] == [{"a": [1, 2.5, None, True]}, ["x", "y"]]
    assert back["td"] == dt.timedelta(seconds=90)
    assert back["raw"] == b"\x00\x01"
    assert back["big"] == 2**80


def test_user_dict_with_tag_key_is_not_mistaken_for_a_tag():
    value = {"$type": "date", "value": "2026-01-01"}
    assert decode(encode(value)) == value


@pytest.mark.parametrize("bad, fragment", [
    (dt.datetime(2026, 11, 29, 10, 0), "naive datetime"),
    ("a\x00b", "NUL"),
    ({"k\x00": 1}, "NUL"),
    (float("nan"), "not finite"),
    ({1: "x"}, "keys must be str"),
    ({1, 2}, "not supported"),
    (object(), "not supported"),
])
def test_unsupported_values_raise_type_error_naming_the_problem(bad, fragment):
    with pytest.raises(TypeError) as info:
        encode([bad], "args")
    assert isinstance(info.value, SerializationError)
    assert fragment in str(info.value)
    assert "args[0]" in str(info.value)
