"""The reconciler's plan as a spec (launch ACTIVE/FLEX, scale down, roll out a new release), and
properties: busy workers are never stopped, plans are idempotent, rollouts keep active capacity."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.reconcile import Plan, WorkerView, plan
from ember.core.workers import WorkerState, WorkerType

S = WorkerState
A, F = WorkerType.ACTIVE, WorkerType.FLEX
NEW, OLD = 2, 1


def w(
    id: str, state: WorkerState = S.IDLE, type: WorkerType = F, release: int = NEW, **kw: Any
) -> WorkerView:
    busy = kw.pop("busy", state == S.RUNNING)
    return WorkerView(id, state, type, release, busy=busy, **kw)


def row(behaviour: str, workers: list[WorkerView], target: int, expected: Plan, workers_min: int = 0) -> Any:
    return pytest.param(workers, target, workers_min, expected, id=behaviour)


ROWS = [
    row("nothing to do", [], 0, Plan()),
    row("the first workersMin are active, the rest flex", [], 3, Plan(launch=[A, F, F]), workers_min=1),
    row("a reached target needs nothing", [w("a", type=A), w("b", S.RUNNING)], 2, Plan(), workers_min=1),
    row("throttled and unhealthy workers count", [w("a", S.THROTTLED), w("b", S.UNHEALTHY)], 2, Plan()),
    row("launches make up the difference", [w("a", S.RUNNING)], 3, Plan(launch=[F, F])),
    row(
        "scale-down stops the longest-idle flex workers",
        [w("a", idle_since=10.0), w("b", idle_since=5.0), w("c", idle_since=20.0)],
        1,
        Plan(stop=[("b", "scale_down"), ("a", "scale_down")]),
    ),
    row("a busy worker is never stopped", [w("a", S.RUNNING), w("b", S.IDLE, busy=True)], 0, Plan()),
    row(
        "flex workers go before active ones",
        [w("a", type=A, idle_since=1.0), w("b", idle_since=50.0)],
        1,
        Plan(stop=[("b", "scale_down")]),
        workers_min=1,
    ),
    row(
        "actives never go below workersMin",
        [w("a", type=A, idle_since=1.0), w("b", type=A, idle_since=1.0), w("c", S.RUNNING)],
        2,
        Plan(),
        workers_min=2,
    ),
    row(
        "a lower target (account limit) may take actives down to it",
        [w("a", type=A, idle_since=1.0), w("b", type=A, idle_since=2.0)],
        1,
        Plan(stop=[("a", "scale_down")]),
        workers_min=2,
    ),
    row(
        "throttled workers go first, then unhealthy, then idle",
        [w("a", idle_since=1.0), w("b", S.UNHEALTHY), w("c", S.THROTTLED), w("d", S.INITIALIZING)],
        1,
        Plan(stop=[("c", "scale_down"), ("b", "scale_down"), ("a", "scale_down")]),
    ),
    row(
        "an idle flex worker makes room for a missing active one",
        [w("a", idle_since=1.0)],
        1,
        Plan(launch=[A], stop=[("a", "make_room_for_active")]),
        workers_min=1,
    ),
    row(
        "rollout: old idle flex stops at once, old busy flex finishes, replacements start",
        [w("a", release=OLD), w("b", S.RUNNING, release=OLD)],
        2,
        Plan(launch=[F, F], stop=[("a", "outdated")], outdate=["b"]),
    ),
    row(
        "rollout: an old worker that is not ready stops at once",
        [w("a", S.INITIALIZING, release=OLD), w("b", S.THROTTLED, A, release=OLD)],
        0,
        Plan(stop=[("a", "outdated"), ("b", "outdated")]),
    ),
    row(
        "rollout: old actives keep serving until replacements are ready",
        [w("a", type=A, release=OLD), w("b", S.INITIALIZING, A)],
        1,
        Plan(),
        workers_min=1,
    ),
    row(
        "rollout: the first plan starts the active replacement only",
        [w("a", type=A, release=OLD)],
        1,
        Plan(launch=[A]),
        workers_min=1,
    ),
    row(
        "rollout: a ready replacement retires the old active",
        [w("a", type=A, release=OLD), w("b", type=A)],
        1,
        Plan(stop=[("a", "outdated")]),
        workers_min=1,
    ),
    row(
        "rollout: a busy old active is marked outdated once replaced",
        [w("a", S.RUNNING, A, release=OLD), w("b", type=A)],
        1,
        Plan(outdate=["a"]),
        workers_min=1,
    ),
    row(
        "an outdated worker stops when its job is done",
        [w("a", S.OUTDATED, busy=False)],
        0,
        Plan(stop=[("a", "outdated")]),
    ),
    row("an outdated worker finishes its job", [w("a", S.OUTDATED, busy=True)], 0, Plan()),
    row(
        "outdated workers do not count toward the target",
        [w("a", S.OUTDATED, busy=True)],
        1,
        Plan(launch=[F]),
    ),
    row(
        "stopped workers are ignored",
        [w("a", S.STOPPED), w("b", S.STOPPED, release=OLD)],
        1,
        Plan(launch=[F]),
    ),
]


@pytest.mark.parametrize(("workers", "target", "workers_min", "expected"), ROWS)
def test_reconcile_rule(workers: list[WorkerView], target: int, workers_min: int, expected: Plan) -> None:
    assert plan(target, workers, release=NEW, workers_min=workers_min) == expected


def test_plan_reports_when_it_is_empty() -> None:
    assert Plan().empty
    assert not Plan(launch=[F]).empty


# Properties --------------------------------------------------------------------------------------

_n = 0


def apply(workers: list[WorkerView], p: Plan) -> list[WorkerView]:
    """Carry out a plan the way the lifecycle loop would."""
    global _n
    stopped = {wid for wid, _ in p.stop}
    out = [replace(x, state=S.OUTDATED) if x.id in p.outdate else x for x in workers if x.id not in stopped]
    for kind in p.launch:
        _n += 1
        out.append(WorkerView(f"new{_n}", S.INITIALIZING, kind, NEW))
    return out


def progress(workers: list[WorkerView]) -> list[WorkerView]:
    """One step of time: starting workers become idle, busy workers finish."""
    done = []
    for x in workers:
        state = S.IDLE if x.state in (S.INITIALIZING, S.RUNNING, S.THROTTLED, S.UNHEALTHY) else x.state
        done.append(replace(x, state=state, busy=False, idle_since=0.0))
    return done


@st.composite
def fleets(draw: st.DrawFn) -> list[WorkerView]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        state = draw(st.sampled_from([s for s in WorkerState]))
        busy = state in (S.RUNNING, S.OUTDATED) and draw(st.booleans()) or state == S.RUNNING
        out.append(
            WorkerView(
                f"w{i}",
                state,
                draw(st.sampled_from([A, F])),
                draw(st.sampled_from([OLD, NEW])),
                busy=busy,
                idle_since=draw(st.none() | st.floats(0, 100, allow_nan=False)),
            )
        )
    return out


@given(fleets(), st.integers(0, 6), st.integers(0, 4))
def test_a_plan_never_stops_a_busy_worker_and_names_real_ids(
    workers: list[WorkerView], target: int, workers_min: int
) -> None:
    p = plan(target, workers, release=NEW, workers_min=workers_min)
    by_id = {x.id: x for x in workers}
    stops = [wid for wid, _ in p.stop]
    assert len(stops) == len(set(stops))
    assert not set(stops) & set(p.outdate)
    for wid in stops:
        assert not by_id[wid].busy and by_id[wid].state not in (S.RUNNING, S.STOPPED)
    for wid in p.outdate:
        assert by_id[wid].busy and by_id[wid].release == OLD


@given(fleets(), st.integers(0, 6), st.integers(0, 4))
def test_planning_again_after_carrying_out_a_plan_changes_nothing(
    workers: list[WorkerView], target: int, workers_min: int
) -> None:
    first = plan(target, workers, release=NEW, workers_min=workers_min)
    assert plan(target, apply(workers, first), release=NEW, workers_min=workers_min) == Plan()


@given(fleets(), st.integers(0, 6), st.integers(0, 4))
def test_plans_converge_to_the_target_on_the_new_release(
    workers: list[WorkerView], target: int, workers_min: int
) -> None:
    for _ in range(6):
        workers = progress(apply(workers, plan(target, workers, release=NEW, workers_min=workers_min)))
    live = [x for x in workers if x.state != S.STOPPED]
    assert all(x.release == NEW and x.state == S.IDLE for x in live)
    assert len(live) == target
    assert sum(1 for x in live if x.type == A) >= min(workers_min, target)


@given(st.integers(1, 4), st.integers(0, 3), st.integers(0, 3))
def test_a_rollout_never_drops_active_capacity_below_workers_min(
    workers_min: int, flex: int, busy_old: int
) -> None:
    workers = [w(f"a{i}", type=A, release=OLD, idle_since=0.0) for i in range(workers_min)]
    workers += [w(f"f{i}", S.RUNNING if i < busy_old else S.IDLE, release=OLD) for i in range(flex)]
    target = workers_min + flex
    for _ in range(6):
        workers = apply(workers, plan(target, workers, release=NEW, workers_min=workers_min))
        serving = [x for x in workers if x.type == A and x.state in (S.IDLE, S.RUNNING)]
        assert len(serving) >= workers_min
        workers = progress(workers)
    assert all(x.release == NEW for x in workers if x.state != S.STOPPED)
