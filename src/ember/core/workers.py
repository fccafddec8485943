"""Worker states (the six seed states plus terminal STOPPED), worker types, and the one transition table.

The store derives the states each guarded UPDATE may start from with `sources` (from ALLOWED), so a
transition the table forbids changes no row; `can_transition` answers the same question for a pair.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class WorkerState(StrEnum):
    INITIALIZING = "INITIALIZING"
    IDLE = "IDLE"
    RUNNING = "RUNNING"
    THROTTLED = "THROTTLED"
    OUTDATED = "OUTDATED"
    UNHEALTHY = "UNHEALTHY"
    STOPPED = "STOPPED"


class WorkerType(StrEnum):
    ACTIVE = "ACTIVE"
    FLEX = "FLEX"


TERMINAL: frozenset[WorkerState] = frozenset({WorkerState.STOPPED})

# States in which a worker process exists (or is being started) on a backend.
LIVE: frozenset[WorkerState] = frozenset(
    {WorkerState.INITIALIZING, WorkerState.IDLE, WorkerState.RUNNING, WorkerState.OUTDATED}
)

# States in which a worker may be handed new jobs.
TAKES_JOBS: frozenset[WorkerState] = frozenset(
    {WorkerState.IDLE, WorkerState.RUNNING, WorkerState.INITIALIZING}
)

# A worker that finished its jobs and asked for more (Ember's SDK: job-done with take=N) stays RUNNING
# this long before it is recorded IDLE as of the finish: a job handed to it within the grace costs no
# transitions, and such a short gap between two jobs counts as running time (billed for a flex worker).
SETTLE_GRACE_S = 0.02

_S = WorkerState
# to-state -> the states it may be reached from.
ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    _S.INITIALIZING: frozenset({_S.THROTTLED, _S.UNHEALTHY}),
    _S.IDLE: frozenset({_S.INITIALIZING, _S.RUNNING}),
    _S.RUNNING: frozenset({_S.IDLE, _S.INITIALIZING}),
    _S.THROTTLED: frozenset({_S.UNHEALTHY}),
    _S.OUTDATED: frozenset({_S.INITIALIZING, _S.IDLE, _S.RUNNING, _S.THROTTLED}),
    _S.UNHEALTHY: frozenset({_S.INITIALIZING, _S.IDLE, _S.RUNNING, _S.OUTDATED}),
    _S.STOPPED: frozenset({_S.INITIALIZING, _S.IDLE, _S.RUNNING, _S.THROTTLED, _S.OUTDATED, _S.UNHEALTHY}),
}

# Where a brand-new worker record may start.
INITIAL: frozenset[WorkerState] = frozenset({_S.INITIALIZING, _S.THROTTLED})


def sources(to: WorkerState) -> frozenset[WorkerState]:
    return ALLOWED[to]


def can_transition(frm: WorkerState, to: WorkerState) -> bool:
    return frm in ALLOWED[to]


def is_lost(
    *,
    last_seen_at: float | None,
    launched_at: float,
    now: float,
    ping_timeout_s: float,
    init_timeout_s: float,
    state: WorkerState,
) -> str | None:
    """The liveness rule: why a live worker should be considered lost, or None when it is fine.

    A worker that never reported is lost after `init_timeout_s` from launch; one that reported is lost
    when nothing was heard from it for `ping_timeout_s`.
    """
    if state not in LIVE:
        return None
    if last_seen_at is None:
        if now - launched_at > init_timeout_s:
            return f"not ready within the init timeout of {int(init_timeout_s)} s"
        return None
    if now - last_seen_at > ping_timeout_s:
        return f"no ping for {int(now - last_seen_at)} s"
    return None


class Ping(NamedTuple):
    """A worker's latest heartbeat: when it came, and the ids of the jobs the worker said it holds."""

    at: float
    held: frozenset[str]
