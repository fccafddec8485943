"""Typed rows on the real databases: each row type names exactly its statement's columns (checked when
the statement is built), and rows come back as plain dicts with booleans as bool."""

from __future__ import annotations

from typing import TypedDict

import pytest
from sqlalchemy import bindparam, select

from ember.core.workers import WorkerState
from ember.store.db import PreparedRows, Repository
from ember.store.facade import Store
from ember.store.schema import jobs
from tests.integration.store_fixtures import add_worker


class _IdOnly(TypedDict):
    id: str


class _IdAndState(TypedDict):
    id: str
    state: str


class _Reads(Repository):
    def ids_and_states(self) -> list[_IdAndState]:
        return self._rows(_IdAndState, select(jobs.c.id))


def test_a_prepared_statement_refuses_a_row_type_naming_other_columns(store: Store) -> None:
    statement = select(jobs.c.id, jobs.c.state).where(jobs.c.id == bindparam("id"))
    with pytest.raises(TypeError, match="_IdOnly"):
        PreparedRows(store.db.engine, statement, _IdOnly)


def test_a_read_refuses_a_row_type_naming_other_columns(store: Store) -> None:
    with pytest.raises(TypeError, match="_IdAndState"):
        _Reads(store.db.engine).ids_and_states()


def test_rows_are_plain_dicts_with_booleans_as_bool(store: Store) -> None:
    add_worker(store, WorkerState.IDLE)
    prepared = store.workers.get("wk-1")
    listed = store.workers.list()
    assert prepared is not None and type(prepared) is dict and prepared["recycle"] is False
    assert [type(r) for r in listed] == [dict] and listed[0]["recycle"] is False
    assert listed[0] == prepared
