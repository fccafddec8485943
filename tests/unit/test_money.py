"""Money is integer micro-dollars; parsing is strict and formatting is exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.errors import InvalidInput
from ember.core.money import dollars, format_dollars, parse_dollars


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("150.00", 150_000_000),
        ("150", 150_000_000),
        ("0.000001", 1),
        ("0.5", 500_000),
        ("-0.25", -250_000),
        ("+3.1", 3_100_000),
        ("999999999999.999999", 999_999_999_999_999_999),
    ],
)
def test_parse_dollars_reads_exact_micros(text: str, micros: int) -> None:
    assert parse_dollars(text) == micros


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "1.", ".5", "1e3", "$5", "1,000", "0.0000001", "abc", "1.2.3", "--1", "1_000", "NaN"]
    # Digits of other scripts (Arabic-Indic, fullwidth, Devanagari) and a trailing newline.
    + ["\u0661", "\u0661\u0665\u0660.00", "\uff11", "1.\u0665", "\u0967", "150\n"],
)
def test_parse_dollars_rejects_anything_but_a_strict_decimal(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_dollars(text, field="balance")
    assert caught.value.problems[0].field == "balance"
    assert caught.value.problems[0].value == text


@pytest.mark.parametrize("value", [150, 1.5, None, b"1"])
def test_parse_dollars_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidInput):
        parse_dollars(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (150_000_000, "150.000000"),
        (1, "0.000001"),
        (0, "0.000000"),
        (-1, "-0.000001"),
        (-2_500_000, "-2.500000"),
    ],
)
def test_format_dollars_keeps_six_decimals(micros: int, text: str) -> None:
    assert format_dollars(micros) == text


def test_format_dollars_refuses_floats_and_bools() -> None:
    with pytest.raises(TypeError):
        format_dollars(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_dollars(True)


def test_dollars_builds_micros() -> None:
    assert dollars(100) == 100_000_000


@given(st.integers(min_value=-(10**18) + 1, max_value=10**18 - 1))
def test_format_then_parse_round_trips(micros: int) -> None:
    assert parse_dollars(format_dollars(micros)) == micros
