"""The reconciler's plan: which workers to launch (ACTIVE or FLEX), stop, or mark OUTDATED so that an
endpoint reaches the scaler's target on its current release. Pure; the lifecycle loop carries it out.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from ember.core.workers import WorkerState, WorkerType

_S = WorkerState
READY: frozenset[WorkerState] = frozenset({_S.IDLE, _S.RUNNING})

# Stop reasons, as the lifecycle loop records them on the worker.
STOP_SCALE_DOWN = "scale_down"
STOP_OUTDATED = "outdated"
STOP_MAKE_ROOM = "make_room_for_active"


@dataclass(frozen=True)
class WorkerView:
    """What the reconciler needs to know of one worker. `busy`: processing at least one job."""

    id: str
    state: WorkerState
    type: WorkerType
    release: Hashable
    busy: bool = False
    idle_since: float | None = None


@dataclass(frozen=True)
class Plan:
    """Launch these (new workers on the current release), stop these (id, reason), mark these OUTDATED."""

    launch: list[WorkerType] = field(default_factory=list)
    stop: list[tuple[str, str]] = field(default_factory=list)
    outdate: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.launch or self.stop or self.outdate)


def plan(target: int, workers: Sequence[WorkerView], *, release: Hashable, workers_min: int) -> Plan:
    """The steps that move `workers` toward `target` workers of `release`.

    - Counting: workers of `release` that are not STOPPED or OUTDATED count toward `target`;
      Throttled and Unhealthy ones count too (they are wanted; the lifecycle loop restarts them).
    - Launch: `target` minus that count. The first min(workersMin, target) current workers are ACTIVE,
      the rest FLEX; if the actives fall short while the count is full, an idle FLEX worker is
      stopped to make room for an ACTIVE one.
    - Scale-down: stop the surplus, never a busy worker: Throttled, then Unhealthy, then Idle FLEX
      (idle the longest first), then Initializing FLEX, then Idle and Initializing ACTIVE, never
      taking the actives below min(workersMin, target).
    - Rollout: workers of another release are retired. Old FLEX ones and old ones that are not ready
      go at once: stopped when not busy, marked OUTDATED when busy (they finish, then stop). Old ACTIVE
      ready ones are retired only while the ready ACTIVE workers of `release` plus the old ones kept
      still cover min(workersMin, target), so active capacity never drops during a rollout.
    - OUTDATED workers are stopped once they are no longer busy.
    Idempotent: planning again after the plan is carried out yields an empty plan.
    """
    out = Plan()
    live = [w for w in workers if w.state != _S.STOPPED]
    current = [w for w in live if w.release == release and w.state != _S.OUTDATED]
    old = [w for w in live if w.release != release and w.state != _S.OUTDATED]
    active_floor = max(0, min(workers_min, target))

    for w in live:
        if w.state == _S.OUTDATED and not w.busy:
            out.stop.append((w.id, STOP_OUTDATED))

    _retire_old(out, old, current, active_floor)

    actives = sum(1 for w in current if w.type == WorkerType.ACTIVE)
    missing = max(0, target - len(current))
    new_actives = min(missing, max(0, active_floor - actives))
    out.launch.extend([WorkerType.ACTIVE] * new_actives + [WorkerType.FLEX] * (missing - new_actives))

    if len(current) > target:
        _scale_down(out, current, len(current) - target, active_floor)
    stopping = {wid for wid, _ in out.stop}
    remaining = [w for w in current if w.id not in stopping]
    short = active_floor - new_actives - sum(1 for w in remaining if w.type == WorkerType.ACTIVE)
    swappable = [w for w in remaining if w.type == WorkerType.FLEX and _stoppable(w)]
    for w in sorted(swappable, key=_stop_order)[: max(0, short)]:
        out.stop.append((w.id, STOP_MAKE_ROOM))
        out.launch.append(WorkerType.ACTIVE)
    return out


def _retire_old(out: Plan, old: list[WorkerView], current: list[WorkerView], active_floor: int) -> None:
    ready_new_actives = sum(1 for w in current if w.type == WorkerType.ACTIVE and w.state in READY)
    old_ready_actives = [w for w in old if w.type == WorkerType.ACTIVE and w.state in READY]
    # Old active workers that must keep serving until enough new ones are ready.
    keep = max(0, min(len(old_ready_actives), active_floor - ready_new_actives))
    kept = {w.id for w in sorted(old_ready_actives, key=lambda w: (not w.busy, w.id))[:keep]}
    for w in old:
        if w.id in kept:
            continue
        if w.busy:
            out.outdate.append(w.id)
        else:
            out.stop.append((w.id, STOP_OUTDATED))


def _scale_down(out: Plan, current: list[WorkerView], surplus: int, active_floor: int) -> None:
    actives = sum(1 for w in current if w.type == WorkerType.ACTIVE)
    for w in sorted((w for w in current if _stoppable(w)), key=_stop_order):
        if surplus == 0:
            break
        if w.type == WorkerType.ACTIVE:
            if actives <= active_floor:
                continue
            actives -= 1
        out.stop.append((w.id, STOP_SCALE_DOWN))
        surplus -= 1


def _stoppable(w: WorkerView) -> bool:
    return not w.busy and w.state != _S.RUNNING


_STATE_RANK = {_S.THROTTLED: 0, _S.UNHEALTHY: 1, _S.IDLE: 2, _S.INITIALIZING: 3}


def _stop_order(w: WorkerView) -> tuple[int, int, float, str]:
    type_rank = 0 if w.type == WorkerType.FLEX or w.state in (_S.THROTTLED, _S.UNHEALTHY) else 1
    idle_since = w.idle_since if w.idle_since is not None else float("inf")
    return (type_rank, _STATE_RANK.get(w.state, 4), idle_since, w.id)
