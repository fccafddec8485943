"""Billing from worker-state intervals: the seed's table of billed states, per-second rounding, the
active discount, and exact integer micro-dollars."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.core.billing import (
    Billed,
    Interval,
    PriceTable,
    bill,
    charge,
    cost_micros,
    intervals_for,
    is_billable,
    micros_per_s_from_hourly,
)
from ember.core.workers import WorkerState, WorkerType

S = WorkerState
ACTIVE, FLEX = WorkerType.ACTIVE, WorkerType.FLEX
T0 = 1_700_000_000.0
PRICES = PriceTable(gpu_micros_per_s={"TEST_GPU": 100}, cpu_micros_per_s=7, unknown_gpu_micros_per_s=50)


def iv(
    state: WorkerState,
    start: float,
    end: float,
    *,
    type: WorkerType = FLEX,
    worker: str = "wk-1",
    gpu: str | None = "TEST_GPU",
    count: int = 1,
    processing: bool = False,
) -> Interval:
    return Interval(worker, "ep-1", state, type, gpu, count, T0 + start, T0 + end, processing)


def timeline(type: WorkerType, *spans: tuple[WorkerState, float]) -> list[Interval]:
    out, at = [], 0.0
    for state, length in spans:
        out.append(iv(state, at, at + length, type=type))
        at += length
    return out


@pytest.mark.parametrize(
    ("state", "type", "processing", "billed"),
    [
        (S.INITIALIZING, FLEX, False, True),
        (S.IDLE, FLEX, False, False),
        (S.RUNNING, FLEX, True, True),
        (S.OUTDATED, FLEX, True, True),
        (S.OUTDATED, FLEX, False, False),
        (S.THROTTLED, FLEX, False, False),
        (S.UNHEALTHY, FLEX, False, False),
        (S.STOPPED, FLEX, False, False),
        (S.INITIALIZING, ACTIVE, False, True),
        (S.IDLE, ACTIVE, False, True),
        (S.RUNNING, ACTIVE, True, True),
        (S.OUTDATED, ACTIVE, False, True),
        (S.THROTTLED, ACTIVE, False, False),
        (S.UNHEALTHY, ACTIVE, False, False),
        (S.STOPPED, ACTIVE, False, False),
    ],
)
def test_billed_states_follow_the_seed_table(
    state: WorkerState, type: WorkerType, processing: bool, billed: bool
) -> None:
    assert is_billable(state, type, processing) is billed


def test_flex_worker_initializing_3s_running_10s_idle_5s_is_billed_13s() -> None:
    intervals = timeline(FLEX, (S.INITIALIZING, 3), (S.RUNNING, 10), (S.IDLE, 5))
    charges = charge(intervals, PRICES)
    assert sum(c.seconds for c in charges) == 13
    assert sum(c.cost_micros for c in charges) == 13 * 100
    assert all(c.discount_pct == 0 for c in charges)


def test_active_worker_idle_for_an_hour_is_billed_3600s_at_the_active_rate() -> None:
    charges = charge([iv(S.IDLE, 0, 3600, type=ACTIVE)], PRICES)
    assert [c.seconds for c in charges] == [3600]
    assert charges[0].cost_micros == 3600 * 70  # 100 micros/s less 30 %
    assert charges[0].discount_pct == 30


def test_throttled_and_crash_looping_workers_pay_nothing_for_their_waiting() -> None:
    throttled = charge([iv(S.THROTTLED, 0, 600)], PRICES)
    crash_loop = timeline(
        FLEX, (S.INITIALIZING, 2), (S.UNHEALTHY, 10), (S.INITIALIZING, 2), (S.UNHEALTHY, 20)
    )
    looped = charge(crash_loop, PRICES)
    assert throttled == []
    assert [c.state for c in looped] == [S.INITIALIZING, S.INITIALIZING]
    assert sum(c.seconds for c in looped) == 4


def test_an_active_worker_throttled_or_unhealthy_is_not_billed_either() -> None:
    assert charge([iv(S.THROTTLED, 0, 60, type=ACTIVE), iv(S.UNHEALTHY, 60, 90, type=ACTIVE)], PRICES) == []


def test_outdated_flex_bills_only_while_it_finishes_its_job() -> None:
    intervals = [iv(S.OUTDATED, 0, 7, processing=True), iv(S.OUTDATED, 7, 9, processing=False)]
    assert [c.seconds for c in charge(intervals, PRICES)] == [7]


def test_fractions_carry_across_a_workers_intervals() -> None:
    intervals = [
        iv(S.RUNNING, 0, 0.6),
        iv(S.IDLE, 0.6, 1.0),
        iv(S.RUNNING, 1.0, 1.6),
        iv(S.RUNNING, 1.6, 2.4),
    ]
    charges = charge(intervals, PRICES)
    assert [c.seconds for c in charges] == [0, 1, 1]  # 0.6, 1.2, 2.0 s cumulated


def test_carry_is_returned_and_reused_between_meter_runs() -> None:
    first = bill([iv(S.RUNNING, 0, 1.5)], PRICES)
    assert first.carry_ms == {"wk-1": 500}
    second = bill([iv(S.RUNNING, 1.5, 3.0)], PRICES, first.carry_ms)
    assert [c.seconds for c in second.charges] == [2]
    assert second.carry_ms == {"wk-1": 0}


def test_carry_is_kept_per_worker() -> None:
    intervals = [iv(S.RUNNING, 0, 0.7, worker="a"), iv(S.RUNNING, 0, 0.7, worker="b")]
    result = bill(intervals, PRICES)
    assert [c.seconds for c in result.charges] == [0, 0]
    assert result.carry_ms == {"a": 700, "b": 700}


def test_large_epoch_timestamps_do_not_lose_a_second() -> None:
    start = 1_700_000_000.3
    intervals = [Interval("w", "e", S.RUNNING, FLEX, "TEST_GPU", 1, start, start + 3.0)]
    assert charge(intervals, PRICES)[0].seconds == 3


def test_backwards_interval_bills_nothing() -> None:
    assert charge([iv(S.RUNNING, 10, 5)], PRICES)[0].seconds == 0


@pytest.mark.parametrize(
    ("gpu", "count", "rate"),
    [("TEST_GPU", 1, 100), ("TEST_GPU", 4, 400), (None, 1, 7), ("", 2, 7), ("NEW_GPU", 2, 100)],
)
def test_rate_is_per_gpu_times_count_or_the_cpu_rate(gpu: str | None, count: int, rate: int) -> None:
    [c] = charge([iv(S.RUNNING, 0, 10, gpu=gpu, count=count)], PRICES)
    assert c.base_micros_per_s == rate
    assert c.cost_micros == 10 * rate


def test_default_prices_cover_test_gpu_and_cpu() -> None:
    prices = PriceTable()
    assert prices.base_micros_per_s("TEST_GPU", 1) > 0
    assert prices.base_micros_per_s(None, 1) > 0
    assert prices.active_discount_pct == 30


def test_the_active_discount_is_configurable() -> None:
    prices = PriceTable(gpu_micros_per_s={"TEST_GPU": 100}, active_discount_pct=50)
    [c] = charge([iv(S.IDLE, 0, 10, type=ACTIVE)], prices)
    assert c.cost_micros == 500


@pytest.mark.parametrize("pct", [-1, 101])
def test_a_discount_outside_0_to_100_is_refused(pct: int) -> None:
    with pytest.raises(ValueError):
        PriceTable(active_discount_pct=pct)


def test_negative_prices_are_refused() -> None:
    with pytest.raises(ValueError):
        PriceTable(cpu_micros_per_s=-1)


@pytest.mark.parametrize(
    ("seconds", "rate", "pct", "cost"), [(1, 1, 30, 1), (1, 1, 60, 0), (3, 5, 30, 11), (10, 761, 30, 5327)]
)
def test_cost_rounds_half_up_to_a_micro_dollar(seconds: int, rate: int, pct: int, cost: int) -> None:
    assert cost_micros(seconds, rate, pct) == cost


def test_hourly_price_converts_to_per_second() -> None:
    assert micros_per_s_from_hourly("3.60") == 1000
    assert micros_per_s_from_hourly("2.74") == 761


_states = st.sampled_from(list(WorkerState))
_types = st.sampled_from(list(WorkerType))


@st.composite
def worker_timelines(draw: st.DrawFn) -> list[Interval]:
    intervals = []
    for worker in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)):
        type = draw(_types)
        at = T0 + draw(st.floats(min_value=0, max_value=1000, allow_nan=False))
        for _ in range(draw(st.integers(min_value=1, max_value=8))):
            length = draw(st.floats(min_value=0, max_value=5000, allow_nan=False))
            state = draw(_states)
            intervals.append(
                Interval(worker, "ep", state, type, "TEST_GPU", 1, at, at + length, draw(st.booleans()))
            )
            at += length
    return intervals


@given(worker_timelines())
def test_billed_seconds_never_exceed_billable_time(intervals: list[Interval]) -> None:
    charges = charge(intervals, PRICES)
    billable = [i for i in intervals if is_billable(i.state, i.worker_type, i.processing)]
    assert len(charges) == len(billable)
    for worker in {i.worker_id for i in intervals}:
        billed = sum(c.seconds for c in charges if c.worker_id == worker)
        span = sum(i.end_at - i.start_at for i in billable if i.worker_id == worker)
        assert billed <= span + 0.001
        assert billed >= span - 1.001  # at most the last fraction is carried
        assert billed <= sum(i.end_at - i.start_at for i in intervals if i.worker_id == worker) + 0.001


@given(worker_timelines())
def test_active_workers_pay_the_discounted_flex_price(intervals: list[Interval]) -> None:
    for c in charge(intervals, PRICES):
        expected_pct = 30 if c.worker_type == ACTIVE else 0
        assert c.discount_pct == expected_pct
        assert c.cost_micros == (c.seconds * 100 * (100 - expected_pct) + 50) // 100
        assert isinstance(c.cost_micros, int)


@given(worker_timelines(), st.integers(min_value=1, max_value=7))
def test_splitting_the_meter_runs_bills_the_same_seconds(intervals: list[Interval], cut: int) -> None:
    whole = sum(c.seconds for c in charge(intervals, PRICES))
    first = bill(intervals[:cut], PRICES)
    rest = bill(intervals[cut:], PRICES, first.carry_ms)
    assert sum(c.seconds for c in first.charges + rest.charges) == whole


def test_a_worker_s_transitions_become_its_intervals_clipped_to_the_span_billed() -> None:
    worker = Billed("wk-1", "ep-1", WorkerType.FLEX, None, 0)
    transitions = [(1.0, WorkerState.INITIALIZING), (3.0, WorkerState.IDLE), (5.0, WorkerState.OUTDATED)]
    got = intervals_for(worker, transitions, since_at=2.0, until_at=6.0)
    assert [(i.state, i.start_at, i.end_at, i.processing) for i in got] == [
        (WorkerState.INITIALIZING, 2.0, 3.0, False),
        (WorkerState.IDLE, 3.0, 5.0, False),
        (WorkerState.OUTDATED, 5.0, 6.0, True),  # kept only while it finishes a job
    ]
    assert {i.gpu_count for i in got} == {1}  # a CPU worker bills as one unit
    assert intervals_for(worker, transitions, since_at=6.0, until_at=6.0) == []
