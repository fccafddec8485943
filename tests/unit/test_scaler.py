"""The scaler as a spec: one table row per behaviour, then Hypothesis properties."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.scaler import REASONS, Decision, Memory, Observation, decide, window_s
from ember.core.specs import ScalingSpec

NOW = 1_700_000_000.0
QD = ScalingSpec(workers_min=0, workers_max=3, idle_timeout_s=5, scaler_type="QUEUE_DELAY", scaler_value=4)
RC = replace(QD, scaler_type="REQUEST_COUNT", scaler_value=2)


def obs(**kw: Any) -> Observation:
    idle_for = kw.pop("idle_for", ())
    busy = kw.get("busy_workers", 0)
    starting = kw.pop("starting", 0)
    kw.setdefault("workers", busy + len(idle_for) + starting)
    return Observation(now=NOW, idle_workers=tuple(NOW - s for s in idle_for), **kw)


def run(
    spec: ScalingSpec, o: Observation, mem: Memory = Memory(), room: int = 60, zero: bool = False
) -> Decision:
    return decide(spec, o, mem, account_room=room, zero_balance=zero)


def row(
    behaviour: str,
    spec: ScalingSpec,
    o: Observation,
    target: int,
    reason: str,
    *,
    mem: Memory = Memory(),
    room: int = 60,
    zero: bool = False,
) -> Any:
    return pytest.param(spec, o, mem, room, zero, target, reason, id=behaviour)


MIN1, MIN2, MIN3 = (replace(QD, workers_min=n) for n in (1, 2, 3))
MAX0, MAX10 = replace(QD, workers_max=0), replace(QD, workers_max=10)

# behaviour, spec, observation -> target, reason (keywords: memory, account room, zero balance)
ROWS = [
    row("an empty endpoint stays empty", QD, obs(), 0, "hold"),
    row("the first job at zero workers starts one at once", QD, obs(queued=1), 1, "cold_start"),
    row("a cold start does not wait for the delay", QD, obs(queued=9), 1, "cold_start"),
    row("lowPriority jobs alone never start a worker", QD, obs(queued_low_priority=4), 0, "low_priority"),
    row(
        "a normal job beside lowPriority ones does", QD, obs(queued=1, queued_low_priority=4), 1, "cold_start"
    ),
    row(
        "a young queue waits for the busy worker",
        QD,
        obs(queued=2, oldest_wait_s=3.9, busy_workers=1),
        1,
        "hold",
    ),
    row(
        "an old queue adds one worker per job",
        QD,
        obs(queued=2, oldest_wait_s=4.1, busy_workers=1),
        3,
        "queue_delay",
    ),
    row(
        "added workers stop at workersMax",
        QD,
        obs(queued=5, oldest_wait_s=10, busy_workers=1),
        3,
        "max_workers",
    ),
    row(
        "a starting worker is waited for",
        QD,
        obs(queued=2, oldest_wait_s=10, busy_workers=1, starting=1),
        2,
        "hold",
    ),
    row("an idle worker will take the queue", QD, obs(queued=1, oldest_wait_s=10, idle_for=(60,)), 1, "hold"),
    row("a flex worker idle past idleTimeout goes", QD, obs(idle_for=(6,)), 0, "idle"),
    row("a worker idle less than idleTimeout stays", QD, obs(idle_for=(4,)), 1, "hold"),
    row("only the long-idle workers go", QD, obs(idle_for=(1, 9, 30), busy_workers=1), 2, "idle"),
    row("busy workers stay with an empty queue", QD, obs(busy_workers=2, in_progress=2), 2, "hold"),
    row("workersMin keeps workers up", MIN1, obs(idle_for=(100,)), 1, "min_workers"),
    row("workersMin starts workers with no demand", MIN2, obs(), 2, "min_workers"),
    row(
        "the account limit caps a scale-up",
        QD,
        obs(queued=3, oldest_wait_s=9, busy_workers=1),
        2,
        "account_limit",
        room=2,
    ),
    row("no account room, no cold start", QD, obs(queued=1), 0, "account_limit", room=0),
    row("the account limit wins over workersMin", MIN3, obs(), 1, "account_limit", room=1),
    row("workersMax 0 means no cold start", MAX0, obs(queued=1), 0, "max_workers"),
    row("a zero balance starts nothing", QD, obs(queued=1), 0, "zero_balance", zero=True),
    row(
        "a zero balance keeps only busy workers",
        MIN2,
        obs(busy_workers=1, idle_for=(1,)),
        1,
        "zero_balance",
        zero=True,
    ),
    row("REQUEST_COUNT cold start covers the queue", RC, obs(queued=5), 3, "cold_start"),
    row(
        "REQUEST_COUNT wants ceil(jobs / value)",
        RC,
        obs(queued=3, in_progress=2, busy_workers=1),
        3,
        "backlog",
    ),
    row(
        "REQUEST_COUNT keeps fresh idle workers",
        RC,
        obs(in_progress=1, busy_workers=1, idle_for=(1,)),
        2,
        "hold",
    ),
    row(
        "REQUEST_COUNT lets long-idle workers go",
        RC,
        obs(in_progress=1, busy_workers=1, idle_for=(10,)),
        1,
        "idle",
    ),
    row("REQUEST_COUNT ignores lowPriority jobs", RC, obs(queued_low_priority=8), 0, "low_priority"),
    row(
        "inside the delay window a lagging launch is not doubled",
        QD,
        obs(queued=3, oldest_wait_s=10, busy_workers=1),
        2,
        "hold",
        mem=Memory(2, NOW - 2),
    ),
    row(
        "after the delay window it scales again",
        MAX10,
        obs(queued=3, oldest_wait_s=10, busy_workers=2),
        5,
        "queue_delay",
        mem=Memory(2, NOW - 4),
    ),
    row(
        "inside the delay window the target does not fall",
        QD,
        obs(idle_for=(100, 100)),
        2,
        "hold",
        mem=Memory(2, NOW - 1),
    ),
]


@pytest.mark.parametrize(("spec", "o", "mem", "room", "zero", "target", "reason"), ROWS)
def test_scaler_rule(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int, zero: bool, target: int, reason: str
) -> None:
    decision = decide(spec, o, mem, account_room=room, zero_balance=zero)
    assert (decision.target, decision.reason) == (target, reason)
    assert decision.reason in REASONS


def test_memory_records_when_the_target_rose() -> None:
    up = run(QD, obs(queued=1))
    assert up.memory == Memory(1, NOW)
    same = run(QD, replace(obs(queued=1, starting=1), now=NOW + 10), up.memory)
    assert same.memory == Memory(1, NOW)
    down = run(QD, replace(obs(idle_for=(6,)), now=NOW + 20), same.memory)
    assert down.memory == Memory(0, NOW)


def test_the_window_is_the_delay_for_queue_delay_and_fixed_for_request_count() -> None:
    assert window_s(replace(QD, scaler_value=7)) == 7
    assert window_s(replace(RC, scaler_value=50)) == 4.0


def test_a_clock_that_steps_back_does_not_freeze_the_window() -> None:
    mem = Memory(1, NOW + 3600)
    decision = run(QD, obs(queued=2, oldest_wait_s=10, busy_workers=1), mem)
    assert decision.target == 3


# Hypothesis properties ---------------------------------------------------------------------------

specs = st.builds(
    ScalingSpec,
    workers_min=st.integers(0, 5),
    workers_max=st.integers(0, 8),
    idle_timeout_s=st.sampled_from([0, 1, 5, 60]),
    scaler_type=st.sampled_from(["QUEUE_DELAY", "REQUEST_COUNT"]),
    scaler_value=st.sampled_from([1, 2, 4, 10]),
).filter(lambda s: s.workers_min <= s.workers_max)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    busy = draw(st.integers(0, 6))
    idle = draw(st.lists(st.floats(0, 120, allow_nan=False), max_size=6))
    starting = draw(st.integers(0, 3))
    queued = draw(st.integers(0, 30))
    return Observation(
        now=NOW,
        queued=queued,
        queued_low_priority=draw(st.integers(0, 10)),
        oldest_wait_s=draw(st.floats(0, 60, allow_nan=False)) if queued else 0.0,
        in_progress=busy + draw(st.integers(0, 4)),
        workers=busy + len(idle) + starting,
        busy_workers=busy,
        idle_workers=tuple(NOW - s for s in idle),
    )


memories = st.one_of(
    st.just(Memory()),
    st.builds(
        Memory, target=st.integers(0, 8), last_up_at=st.none() | st.floats(NOW - 30, NOW, allow_nan=False)
    ),
)
rooms = st.integers(0, 10)


@given(specs, observations(), memories, rooms, st.booleans())
def test_target_stays_within_bounds(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int, zero: bool
) -> None:
    d = run(spec, o, mem, room, zero)
    cap = min(spec.workers_max, room)
    assert 0 <= d.target <= cap
    if zero:
        assert d.target <= o.busy_workers
    else:
        assert d.target >= min(spec.workers_min, cap)
    assert d.reason in REASONS
    assert d.memory.target == d.target


@given(specs, observations(), memories, rooms)
def test_a_queued_job_with_no_worker_always_gets_one(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int
) -> None:
    cold = replace(o, workers=0, busy_workers=0, idle_workers=(), queued=max(1, o.queued))
    d = run(spec, cold, mem, room)
    if min(spec.workers_max, room) >= 1:
        assert d.target >= 1
    else:
        assert d.target == 0 and d.reason in ("max_workers", "account_limit")


@given(
    specs,
    observations(),
    memories,
    rooms,
    st.integers(0, 20),
    st.floats(0, 30, allow_nan=False),
    st.integers(0, 20),
)
def test_more_demand_never_lowers_the_target(
    spec: ScalingSpec,
    o: Observation,
    mem: Memory,
    room: int,
    more_jobs: int,
    more_wait: float,
    more_work: int,
) -> None:
    busier = replace(
        o,
        queued=o.queued + more_jobs,
        oldest_wait_s=o.oldest_wait_s + more_wait,
        in_progress=o.in_progress + more_work,
    )
    assert run(spec, busier, mem, room).target >= run(spec, o, mem, room).target


@given(specs, observations(), memories, rooms, st.integers(0, 50))
def test_low_priority_jobs_never_raise_the_target(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int, low: int
) -> None:
    assert run(spec, replace(o, queued_low_priority=low), mem, room).target == run(spec, o, mem, room).target


@given(specs, observations(), memories, rooms, st.booleans())
def test_same_inputs_same_decision(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int, zero: bool
) -> None:
    assert run(spec, o, mem, room, zero) == run(spec, o, mem, room, zero)


@given(specs, observations(), observations(), memories, rooms, st.floats(0, 0.99))
def test_no_flapping_inside_one_delay_window(
    spec: ScalingSpec, first: Observation, second: Observation, mem: Memory, room: int, fraction: float
) -> None:
    up = run(spec, first, mem, room)
    if up.target <= mem.target:
        return
    later = replace(second, now=NOW + fraction * window_s(spec))
    again = run(spec, later, up.memory, room)
    # Inside the window the target never falls …
    assert again.target >= up.target
    # … and under QUEUE_DELAY it does not rise again while the launched workers are awaited.
    if spec.scaler_type == "QUEUE_DELAY" and again.reason != "cold_start":
        assert again.target <= max(up.target, later.workers, min(spec.workers_min, spec.workers_max, room))
