"""Typed rows on the real databases: each row type names exactly its statement's columns (checked when
the statement is built), rows come back as plain dicts with booleans as bool and states as core's enum
members, and a guarded UPDATE cannot name a move the transition tables do not allow."""

from __future__ import annotations

from typing import TypedDict

import pytest
from sqlalchemy import bindparam, select

from ember.core import jobs as core_jobs
from ember.core import workers as core_workers
from ember.core.jobs import JobState
from ember.core.workers import WorkerState, WorkerType
from ember.store.db import PreparedRows, Repository
from ember.store.facade import Store
from ember.store.schema import jobs, workers
from ember.store.transitions import guard
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


def test_states_come_back_as_their_enum_members_on_both_paths(store: Store) -> None:
    add_worker(store, WorkerState.IDLE)
    prepared = store.workers.get("wk-1")
    listed = store.workers.list()[0]
    assert prepared is not None
    for row in (prepared, listed):
        assert type(row["state"]) is WorkerState and row["state"] is WorkerState.IDLE
        assert type(row["type"]) is WorkerType
    events = store.workers.history("wk-1")
    assert events and all(type(e["to_state"]) is WorkerState for e in events)


def test_a_guard_names_only_moves_the_transition_tables_allow() -> None:
    sql = str(guard(jobs.c.state, core_jobs.ALLOWED, JobState.IN_QUEUE, [JobState.FAILED]))
    assert "'FAILED'" in sql and "'IN_PROGRESS'" not in sql
    everything = str(guard(jobs.c.state, core_jobs.ALLOWED, JobState.CANCELLED))
    assert "'IN_QUEUE'" in everything and "'IN_PROGRESS'" in everything
    with pytest.raises(ValueError, match="not in the transition table"):
        guard(jobs.c.state, core_jobs.ALLOWED, JobState.COMPLETED, [JobState.IN_QUEUE])
    with pytest.raises(ValueError, match="not in the transition table"):
        guard(workers.c.state, core_workers.ALLOWED, WorkerState.RUNNING, [WorkerState.STOPPED])


def test_a_worker_s_state_changes_only_by_a_transition(store: Store) -> None:
    add_worker(store, WorkerState.IDLE)
    with pytest.raises(ValueError, match="transition"):
        store.workers.update("wk-1", state=WorkerState.RUNNING)
    store.workers.update("wk-1", failures=2)
    row = store.workers.get("wk-1")
    assert row is not None and row["state"] is WorkerState.IDLE and row["failures"] == 2
