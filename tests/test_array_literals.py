"""The worker's array parameters, written as text literals (``pgqueue._sql.array``).

The claim and the completion send their arrays (task names, positions, job ids,
results) as literals the query casts, instead of through psycopg's list dumper. Each
literal must read back, through the real server, as exactly the list it was made
from: strings with quotes, backslashes, braces, commas, blanks or the word NULL
included. Then a worker round trip: results with every such character are stored as
returned, by a worker claiming with tasks and positions in literals.
"""

from __future__ import annotations

import enum
import math
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgqueue._sql import array

from .conftest import wait_until

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                max_size=12)
ints = st.integers(-(2**63), 2**63 - 1)
stamps = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                      timezones=st.just(timezone.utc))


def read_back(conn, literal, pg_type):
    return conn.execute(f"select %s::{pg_type}", (literal,)).fetchone()[0]


@SETTINGS
@given(st.lists(st.one_of(st.none(), texts, st.sampled_from(
    ['NULL', 'null', '', ' ', '"', '\\', '{', '}', ',', 'a b', '{"k": "v\\"w"}']))))
def test_text_arrays_read_back_as_the_list(conn, values):
    assert read_back(conn, array(values), "text[]") == values


@SETTINGS
@given(st.lists(st.one_of(st.none(), ints)))
def test_bigint_arrays_read_back_as_the_list(conn, values):
    assert read_back(conn, array(values), "bigint[]") == values


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False)), max_size=10))
def test_float_arrays_read_back_as_the_list(conn, values):
    assert read_back(conn, array(values), "float8[]") == values


def test_float_specials_and_booleans_read_back(conn):
    inf, minus, nan = read_back(conn, array([math.inf, -math.inf, math.nan]), "float8[]")
    assert (inf, minus, math.isnan(nan)) == (math.inf, -math.inf, True)
    assert read_back(conn, array([True, False, None]), "boolean[]") == [True, False, None]


@SETTINGS
@given(st.lists(st.one_of(st.none(), stamps), max_size=6))
def test_timestamptz_arrays_read_back_as_the_list(conn, values):
    assert read_back(conn, array(values), "timestamptz[]") == values


def test_uuids_and_the_far_future_position_read_back(conn):
    ids = [uuid.uuid4(), None]
    assert read_back(conn, array(ids), "uuid[]") == ids
    far = datetime.max.replace(tzinfo=timezone.utc)   # ClaimPositions.CAUGHT_UP
    assert read_back(conn, array([far]), "timestamptz[]") == [far]


def test_none_is_null_and_an_empty_list_is_empty(conn):
    assert array(None) is None
    assert read_back(conn, array([]), "text[]") == []


def test_a_nul_character_or_an_unknown_type_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="NUL"):
        array(["a\x00b"])
    with pytest.raises(TypeError, match="dict"):
        array([{"a": 1}])


AWKWARD = ['say "hi"', "back\\slash", "{braces}", "a,b", "NULL", "", " padded ",
           "unicode ünï 🙂", "\\\"", "}\"{"]


def test_a_worker_stores_results_with_quotes_backslashes_and_braces(app, start_worker, conn):
    @app.task(name="awkward_echo", retry=False)
    def echo(value):
        return {"value": value, "list": [value, value]}

    jobs = [echo.enqueue(v) for v in AWKWARD]
    # Due 5 s ago: the claims after the first start at positions, sent as literals too.
    conn.execute("update pgqueue.jobs set run_at = now() - interval '5 seconds'")
    start_worker(app, concurrency=3)
    wait_until(lambda: conn.execute(
        "select count(*) from pgqueue.jobs where state = 'completed'").fetchone()[0]
        == len(AWKWARD), 20, message="awkward results recorded")
    for job, value in zip(jobs, AWKWARD, strict=True):
        assert job.result(timeout=5) == {"value": value, "list": [value, value]}


class Name(str, enum.Enum):
    SEND = "send_mail"


class Level(enum.IntEnum):
    HIGH = 3


class Seconds(float):
    pass


def test_subclasses_are_written_by_their_value_as_psycopg_writes_them(conn):
    # a (str, Enum) member's str() is "Name.SEND": written so, a task declared with it
    # was never claimed; a float subclass (a timeout) stopped the worker's start
    assert read_back(conn, array([Name.SEND]), "text[]") == ["send_mail"]
    assert read_back(conn, array([Level.HIGH]), "integer[]") == [3]
    assert read_back(conn, array([Seconds(30), Seconds(math.inf)]), "float8[]") == [30.0,
                                                                                  math.inf]


def test_a_task_and_queue_named_by_str_enums_with_a_float_subclass_timeout_run(
        app, start_worker, conn):
    class Q(str, enum.Enum):
        MAIL = "mail"

    @app.task(name=Name.SEND, queue=Q.MAIL, timeout=Seconds(30))
    def send(x):
        return x * 2

    job = send.enqueue(21)
    start_worker(app, concurrency=2, queues=[Q.MAIL])
    assert job.result(timeout=10) == 42
