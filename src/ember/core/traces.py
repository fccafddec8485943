"""Job traces for the scaling simulator: arrival offsets and execution times, read from CSV text or from
an endpoint's recorded jobs, and synthetic ones (steady Poisson, bursty on/off, diurnal) drawn from a
seeded generator of our own. Pure: no files, no clock, no `random` (the same seed gives the same trace).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ember.core.errors import InvalidInput, Problem

SYNTHETIC = ("steady", "bursty", "diurnal")
MAX_JOBS = 1_000_000


@dataclass(frozen=True)
class Job:
    arrival_s: float  # offset from the trace's start
    execution_s: float


@dataclass(frozen=True)
class Trace:
    """Jobs in arrival order; `duration_s` is the span the trace covers (at least its last arrival)."""

    jobs: tuple[Job, ...]
    duration_s: float

    @staticmethod
    def of(jobs: Iterable[Job], duration_s: float = 0.0) -> Trace:
        ordered = tuple(sorted(jobs, key=lambda j: j.arrival_s))
        last = ordered[-1].arrival_s if ordered else 0.0
        return Trace(ordered, max(duration_s, last))

    def to_csv(self) -> str:
        lines = ["arrival_s,execution_s"]
        lines += [f"{j.arrival_s:.3f},{j.execution_s:.3f}" for j in self.jobs]
        return "\n".join(lines) + "\n"


def parse_csv(text: str) -> Trace:
    """A trace from CSV text: one job a line, `arrival_s,execution_s` (seconds, arrival as an offset
    from the start); a header line, blank lines and `#` comments are skipped. Raises InvalidInput
    naming every bad line (up to ten)."""
    jobs: list[Job] = []
    problems: list[Problem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line or (number == 1 and not line[:1].isdigit() and line[:1] not in "-+."):
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            arrival, execution = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
        except ValueError:
            arrival = execution = math.nan
        if not (math.isfinite(arrival) and math.isfinite(execution)) or arrival < 0 or execution < 0:
            problems.append(
                Problem(f"line {number}", "must be two numbers >= 0: arrival_s,execution_s", raw[:80])
            )
            continue
        jobs.append(Job(arrival, execution))
    if problems:
        shown = "; ".join(f"{p.field}: {p.value!r}" for p in problems[:10])
        raise InvalidInput(f"bad trace ({len(problems)} bad lines): {shown}", problems[:10])
    if len(jobs) > MAX_JOBS:
        raise InvalidInput(f"the trace has {len(jobs)} jobs; at most {MAX_JOBS} are simulated")
    return Trace.of(jobs)


def trace_from_jobs(rows: Iterable[tuple[float, float | None, float | None]]) -> Trace:
    """A trace from recorded jobs (created_at, started_at, completed_at in epoch seconds): arrivals as
    offsets from the first creation, execution = completed - started. Jobs that never ran to the end
    (queued, running, cancelled before a start) have no execution time and are left out."""
    ordered = sorted(rows, key=lambda r: r[0])
    if not ordered:
        return Trace((), 0.0)
    start = ordered[0][0]
    jobs = [
        Job(created - start, max(0.0, completed - started))
        for created, started, completed in ordered
        if started is not None and completed is not None
    ]
    return Trace.of(jobs, ordered[-1][0] - start)


def cold_starts(events: Iterable[tuple[str, str, float]]) -> list[float]:
    """Launch-to-ready durations from worker state events (worker id, to-state, at), in the order the
    starts happened: each INITIALIZING followed by that worker's next event being IDLE or RUNNING.
    Starts that ended otherwise (a crash, a stop) are not cold starts."""
    last: dict[str, tuple[str, float]] = {}
    out: list[tuple[float, float]] = []
    for worker_id, state, at in sorted(events, key=lambda e: (e[2], e[0])):
        prev = last.get(worker_id)
        if prev is not None and prev[0] == "INITIALIZING" and state in ("IDLE", "RUNNING"):
            out.append((prev[1], max(0.0, at - prev[1])))
        last[worker_id] = (state, at)
    return [d for _, d in sorted(out)]


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ---- synthetic traces --------------------------------------------------------------------------------
class Draws:
    """A small seeded generator (SplitMix64): the same seed gives the same numbers on every platform."""

    def __init__(self, seed: int) -> None:
        self._state = seed & 0xFFFFFFFFFFFFFFFF

    def uniform(self) -> float:
        """A float in [0, 1)."""
        self._state = (self._state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return ((z ^ (z >> 31)) >> 11) / float(1 << 53)

    def exponential(self, rate: float) -> float:
        return -math.log(1.0 - self.uniform()) / rate


@dataclass(frozen=True)
class Shape:
    """A synthetic workload. `rate_per_s`: steady's rate, bursty's rate while on, diurnal's mean rate.
    Bursty alternates `on_s` seconds at rate_per_s and `off_s` at `off_rate_per_s`, starting on. Diurnal
    follows rate x (1 + amplitude x sin(2 pi t / period_s)), starting at its mean and rising. Execution
    times are uniform in execution_s x [1 - spread, 1 + spread]."""

    kind: str = "steady"
    duration_s: float = 600.0
    rate_per_s: float = 1.0
    execution_s: float = 1.0
    spread: float = 0.5
    on_s: float = 30.0
    off_s: float = 90.0
    off_rate_per_s: float = 0.05
    period_s: float = 0.0  # diurnal: 0 means one period over the whole trace
    amplitude: float = 0.8
    seed: int = 1


def shape_problems(shape: Shape) -> list[Problem]:
    p: list[Problem] = []
    if shape.kind not in SYNTHETIC:
        p.append(Problem("synthetic", f"must be one of {', '.join(SYNTHETIC)}", shape.kind))
    if not 0 < shape.duration_s <= 7 * 24 * 3600:
        p.append(Problem("duration", "must be > 0 and at most a week of seconds", shape.duration_s))
    if not 0 < shape.rate_per_s <= 10_000 or not 0 <= shape.off_rate_per_s <= 10_000:
        p.append(Problem("rate", "must be > 0 and at most 10000 per second", shape.rate_per_s))
    if shape.execution_s < 0 or not 0 <= shape.spread <= 1:
        p.append(Problem("execution", "must be >= 0, with a spread in 0..1", shape.execution_s))
    if shape.kind == "bursty" and (shape.on_s <= 0 or shape.off_s < 0):
        p.append(Problem("on", "bursts need on > 0 and off >= 0 seconds", shape.on_s))
    if shape.period_s < 0 or not 0 <= shape.amplitude <= 1:
        p.append(Problem("period", "needs period >= 0 and an amplitude in 0..1", shape.period_s))
    if not p and _expected_jobs(shape) > MAX_JOBS:
        p.append(Problem("rate", f"would make more than {MAX_JOBS} jobs", shape.rate_per_s))
    return p


def _expected_jobs(shape: Shape) -> float:
    return shape.duration_s * max(shape.rate_per_s, shape.off_rate_per_s) * (1 + shape.amplitude)


def synthetic(shape: Shape) -> Trace:
    """The trace `shape` describes. Raises InvalidInput listing what is wrong with it."""
    problems = shape_problems(shape)
    if problems:
        raise InvalidInput(
            "bad synthetic trace: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
        )
    draws = Draws(shape.seed)
    peak = shape.rate_per_s * (1 + shape.amplitude) if shape.kind == "diurnal" else shape.rate_per_s
    peak = max(peak, shape.off_rate_per_s if shape.kind == "bursty" else 0.0)
    jobs: list[Job] = []
    t = 0.0
    # Thinning: candidates at the peak rate, each kept with probability rate(t) / peak.
    while True:
        t += draws.exponential(peak)
        if t >= shape.duration_s:
            break
        keep = draws.uniform() < _rate_at(shape, t) / peak
        spread = draws.uniform()
        if keep:
            execution = shape.execution_s * (1 - shape.spread + 2 * shape.spread * spread)
            jobs.append(Job(round(t, 3), round(execution, 3)))
    return Trace.of(jobs, shape.duration_s)


def _rate_at(shape: Shape, t: float) -> float:
    if shape.kind == "bursty":
        on = (t % (shape.on_s + shape.off_s)) < shape.on_s
        return shape.rate_per_s if on else shape.off_rate_per_s
    if shape.kind == "diurnal":
        period = shape.period_s or shape.duration_s
        return shape.rate_per_s * (1 + shape.amplitude * math.sin(2 * math.pi * t / period))
    return shape.rate_per_s
