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


def test_subclasses_of_str_int_and_float_are_stored_by_their_value_as_json_writes_them():
    """A ``(str, Enum)`` member's own ``str()`` is ``"Color.RED"``: the stored value is
    its string, ``"red"``, as ``json.dumps`` writes it; likewise an int or float
    subclass whose ``__int__``/``__float__`` says something else."""
    import enum
    import json

    class Color(str, enum.Enum):
        RED = "red"

    class Loud(str):
        def __str__(self):
            return "LOUD"

    class Off(int):
        def __int__(self):
            return 0

    class Odd(float):
        def __float__(self):
            return 0.0

    for value in (Color.RED, Loud("quiet"), Off(7), Odd(2.5)):
        text = dumps([value])
        assert text == json.dumps([value], separators=(",", ":")), (value, text)
        assert type(loads(text)[0]) in (str, int, float)
    assert loads(dumps({"c": Color.RED})) == {"c": "red"}
    with pytest.raises(SerializationError, match="digits"):
        encode(Off(1 << 500_000))   # the size check holds for subclasses too


def test_a_timedelta_is_stored_exactly_or_refused():
    """Seconds in a float keep whole microseconds up to about 272 years: beyond that a
    timedelta that would read back changed is refused, one that reads back equal is kept."""
    for td in (dt.timedelta(days=1, microseconds=1), dt.timedelta(days=99421),
               dt.timedelta(days=-99421), dt.timedelta.max - dt.timedelta(microseconds=
                                                                      dt.timedelta.max.microseconds)):
        try:
            back = loads(dumps(td))
        except SerializationError:
            assert td.microseconds, td      # only sub-second parts are ever lost
            continue
        assert back == td
    with pytest.raises(SerializationError, match="272 years"):
        dumps(dt.timedelta(days=99421, microseconds=1))
    with pytest.raises(SerializationError, match="272 years"):
        dumps(dt.timedelta.max)


def test_large_floats_read_back_as_floats_in_every_document():
    """``json_text`` (workflow steps, batches, schedules) writes floats of 1e16 and more
    so that they read back as the same float, as ``dumps`` does."""
    from pgqueue.serialization import json_text
    x = 1.801439850948199e+16
    value = {"a": [1e16, x, 1.7976931348623157e308, -1e300], "b": 3}
    text = json_text(encode(value))
    assert "e+" not in text and "e3" not in text   # PostgreSQL would read 1e+16 back as an int
    back = loads(text)
    assert back == value
    assert all(type(v) is float for v in back["a"])
