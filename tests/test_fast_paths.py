"""The producer's fast paths agree with the general code they short-cut.

``check_args`` accepts the usual signature shapes (positional-or-keyword parameters,
required ones first, then perhaps ``*args`` and ``**kwargs``) without building a
``BoundArguments``, and ``dumps`` writes a
short flat list of plain scalars without the tagging walk. Each must give exactly the
verdict and the text of the general path, or refuse nothing it would refuse: here
both are compared on generated signatures, calls and values. No database.
"""

from __future__ import annotations

import inspect
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgqueue import App, SerializationError
from pgqueue.serialization import dumps, encode

NAMES = ["a", "b", "c", "d"]


@st.composite
def signature_and_call(draw):
    n = draw(st.integers(0, 4))
    required = draw(st.integers(0, n))
    params = [inspect.Parameter(NAMES[i], inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                **({} if i < required else {"default": None}))
              for i in range(n)]
    # then perhaps *args, a keyword-only parameter (bind() checks that shape) and **kwargs
    if draw(st.booleans()):
        params.append(inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL))
    if draw(st.booleans()):
        params.append(inspect.Parameter("k", inspect.Parameter.KEYWORD_ONLY,
                                        **({} if draw(st.booleans()) else {"default": None})))
    if draw(st.booleans()):
        params.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
    n_args = draw(st.integers(0, 5))
    keys = draw(st.lists(st.sampled_from(NAMES + ["x", "k", "args", "kwargs", 1]), unique=True,
                         max_size=4))
    return inspect.Signature(params), n_args, {k: 1 for k in keys}


@settings(max_examples=1500)    # no database: cheap, and the shapes are few
@given(signature_and_call(), st.booleans())
def test_check_args_gives_the_verdict_of_signature_bind(case, pass_context):
    sig, n_args, kwargs = case

    def fn(*args, **kwargs):
        return None

    fn.__signature__ = sig
    task = App("postgresql://unused").task(fn, name="t.fn", pass_context=pass_context)
    lead = (None,) * int(pass_context)
    args = tuple(range(n_args))
    try:
        sig.bind(*lead, *args, **kwargs)
        binds = True
    except TypeError:
        binds = False
    if binds:
        task.check_args(args, kwargs)
    else:
        with pytest.raises(TypeError, match=r"t\.fn\(\)"):
            task.check_args(args, kwargs)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=300))


@settings(max_examples=600)
@given(st.one_of(st.lists(scalars, max_size=20), st.tuples(scalars, scalars)))
def test_dumps_of_flat_lists_matches_the_tagged_encoding(value):
    try:
        expected = json.dumps(encode(value), ensure_ascii=False, separators=(",", ":"))
    except SerializationError:
        with pytest.raises(SerializationError):
            dumps(value)
        return
    got = dumps(value)
    assert json.loads(got) == json.loads(expected)
    if not any(type(v) is float for v in value):
        assert got == expected


def test_check_args_takes_any_iterable_as_its_positional_arguments():
    """check_args takes ``args`` as an Iterable, as Signature.bind unpacks any: the fast
    path's len() raised on a generator or an iterator whose arguments bind."""
    task = App("postgresql://unused").task(lambda a, b=1: None, name="t.gen")
    task.check_args((x for x in (1, 2)), {})
    task.check_args(iter([1]), {"b": 2})
    task.check_args(range(1), {})
    with pytest.raises(TypeError, match=r"t\.gen\(\) too many positional arguments"):
        task.check_args(iter([1, 2, 3]), {})
    with pytest.raises(TypeError, match=r"t\.gen\(\) multiple values for argument 'b'"):
        task.check_args((x for x in (1, 2)), {"b": 2})


def test_the_usual_shapes_take_the_fast_path():
    """``def f(a, b=1)``, ``def f(*args, **kwargs)`` and ``def f(a, *rest)`` are checked
    without ``Signature.bind`` (a keyword-only parameter is left to it)."""
    app = App("postgresql://unused")

    def plain(a, b=1):
        return None

    def anything(*args, **kwargs):
        return None

    def rest(a, *more):
        return None

    def keyword_only(a, *, b):
        return None

    for fn, fast in [(plain, True), (anything, True), (rest, True), (keyword_only, False)]:
        task = app.task(fn, name=f"t.{fn.__name__}")
        task.check_args((1,), {}) if fn is not keyword_only else task.check_args((1,), {"b": 2})
        assert (task._plain_params is not None) is fast, fn.__name__
