"""The job and worker transition tables are closed: every state has a row, terminal states have no
exits (a job's only way back is /retry of FAILED or TIMED_OUT), and every state reaches a terminal one."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

import pytest

from ember.core import jobs, workers
from ember.core.jobs import JobState
from ember.core.workers import WorkerState

E = TypeVar("E", bound=Enum)


def exits(table: Mapping[E, frozenset[E]], state: E) -> set[E]:
    """The states reachable in one step from `state` (the tables map to-state -> sources)."""
    return {to for to, sources in table.items() if state in sources}


def reachable(table: Mapping[E, frozenset[E]], start: E) -> set[E]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in exits(table, todo.pop()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


TABLES = [
    pytest.param(JobState, jobs.ALLOWED, jobs.TERMINAL, id="jobs"),
    pytest.param(WorkerState, workers.ALLOWED, workers.TERMINAL, id="workers"),
]


@pytest.mark.parametrize(("states", "table", "terminal"), TABLES)
def test_every_state_has_a_row_and_names_only_known_states(
    states: type[Enum], table: Mapping[Enum, frozenset[Enum]], terminal: frozenset[Enum]
) -> None:
    assert set(table) == set(states)
    for sources in table.values():
        assert sources <= set(states)
    assert terminal and terminal <= set(states)


@pytest.mark.parametrize(("states", "table", "terminal"), TABLES)
def test_every_state_can_reach_a_terminal_state(
    states: type[Enum], table: Mapping[Enum, frozenset[Enum]], terminal: frozenset[Enum]
) -> None:
    for state in states:
        assert reachable(table, state) & terminal, f"{state} cannot reach a terminal state"


@pytest.mark.parametrize(("states", "table", "terminal"), TABLES)
def test_every_non_terminal_state_can_move(
    states: type[Enum], table: Mapping[Enum, frozenset[Enum]], terminal: frozenset[Enum]
) -> None:
    for state in set(states) - terminal:
        assert exits(table, state), f"{state} is a dead end"


def test_a_stopped_worker_never_moves_again() -> None:
    assert exits(workers.ALLOWED, WorkerState.STOPPED) == set()


def test_terminal_jobs_leave_only_by_retry_back_to_the_queue() -> None:
    for state in jobs.TERMINAL:
        allowed = {JobState.IN_QUEUE} if state in jobs.RETRYABLE else set()
        assert exits(jobs.ALLOWED, state) == allowed, state
    assert jobs.RETRYABLE <= jobs.TERMINAL


def test_every_worker_state_is_reachable_from_a_new_worker() -> None:
    seen: set[WorkerState] = set()
    for start in workers.INITIAL:
        seen |= reachable(workers.ALLOWED, start)
    assert seen == set(WorkerState)


def test_every_job_state_is_reachable_from_the_queue() -> None:
    assert reachable(jobs.ALLOWED, JobState.IN_QUEUE) == set(JobState)


@pytest.mark.parametrize(
    ("module", "states"),
    [pytest.param(jobs, JobState, id="jobs"), pytest.param(workers, WorkerState, id="workers")],
)
def test_can_transition_and_sources_read_the_table(module: object, states: type[Enum]) -> None:
    table = module.ALLOWED  # type: ignore[attr-defined]
    for frm in states:
        for to in states:
            assert module.can_transition(frm, to) is (frm in table[to])  # type: ignore[attr-defined]
        assert module.sources(frm) == table[frm]  # type: ignore[attr-defined]


def test_live_and_job_taking_worker_states_are_not_terminal() -> None:
    assert not workers.LIVE & workers.TERMINAL
    assert not workers.TAKES_JOBS & workers.TERMINAL
    assert workers.TAKES_JOBS <= workers.LIVE
