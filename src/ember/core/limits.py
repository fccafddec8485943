"""How many workers an account may run, from its balance; the table is data (configurable).

The count covers flex and active workers across all of an account's endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ember.core.errors import InvalidInput, Problem
from ember.core.money import dollars, parse_dollars


@dataclass(frozen=True)
class LimitRow:
    """From `min_balance_micros` upwards (until the next row), at most `max_workers` workers."""

    min_balance_micros: int
    max_workers: int


LimitTable = Sequence[LimitRow]

# DESIGN.md: below $100: 5, $100+: 10, $200+: 20, $300+: 30, $500+: 40, $700+: 50, $900+: 60.
DEFAULT_TABLE: tuple[LimitRow, ...] = (
    LimitRow(dollars(0), 5),
    LimitRow(dollars(100), 10),
    LimitRow(dollars(200), 20),
    LimitRow(dollars(300), 30),
    LimitRow(dollars(500), 40),
    LimitRow(dollars(700), 50),
    LimitRow(dollars(900), 60),
)


def max_workers(balance_micros: int, table: LimitTable = DEFAULT_TABLE) -> int:
    """The workers allowed at this balance: the row with the highest threshold at or below it.

    A balance below every threshold (e.g. negative) gets the first row's count; whether an exhausted
    balance may start workers at all is the scaler's `zero_balance` rule, not this table's.
    """
    rows = sorted(table, key=lambda r: r.min_balance_micros)
    if not rows:
        raise ValueError("the limit table is empty")
    allowed = rows[0].max_workers
    for row in rows:
        if balance_micros >= row.min_balance_micros:
            allowed = row.max_workers
    return allowed


def account_room(limit: int, workers_elsewhere: int) -> int:
    """How many workers one endpoint may have: the account limit minus the account's other endpoints'
    non-STOPPED workers, never negative."""
    return max(0, limit - workers_elsewhere)


def parse_table(text: str) -> tuple[LimitRow, ...]:
    """A table from configuration text "DOLLARS=WORKERS,…", e.g. "0=5,100=10,200=20".

    Raises InvalidInput naming every bad entry at once (syntax, amounts, negative counts, duplicate
    thresholds, a count that falls as the balance rises). The result is sorted by threshold.
    """
    problems: list[Problem] = []
    rows: list[LimitRow] = []
    entries = [e.strip() for e in text.split(",")] if text.strip() else []
    if not entries:
        problems.append(Problem("limits", "needs at least one DOLLARS=WORKERS entry", text))
    for position, entry in enumerate(entries):
        where = f"limits[{position}]"
        amount, sep, count = (part.strip() for part in entry.partition("="))
        if not sep or not count.isdigit():
            problems.append(Problem(where, "expected DOLLARS=WORKERS, e.g. 100=10", entry))
            continue
        try:
            threshold = parse_dollars(amount, field=where)
        except InvalidInput as exc:
            problems.extend(exc.problems)
            continue
        if any(r.min_balance_micros == threshold for r in rows):
            problems.append(Problem(where, "this balance threshold appears twice", entry))
            continue
        rows.append(LimitRow(threshold, int(count)))
    rows.sort(key=lambda r: r.min_balance_micros)
    for lower, upper in zip(rows, rows[1:], strict=False):
        if upper.max_workers < lower.max_workers:
            problems.append(Problem("limits", "max workers must not fall as the balance rises", text))
            break
    if problems:
        raise InvalidInput(f"bad worker limit table {text!r}", problems)
    return tuple(rows)
