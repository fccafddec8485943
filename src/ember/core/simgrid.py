"""Scaling settings compared on one trace: the grid of alternatives to an endpoint's settings (every
scaler type at several values, idle timeouts and numbers of active workers), the cheapest that meets a
p99 queue-delay target, and a policy's cost against the best of others at equal p99. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from ember.core.scaler import PREDICTIVE, QUEUE_DELAY, REQUEST_COUNT
from ember.core.simulate import SimConfig, SimResult, simulate
from ember.core.specs import ScalingSpec
from ember.core.traces import Trace


@dataclass(frozen=True)
class Grid:
    """The values tried per scaler type (`scalerValue`), idle timeouts (s) and workersMin values; each
    combination is one alternative. workersMin values above workersMax are left out."""

    queue_delay: tuple[int, ...] = (1, 2, 4, 8, 15)
    request_count: tuple[int, ...] = (1, 2, 4, 8)
    predictive: tuple[int, ...] = (1, 2, 4, 8)
    idle_timeouts: tuple[int, ...] = (1, 5, 15, 60, 300)
    workers_min: tuple[int, ...] = (0, 1)


def alternatives(current: ScalingSpec, grid: Grid = Grid()) -> list[ScalingSpec]:
    """`current` first, then every grid combination (workersMax kept), each once."""
    values = {QUEUE_DELAY: grid.queue_delay, REQUEST_COUNT: grid.request_count, PREDICTIVE: grid.predictive}
    mins = sorted({m for m in (*grid.workers_min, current.workers_min) if m <= current.workers_max})
    idles = sorted({*grid.idle_timeouts, current.idle_timeout_s})
    out = [current]
    seen = {current}
    for scaler_type, scaler_values in values.items():
        for value in scaler_values:
            for idle in idles:
                for wmin in mins:
                    spec = replace(
                        current,
                        scaler_type=scaler_type,
                        scaler_value=value,
                        idle_timeout_s=idle,
                        workers_min=wmin,
                    )
                    if spec not in seen:
                        seen.add(spec)
                        out.append(spec)
    return out


def run_grid(
    specs: Iterable[ScalingSpec],
    trace: Trace,
    cfg: SimConfig,
    progress: Callable[[int], None] | None = None,
) -> list[SimResult]:
    """One replay per spec, in order; `progress(done)` after each."""
    out = []
    for i, spec in enumerate(specs, start=1):
        out.append(simulate(spec, trace, cfg))
        if progress is not None:
            progress(i)
    return out


def _rank(r: SimResult) -> tuple[int, float, float]:
    return (r.cost_micros, r.delay_p(99), r.total_worker_s)


def cheapest(
    results: Sequence[SimResult], p99_s: float, scaler_types: Iterable[str] | None = None
) -> SimResult | None:
    """The cheapest result whose p99 queue delay is at most `p99_s` (ties: the lower p99, then fewer
    worker-seconds, then the earlier), among `scaler_types` when given; None when none meets it."""
    types = set(scaler_types) if scaler_types is not None else None
    meets = [
        r
        for r in results
        if r.delay_p(99) <= p99_s + 1e-9 and (types is None or r.scaling.scaler_type in types)
    ]
    return min(meets, key=_rank) if meets else None


@dataclass(frozen=True)
class Comparison:
    """A policy's result beside the cheapest `baseline` result at the same or a lower p99.
    `ratio` = its cost / the baseline's (None when no baseline result is that fast)."""

    policy: SimResult
    baseline: SimResult | None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline.cost_micros == 0:
            return None
        return self.policy.cost_micros / self.baseline.cost_micros


def compare(
    results: Sequence[SimResult],
    policy_type: str = PREDICTIVE,
    baseline_types: Iterable[str] = (QUEUE_DELAY, REQUEST_COUNT),
) -> list[Comparison]:
    """Each `policy_type` result against the cheapest baseline-type result with a p99 queue delay no
    higher than its own, best ratio first (those with no such baseline last)."""
    base = tuple(baseline_types)
    out = [
        Comparison(r, cheapest(results, r.delay_p(99), base))
        for r in results
        if r.scaling.scaler_type == policy_type
    ]
    return sorted(out, key=lambda c: (c.ratio is None, c.ratio or 0.0, c.policy.delay_p(99)))


def frontier(results: Sequence[SimResult], scaler_types: Iterable[str] | None = None) -> list[SimResult]:
    """The results no other beats on both cost and p99 (cheapest first)."""
    types = set(scaler_types) if scaler_types is not None else None
    pool = sorted(
        (r for r in results if types is None or r.scaling.scaler_type in types),
        key=lambda r: (r.cost_micros, r.delay_p(99)),
    )
    out: list[SimResult] = []
    for r in pool:
        if not out or r.delay_p(99) < out[-1].delay_p(99) - 1e-9:
            out.append(r)
    return out
