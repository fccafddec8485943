"""The grid of alternatives, the cheapest setting at a p99 target, and a policy against the others."""

from __future__ import annotations

from dataclasses import replace

from ember.core.simgrid import Grid, alternatives, cheapest, compare, frontier, run_grid
from ember.core.simulate import SimConfig, SimResult
from ember.core.specs import ScalingSpec
from ember.core.traces import Shape, synthetic

CURRENT = ScalingSpec(
    workers_min=0, workers_max=4, idle_timeout_s=7, scaler_type="QUEUE_DELAY", scaler_value=4
)


def result(spec: ScalingSpec, cost: int, p99: float) -> SimResult:
    return SimResult(spec, 1, (p99,), {}, 0, cost, 0, 0, {}, 0.0, 0.0)


def test_alternatives_put_the_current_settings_first_and_try_each_combination_once() -> None:
    grid = Grid(
        queue_delay=(1, 4), request_count=(1,), predictive=(2,), idle_timeouts=(5,), workers_min=(0, 1)
    )
    specs = alternatives(CURRENT, grid)
    assert specs[0] == CURRENT
    assert len(specs) == len(set(specs))
    # 4 scaler settings x idle timeouts {5, 7 (the current)} x workersMin {0, 1}; the current one once.
    assert len(specs) == 4 * 2 * 2
    assert {s.workers_max for s in specs} == {4}
    assert {s.scaler_type for s in specs} == {"QUEUE_DELAY", "REQUEST_COUNT", "PREDICTIVE"}
    tight = replace(CURRENT, workers_max=0)
    assert all(s.workers_min == 0 for s in alternatives(tight, grid))


def test_cheapest_meets_the_target_and_breaks_ties_by_p99() -> None:
    a = result(replace(CURRENT, scaler_value=1), 100, 2.0)
    b = result(replace(CURRENT, scaler_value=2), 100, 1.0)
    c = result(replace(CURRENT, scaler_value=8), 50, 9.0)
    assert cheapest([a, b, c], 5.0) == b
    assert cheapest([a, b, c], 10.0) == c
    assert cheapest([a, b, c], 0.5) is None
    assert cheapest([a, b, c], 10.0, ["REQUEST_COUNT"]) is None


def test_compare_sets_each_policy_result_beside_the_cheapest_baseline_at_its_p99_or_better() -> None:
    p = result(replace(CURRENT, scaler_type="PREDICTIVE"), 60, 3.0)
    fast = result(CURRENT, 100, 2.5)
    slow = result(replace(CURRENT, scaler_value=8), 40, 8.0)
    [c] = compare([p, fast, slow])
    assert c.baseline == fast and c.ratio == 0.6
    [alone] = compare([p, slow])
    assert alone.baseline is None and alone.ratio is None


def test_frontier_keeps_the_cheapest_result_at_each_p99() -> None:
    a, b, c = (
        result(replace(CURRENT, scaler_value=v), cost, p99)
        for v, cost, p99 in ((1, 10, 5.0), (2, 20, 6.0), (3, 30, 1.0))
    )
    assert frontier([a, b, c]) == [a, c]


def test_the_grid_runs_every_setting_on_the_trace() -> None:
    trace = synthetic(Shape(kind="steady", duration_s=60, rate_per_s=1, seed=2))
    specs = alternatives(
        CURRENT,
        Grid(queue_delay=(2,), request_count=(2,), predictive=(2,), idle_timeouts=(5,), workers_min=(0,)),
    )
    seen: list[int] = []
    results = run_grid(specs, trace, SimConfig(cold_start_s=1.0), progress=seen.append)
    assert [r.scaling for r in results] == specs and seen == list(range(1, len(specs) + 1))
    assert all(len(r.delays_s) == len(trace.jobs) for r in results)
