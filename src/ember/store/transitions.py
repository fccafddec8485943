"""The guard of every UPDATE that changes a job's or a worker's state, derived from `core`'s transition
tables (to-state -> the states it may be reached from), so that the SQL can say no more than the tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TypeVar

from sqlalchemy import or_
from sqlalchemy.sql.elements import ColumnElement

from ember.store.db import constant

St = TypeVar("St", bound=StrEnum)


def guard(
    column: ColumnElement[St],
    table: Mapping[St, frozenset[St]],
    to: St | Iterable[St],
    among: Iterable[St] = (),
) -> ColumnElement[bool]:
    """The WHERE test of a move to `to` (or to each of several): `column` holds a state from which core's
    transition `table` (to-state -> from-states) allows it, only those of `among` when given. A move the
    table does not allow is a programming error, raised when the statement is built, so every guarded
    UPDATE says no more than the table. The states are SQL constants (a partial index on one is used)."""
    targets = [to] if isinstance(to, StrEnum) else list(to)
    allowed = frozenset.intersection(*(table[t] for t in targets))
    chosen = frozenset(among) or allowed
    if not chosen or not chosen <= allowed:
        raise ValueError(f"{sorted(chosen - allowed)} -> {targets}: not in the transition table")
    return or_(*(column == constant(s.value) for s in sorted(chosen)))
