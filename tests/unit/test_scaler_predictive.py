"""PREDICTIVE, the third scalerType: its forecast as a table of behaviours, its memory's JSON round trip
(old rows included), and the scaler's properties with it."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.scaler import (
    DEFAULT_COLD_START_S,
    REASONS,
    Decision,
    Memory,
    Observation,
    decide,
    forecast,
    hold_s,
    memory_from_json,
    memory_to_json,
)
from ember.core.specs import ScalingSpec, from_wire
from tests.unit.test_scaler import NOW
from tests.unit.test_scaler import observations as base_observations

P = ScalingSpec(workers_min=0, workers_max=20, idle_timeout_s=5, scaler_type="PREDICTIVE", scaler_value=2)


def obs(**kw: Any) -> Observation:
    idle_for = kw.pop("idle_for", ())
    busy = kw.get("busy_workers", 0)
    starting = kw.pop("starting", 0)
    kw.setdefault("workers", busy + len(idle_for) + starting)
    kw.setdefault("in_progress", busy)
    return Observation(now=NOW, idle_workers=tuple(NOW - s for s in idle_for), **kw)


def run(o: Observation, mem: Memory = Memory(), spec: ScalingSpec = P, room: int = 60) -> Decision:
    return decide(spec, o, mem, account_room=room)


KNOWN = {"execution_s": 1.0, "cold_start_s": 5.0}

ROWS = [
    # behaviour, observation, memory -> target, reason
    ("nothing arrives, nothing runs", obs(), Memory(), 0, "hold"),
    ("the first job at zero workers starts one at once", obs(queued=1), Memory(), 1, "cold_start"),
    (
        "with no execution time known, one worker per job",
        obs(queued=4, **{"cold_start_s": 5.0}),
        Memory(),
        4,
        "cold_start",
    ),
    (
        "20 jobs/s of 1 s need 20 + sqrt(20) workers",
        obs(arrived=200, busy_workers=5, **KNOWN),
        Memory(),
        20,
        "max_workers",
    ),
    ("2 jobs/s of 1 s: 2 + 1.41 -> 4", obs(arrived=20, busy_workers=2, **KNOWN), Memory(), 4, "forecast"),
    (
        "a backlog the ready workers clear within the cold start starts nobody",
        obs(arrived=10, queued=3, busy_workers=4, **KNOWN),
        Memory(),
        4,
        "hold",
    ),
    (
        "a backlog they cannot clear: clear it within scalerValue s of the cold start",
        # rate 1/s, 1 busy: backlog at ready time = 12 + (1 - 1) x 5 = 12; 12 x 1 / 2 = 6 more; + 1 + 1
        obs(arrived=10, queued=12, busy_workers=1, **KNOWN),
        Memory(),
        8,
        "forecast",
    ),
    (
        "a remembered rate keeps workers past idleTimeout while it decays",
        obs(idle_for=(30, 30, 30), **KNOWN),
        Memory(target=3, rate_per_s=2.0, execution_s=1.0, forecast_at=NOW - 10),
        3,
        "hold",
    ),
    (
        "once under one job per hold, the forecast is zero and idle workers go",
        obs(idle_for=(300, 300), **KNOWN),
        Memory(target=2, rate_per_s=2.0, execution_s=1.0, forecast_at=NOW - 400),
        0,
        "idle",
    ),
    (
        "the execution time remembered is used when none finished lately",
        obs(arrived=20, busy_workers=2, cold_start_s=5.0),
        Memory(execution_s=1.0),
        4,
        "forecast",
    ),
]


@pytest.mark.parametrize(("o", "mem", "target", "reason"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_predictive_table(o: Observation, mem: Memory, target: int, reason: str) -> None:
    d = run(o, mem)
    assert (d.target, d.reason) == (target, reason)
    assert d.reason in REASONS


def test_the_rate_rises_at_once_and_decays_with_the_hold() -> None:
    hold = hold_s(P, 5.0)
    assert hold == 50.0  # max(idleTimeout 5, 10 cold starts of 5 s)
    assert hold_s(replace(P, idle_timeout_s=300), 5.0) == 300.0
    up = forecast(P, obs(arrived=40, **KNOWN), Memory(rate_per_s=1.0, forecast_at=NOW - 1))
    assert up.rate_per_s == 4.0
    down = forecast(P, obs(arrived=0, **KNOWN), Memory(rate_per_s=4.0, forecast_at=NOW - hold))
    assert down.rate_per_s == pytest.approx(4.0 / math.e)
    assert forecast(P, obs(), Memory()).cold_start_s == DEFAULT_COLD_START_S


def test_the_decision_carries_the_forecast_in_its_memory() -> None:
    d = run(obs(arrived=20, busy_workers=2, **KNOWN))
    assert d.memory == Memory(target=4, last_up_at=NOW, rate_per_s=2.0, execution_s=1.0, forecast_at=NOW)
    # At rest, the memory stays as it was (nothing for the lifecycle to write each tick).
    rest = Memory(target=0, last_up_at=NOW - 99)
    assert run(replace(obs(), now=NOW), rest).memory == rest


def test_memory_round_trips_through_json_and_old_rows_decode_to_the_defaults() -> None:
    full = Memory(target=3, last_up_at=NOW, rate_per_s=1.5, execution_s=0.25, forecast_at=NOW + 1)
    assert memory_from_json(memory_to_json(full)) == full
    assert memory_from_json(memory_to_json(Memory(2, NOW))) == Memory(2, NOW)
    assert memory_to_json(Memory(2, NOW)) == {"target": 2, "last_up_at": NOW}  # as rows always were
    assert memory_from_json({"target": 1, "last_up_at": 5}) == Memory(1, 5.0)
    assert memory_from_json({}) == Memory()
    junk = {"target": "3", "last_up_at": "x", "rate_per_s": -1, "execution_s": True, "forecast_at": None}
    assert memory_from_json(junk) == Memory()


def test_the_other_scaler_types_leave_the_forecast_memory_alone() -> None:
    mem = Memory(target=1, rate_per_s=3.0, execution_s=1.0, forecast_at=NOW - 5)
    qd = replace(P, scaler_type="QUEUE_DELAY")
    d = decide(qd, obs(busy_workers=1), mem, account_room=10)
    assert (d.memory.rate_per_s, d.memory.execution_s, d.memory.forecast_at) == (3.0, 1.0, NOW - 5)


def test_the_endpoint_spec_accepts_predictive() -> None:
    spec, problems = from_wire({"name": "p", "scalerType": "PREDICTIVE", "scalerValue": 3})
    assert problems == [] and spec is not None and spec.scaling.scaler_type == "PREDICTIVE"
    _, problems = from_wire({"name": "p", "scalerType": "GUESS"})
    assert "PREDICTIVE" in problems[0].message


# Properties ------------------------------------------------------------------------------------------

specs = st.builds(
    ScalingSpec,
    workers_min=st.integers(0, 5),
    workers_max=st.integers(0, 12),
    idle_timeout_s=st.sampled_from([0, 1, 5, 60]),
    scaler_type=st.just("PREDICTIVE"),
    scaler_value=st.sampled_from([1, 2, 4, 10]),
).filter(lambda s: s.workers_min <= s.workers_max)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    """The QUEUE_DELAY/REQUEST_COUNT tests' observations, with PREDICTIVE's inputs drawn as well."""
    return replace(
        draw(base_observations()),
        arrived=draw(st.integers(0, 300)),
        execution_s=draw(st.none() | st.floats(0.01, 30, allow_nan=False)),
        cold_start_s=draw(st.none() | st.floats(0, 60, allow_nan=False)),
    )


memories = st.one_of(
    st.just(Memory()),
    st.builds(
        Memory,
        target=st.integers(0, 12),
        last_up_at=st.none() | st.floats(NOW - 30, NOW, allow_nan=False),
        rate_per_s=st.floats(0, 50, allow_nan=False),
        execution_s=st.none() | st.floats(0.01, 30, allow_nan=False),
        forecast_at=st.none() | st.floats(NOW - 600, NOW, allow_nan=False),
    ),
)


@given(specs, observations(), memories, st.integers(0, 12), st.booleans())
def test_every_decision_has_a_reason_and_stays_within_bounds(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int, zero: bool
) -> None:
    d = decide(spec, o, mem, account_room=room, zero_balance=zero)
    assert d.reason in REASONS
    cap = min(spec.workers_max, room)
    assert 0 <= d.target <= cap
    if not zero:
        assert d.target >= min(spec.workers_min, cap)
    assert d.memory.target == d.target
    assert memory_from_json(memory_to_json(d.memory)) == d.memory
    assert d == decide(spec, o, mem, account_room=room, zero_balance=zero)


@given(specs, observations(), memories, st.integers(0, 12))
def test_a_queued_job_with_no_worker_always_gets_one(
    spec: ScalingSpec, o: Observation, mem: Memory, room: int
) -> None:
    cold = replace(o, workers=0, busy_workers=0, idle_workers=(), queued=max(1, o.queued))
    d = run(cold, mem, spec, room)
    assert d.target >= 1 if min(spec.workers_max, room) >= 1 else d.target == 0


@given(
    specs,
    observations(),
    memories,
    st.integers(0, 12),
    st.integers(0, 20),
    st.integers(0, 100),
    st.integers(0, 20),
)
def test_more_demand_never_lowers_the_target(
    spec: ScalingSpec,
    o: Observation,
    mem: Memory,
    room: int,
    more_jobs: int,
    more_arrived: int,
    more_work: int,
) -> None:
    busier = replace(
        o,
        queued=o.queued + more_jobs,
        arrived=o.arrived + more_arrived,
        in_progress=o.in_progress + more_work,
    )
    assert run(busier, mem, spec, room).target >= run(o, mem, spec, room).target
