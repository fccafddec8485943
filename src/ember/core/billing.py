"""Per-second billing from recorded worker-state intervals: which states bill, at what rate, and the
cost in integer micro-dollars. Pure: the meter loop reads intervals from the store and saves charges.

Rounding: timestamps are taken to the millisecond; a worker's billable milliseconds accumulate across
its intervals and each interval is billed the whole seconds that it completes (the fraction carries to
the worker's next interval, see `bill`), so a worker is billed floor(total billable time) seconds. A
charge's cost is seconds x rate x gpu_count, less the active discount, rounded half up to a micro-dollar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ember.core.money import parse_dollars
from ember.core.workers import WorkerState, WorkerType

_S = WorkerState

# Never billed, whatever the worker type: waiting for capacity, crashed/backing off, gone.
NEVER_BILLED: frozenset[WorkerState] = frozenset({_S.THROTTLED, _S.UNHEALTHY, _S.STOPPED})

# Flex per-second prices in micro-dollars per GPU (about RunPod's serverless flex prices per hour).
DEFAULT_GPU_MICROS_PER_S: Mapping[str, int] = {
    "TEST_GPU": 100,  # $0.36/h: the virtual GPU of tests and demos
    "NVIDIA RTX A4000": 160,  # ~$0.58/h
    "NVIDIA L4": 190,  # ~$0.68/h
    "NVIDIA RTX A5000": 190,
    "NVIDIA GeForce RTX 4090": 310,  # ~$1.12/h
    "NVIDIA RTX A6000": 340,  # ~$1.22/h
    "NVIDIA A40": 340,
    "NVIDIA L40S": 530,  # ~$1.91/h
    "NVIDIA A100 80GB PCIe": 760,  # ~$2.74/h
    "NVIDIA A100-SXM4-80GB": 760,
    "NVIDIA H100 PCIe": 1160,  # ~$4.18/h
    "NVIDIA H100 80GB HBM3": 1160,
    "NVIDIA H200": 1400,  # ~$5.04/h
}
DEFAULT_UNKNOWN_GPU_MICROS_PER_S = 500  # a GPU type registered by an operator but not priced
DEFAULT_CPU_MICROS_PER_S = 30  # ~$0.11/h for a worker that needs no GPU
DEFAULT_ACTIVE_DISCOUNT_PCT = 30


@dataclass(frozen=True)
class PriceTable:
    """Flex prices per second per GPU, the CPU price, and the active workers' discount (0-100 %)."""

    gpu_micros_per_s: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_GPU_MICROS_PER_S))
    cpu_micros_per_s: int = DEFAULT_CPU_MICROS_PER_S
    unknown_gpu_micros_per_s: int = DEFAULT_UNKNOWN_GPU_MICROS_PER_S
    active_discount_pct: int = DEFAULT_ACTIVE_DISCOUNT_PCT

    def __post_init__(self) -> None:
        if not 0 <= self.active_discount_pct <= 100:
            raise ValueError(f"active_discount_pct must be 0-100, not {self.active_discount_pct}")
        rates = [self.cpu_micros_per_s, self.unknown_gpu_micros_per_s, *self.gpu_micros_per_s.values()]
        if any(r < 0 for r in rates):
            raise ValueError("prices must not be negative")

    def base_micros_per_s(self, gpu_type: str | None, gpu_count: int) -> int:
        """The flex price of one second of a worker: per GPU x gpu_count, or the CPU price."""
        if not gpu_type:
            return self.cpu_micros_per_s
        per_gpu = self.gpu_micros_per_s.get(gpu_type, self.unknown_gpu_micros_per_s)
        return per_gpu * max(1, gpu_count)


def micros_per_s_from_hourly(dollars_per_hour: str) -> int:
    """A per-second price from an operator's "$/h" string, rounded half up: "2.74" -> 761."""
    hourly = parse_dollars(dollars_per_hour, field="price")
    return (hourly + 1800) // 3600


def is_billable(state: WorkerState, worker_type: WorkerType, processing: bool) -> bool:
    """The seed's billing rule for one instant of a worker in `state`.

    Throttled, Unhealthy and Stopped never bill. An active worker bills for all its other time. A flex
    worker bills while Initializing or Running, and while Outdated only when processing a job.
    """
    if state in NEVER_BILLED:
        return False
    if worker_type == WorkerType.ACTIVE:
        return True
    if state == _S.OUTDATED:
        return processing
    return state in (_S.INITIALIZING, _S.RUNNING)


@dataclass(frozen=True)
class Interval:
    """A span of one worker in one state, as the store records it (timestamps in epoch seconds)."""

    worker_id: str
    endpoint_id: str
    state: WorkerState
    worker_type: WorkerType
    gpu_type: str | None
    gpu_count: int
    start_at: float
    end_at: float
    processing: bool = False


@dataclass(frozen=True)
class Billed:
    """What billing needs of a worker besides its transitions."""

    worker_id: str
    endpoint_id: str
    worker_type: WorkerType
    gpu_type: str | None
    gpu_count: int


def intervals_for(
    worker: Billed, transitions: Sequence[tuple[float, WorkerState]], since_at: float, until_at: float
) -> list[Interval]:
    """The worker's state intervals clipped to [since_at, until_at). `transitions` are (when, to-state)
    in order; each state lasts until the next transition (the current one until `until_at`)."""
    out: list[Interval] = []
    for i, (at, state) in enumerate(transitions):
        end = transitions[i + 1][0] if i + 1 < len(transitions) else until_at
        start, end = max(at, since_at), min(end, until_at)
        if end <= start:
            continue
        out.append(
            Interval(
                worker_id=worker.worker_id,
                endpoint_id=worker.endpoint_id,
                state=state,
                worker_type=worker.worker_type,
                gpu_type=worker.gpu_type,
                gpu_count=max(1, worker.gpu_count or 1),
                start_at=start,
                end_at=end,
                # Outdated workers are kept only while they finish a job (idle ones stop at once).
                processing=state == WorkerState.OUTDATED,
            )
        )
    return out


# A network volume is priced per GB and month of provisioned size; its month, in seconds.
MONTH_S = 30 * 24 * 3600


def volume_charge(size_gb: int, price_micros_per_gb_month: int, seconds: int, carry: int) -> tuple[int, int]:
    """(micro-dollars, new carry) for `seconds` of a `size_gb` volume. Exact in integers: the carry is
    the remainder in micro-dollar-seconds-per-month units (always < MONTH_S), so nothing is lost."""
    return divmod(size_gb * price_micros_per_gb_month * seconds + carry, MONTH_S)


@dataclass(frozen=True)
class Charge:
    """What one interval costs: whole seconds billed and the cost at `micros_per_s` (after discount)."""

    worker_id: str
    endpoint_id: str
    state: WorkerState
    worker_type: WorkerType
    gpu_type: str | None
    gpu_count: int
    start_at: float
    end_at: float
    seconds: int
    cost_micros: int
    base_micros_per_s: int
    discount_pct: int


@dataclass(frozen=True)
class Bill:
    """Charges for billable intervals, and each worker's unbilled milliseconds to pass next time."""

    charges: list[Charge]
    carry_ms: dict[str, int]


def cost_micros(seconds: int, base_micros_per_s: int, discount_pct: int) -> int:
    """seconds x price less the discount, rounded half up to a whole micro-dollar."""
    hundredths = seconds * base_micros_per_s * (100 - discount_pct)
    return (hundredths + 50) // 100


def bill(
    intervals: Iterable[Interval], prices: PriceTable, carry_ms: Mapping[str, int] | None = None
) -> Bill:
    """Bill `intervals`: one Charge per billable interval, in start order per worker.

    `carry_ms` holds each worker's billable milliseconds not yet billed as a whole second (from an
    earlier call); the result's `carry_ms` is the updated map to keep for the next call. Intervals
    must not overlap within a worker; an interval ending before it starts bills nothing. Non-billable
    intervals produce no charge and do not touch the carry.
    """
    carry = dict(carry_ms or {})
    charges: list[Charge] = []
    ordered = sorted(intervals, key=lambda i: (i.worker_id, i.start_at, i.end_at))
    for iv in ordered:
        if not is_billable(iv.state, iv.worker_type, iv.processing):
            continue
        span_ms = max(0, _ms(iv.end_at) - _ms(iv.start_at))
        total_ms = carry.get(iv.worker_id, 0) + span_ms
        seconds, carry[iv.worker_id] = divmod(total_ms, 1000)
        base = prices.base_micros_per_s(iv.gpu_type, iv.gpu_count)
        discount = prices.active_discount_pct if iv.worker_type == WorkerType.ACTIVE else 0
        charges.append(
            Charge(
                worker_id=iv.worker_id,
                endpoint_id=iv.endpoint_id,
                state=iv.state,
                worker_type=iv.worker_type,
                gpu_type=iv.gpu_type,
                gpu_count=iv.gpu_count,
                start_at=iv.start_at,
                end_at=iv.end_at,
                seconds=seconds,
                cost_micros=cost_micros(seconds, base, discount),
                base_micros_per_s=base,
                discount_pct=discount,
            )
        )
    return Bill(charges, carry)


def charge(intervals: Iterable[Interval], prices: PriceTable | None = None) -> list[Charge]:
    """Bill a complete set of intervals with no carried fraction (a finished worker, a report)."""
    return bill(intervals, prices or PriceTable()).charges


def _ms(at: float) -> int:
    # Whole milliseconds, so that differences of large epoch floats do not lose a second to 0.999….
    return round(at * 1000)
