"""Max workers by account balance: DESIGN.md's table, as data, and its configuration syntax."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.errors import InvalidInput
from ember.core.limits import DEFAULT_TABLE, LimitRow, account_room, max_workers, parse_table
from ember.core.money import dollars

MICRO = 1


@pytest.mark.parametrize(
    ("balance_micros", "workers"),
    [
        (-dollars(50), 5),
        (0, 5),
        (dollars(100) - MICRO, 5),
        (dollars(100), 10),
        (dollars(199), 10),
        (dollars(200), 20),
        (dollars(300), 30),
        (dollars(499), 30),
        (dollars(500), 40),
        (dollars(700), 50),
        (dollars(900) - MICRO, 50),
        (dollars(900), 60),
        (dollars(1_000_000), 60),
    ],
)
def test_default_table_matches_design(balance_micros: int, workers: int) -> None:
    assert max_workers(balance_micros) == workers


def test_a_custom_table_is_used() -> None:
    table = (LimitRow(0, 1), LimitRow(dollars(10), 2))
    assert max_workers(dollars(9), table) == 1
    assert max_workers(dollars(10), table) == 2


def test_an_empty_table_is_an_error() -> None:
    with pytest.raises(ValueError):
        max_workers(0, ())


@given(st.integers(min_value=-(10**12), max_value=10**12), st.integers(min_value=0, max_value=10**12))
def test_more_balance_never_allows_fewer_workers(balance: int, more: int) -> None:
    assert max_workers(balance + more) >= max_workers(balance)


@pytest.mark.parametrize(("limit", "elsewhere", "room"), [(5, 0, 5), (5, 3, 2), (5, 5, 0), (5, 9, 0)])
def test_account_room_is_what_other_endpoints_leave(limit: int, elsewhere: int, room: int) -> None:
    assert account_room(limit, elsewhere) == room


def test_parse_table_reads_the_default_table() -> None:
    assert parse_table("0=5, 100=10,200=20,300=30,500=40,700=50,900=60") == DEFAULT_TABLE


def test_parse_table_sorts_rows() -> None:
    assert parse_table("100.50=10,0=5") == (LimitRow(0, 5), LimitRow(100_500_000, 10))


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("", ["limits"]),
        ("100", ["limits[0]"]),
        ("abc=5", ["limits[0]"]),
        ("0=-1", ["limits[0]"]),
        ("0=5,0=6", ["limits[1]"]),
        ("0=10,100=5", ["limits"]),
        ("x=1,y=2", ["limits[0]", "limits[1]"]),
    ],
)
def test_parse_table_names_every_bad_entry(text: str, fields: list[str]) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_table(text)
    assert [p.field for p in caught.value.problems] == fields
