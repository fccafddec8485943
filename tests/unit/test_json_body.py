"""Strict JSON bodies: what Python's json accepts but JSON or Ember's storage cannot hold is refused,
naming where it is; valid JSON (emoji pairs, deep-ish user data, big integers) still decodes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.errors import InvalidInput
from ember.core.json_body import MAX_DEPTH, dump, parse


def _refused(raw: bytes, **kw: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse(raw, **kw)
    return caught.value


def _nested(depth: int) -> bytes:
    return b'{"input": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b'{"input": NaN}', "input", "NaN"),
        (b'{"input": {"a": [1, Infinity]}}', "input.a[1]", "Infinity"),
        (b'{"input": -Infinity}', "input", "-Infinity"),
        (b'{"timeoutS": 1e999}', "timeoutS", "1e999"),
        (b'{"input": [-1E400]}', "input[0]", "-1E400"),
        (b'{"name": "a\\ud800b"}', "name", "surrogate"),
        (b'{"input": {"x": ["\\uDFFF"]}}', "input.x[0]", "surrogate"),
        (b'{"input": {"\\ud800": 1}}', "input.\\ud800", "surrogate"),
        (b'"\\ude00\\ud83d"', "body", "surrogate"),  # a pair in the wrong order is two lone halves
        (b"[NaN]", "body[0]", "NaN"),
    ],
)
def test_values_json_cannot_hold_are_refused_naming_the_place(raw: bytes, field: str, words: str) -> None:
    err = _refused(raw)
    assert [p.field for p in err.problems] == [field]
    assert words.lower() in err.message.lower()
    json.dumps(err.message, ensure_ascii=False).encode("utf-8")  # the answer itself is sendable


def test_every_bad_place_is_reported_at_once() -> None:
    err = _refused(b'{"a": NaN, "b": {"c": "\\ud800"}, "d": [1e999]}')
    assert {p.field for p in err.problems} == {"a", "b.c", "d[0]"}


def test_nesting_beyond_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    assert parse(_nested(MAX_DEPTH)) is not None
    err = _refused(_nested(MAX_DEPTH + 1))
    assert err.problems[0].field.startswith("input")
    assert str(MAX_DEPTH) in err.message
    assert _refused(b"[" * 5000 + b"]" * 5000).problems[0].field == "body"  # past the recursion limit
    assert _refused(b'{"a": ' * 5000 + b"1" + b"}" * 5000).problems[0].field == "body"
    assert parse(b"[[[1]]]", max_depth=3) == [[[1]]]
    assert _refused(b"[[[[1]]]]", max_depth=3).problems[0].field == "body[0][0][0]"


def test_many_brackets_that_are_not_deep_are_fine() -> None:
    wide = json.dumps({"input": [{"a": [i]} for i in range(2000)], "s": "[" * 5000}).encode()
    assert len(parse(wide)["input"]) == 2000


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"a": "\xed\xa0\x80"}', "UTF-8"),  # a surrogate encoded as UTF-8 bytes is not UTF-8
        (b"\xef\xbb\xbf{}", "malformed JSON"),  # a byte-order mark
        (b"1" * 5000, "malformed JSON"),  # more digits than Python converts
    ],
)
def test_text_that_is_not_utf8_json_is_malformed(raw: bytes, words: str) -> None:
    assert words.lower() in _refused(raw).message.lower()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"t": "\\ud83d\\ude00 and \\u00e9"}',
        '{"t": "😀 é ١"}'.encode(),
        b'{"big": 123456789012345678901234567890, "f": 1.5e300, "neg": -0.0}',
        b'{"t": "\\\\ud800 is text, not an escape"}',
        b'{"nul": "a\\u0000b"}',
        b"null",
    ],
)
def test_valid_json_decodes_as_json_loads_does(raw: bytes) -> None:
    assert parse(raw) == json.loads(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@given(json_values, st.booleans())
def test_valid_data_round_trips_and_lone_surrogates_never_pass(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # st.text() draws lone surrogates too
        with pytest.raises(InvalidInput):
            parse(raw)
    else:
        assert parse(raw) == value


@given(json_values)
def test_dump_is_compact_json_that_parses_back(value: Any) -> None:
    try:
        text = dump(value)
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: refused on the way in, never stored
        return
    assert text == json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert parse(text.encode("utf-8")) == value


def test_a_number_that_overflows_is_refused_even_where_strings_hold_no_float() -> None:
    # The plain decoder is used only when no fraction, exponent or constant is anywhere in the text.
    assert [p.field for p in _refused(b'{"a": "no floats here", "b": 2e400}').problems] == ["b"]
    assert parse(b'{"a": "1.5 in a string", "b": 2}') == {"a": "1.5 in a string", "b": 2}
