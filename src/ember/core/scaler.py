"""The autoscaler's decision: how many workers an endpoint should have now, and why.

One pure function of an explicit Observation, the previous Decision's Memory and `now` (inside the
Observation); the autoscaler loop builds the snapshot, calls `decide`, stores the memory and acts.
Three policies: QUEUE_DELAY and REQUEST_COUNT (RunPod's) and PREDICTIVE (Ember's: forecasts the load from
the arrival rate and execution time, and sizes a scale-up by what a cold start can still help).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from ember.core.json_body import JsonObject
from ember.core.specs import ScalerType, ScalingSpec
from ember.core.workers import WorkerState

QUEUE_DELAY = ScalerType.QUEUE_DELAY
REQUEST_COUNT = ScalerType.REQUEST_COUNT
PREDICTIVE = ScalerType.PREDICTIVE
# REQUEST_COUNT's scalerValue is a count, not seconds; its anti-flap window is this long instead (and
# PREDICTIVE's, whose target moves smoothly anyway).
REQUEST_COUNT_WINDOW_S = 4.0

# PREDICTIVE's inputs, as the caller measures them (see Observation): arrivals over the last
# RATE_WINDOW_S, the mean execution time of jobs created in the last EXECUTION_WINDOW_S that finished.
RATE_WINDOW_S = 10.0
EXECUTION_WINDOW_S = 60.0
# Assumed until the endpoint has a cold start on record.
DEFAULT_COLD_START_S = 5.0
# Capacity held above the forecast load, in standard deviations of a Poisson load (square-root staffing).
HEADROOM = 1.0
# A forecast rate is remembered (decays with this time constant) for at least this many cold starts.
HOLD_COLD_STARTS = 10.0


class Reason(StrEnum):
    """Why a decision says what it says: on every decision, stored with it, shown to the user."""

    COLD_START = "cold_start"  # queued jobs and no worker at all: one starts at once
    QUEUE_DELAY = "queue_delay"  # QUEUE_DELAY: every worker busy and the oldest job waited > scalerValue s
    BACKLOG = "backlog"  # REQUEST_COUNT: ceil((queued + in progress) / scalerValue) exceeds the workers
    FORECAST = "forecast"  # PREDICTIVE: the forecast load plus the backlog to clear exceeds the workers
    IDLE = "idle"  # workers idle for idleTimeout s or more are let go
    HOLD = "hold"  # nothing to change, or a change deferred inside the delay window
    LOW_PRIORITY = "low_priority"  # only lowPriority jobs wait, and they never start a worker
    MIN_WORKERS = "min_workers"  # raised to workersMin
    MAX_WORKERS = "max_workers"  # capped at workersMax
    ACCOUNT_LIMIT = "account_limit"  # capped by the account's max workers (its balance tier)
    ZERO_BALANCE = "zero_balance"  # the balance is exhausted: no new workers, idle ones go
    NO_RELEASE = "no_release"  # the endpoint has no ready release yet: nothing to start (the lifecycle's)


REASONS = tuple(Reason)


@dataclass(frozen=True)
class Observation:
    """One endpoint at `now`, built by the autoscaler loop from the store.

    `workers` counts the endpoint's workers on its current release that are neither STOPPED nor
    OUTDATED: older releases and Outdated workers are being replaced (see `reconcile.plan`), so they
    are not capacity the target speaks of. `busy_workers` of them are processing a job
    and `idle_workers` holds the `idle_since` time of each Idle one. The rest (Initializing, Throttled,
    Unhealthy) count as starting. `queued` and `oldest_wait_s` exclude lowPriority jobs.

    PREDICTIVE alone reads the last three (the others leave them at their defaults): `arrived`, the
    normal-priority jobs created in the last RATE_WINDOW_S; `execution_s`, the mean execution time of
    the jobs created in the last EXECUTION_WINDOW_S that have finished (None: none has); `cold_start_s`,
    the endpoint's typical time from launch to ready (None: no start on record).
    """

    now: float
    queued: int = 0
    queued_low_priority: int = 0
    oldest_wait_s: float = 0.0
    in_progress: int = 0
    workers: int = 0
    busy_workers: int = 0
    idle_workers: Sequence[float] = ()
    arrived: int = 0
    execution_s: float | None = None
    cold_start_s: float | None = None


@dataclass(frozen=True)
class WorkerFacts:
    """One of an endpoint's workers, as `observe` counts it. `busy`: it holds a job in progress;
    `recycle`: it asked to be replaced, so it takes no new job (and is being stopped)."""

    release: int
    state: WorkerState
    state_since: float
    idle_since: float | None = None
    busy: bool = False
    recycle: bool = False


def observe(
    now: float,
    release: int,
    workers: Sequence[WorkerFacts],
    *,
    queued: int = 0,
    queued_low_priority: int = 0,
    oldest_created_at: float | None = None,
    in_progress: int = 0,
) -> Observation:
    """The Observation of an endpoint serving `release` at `now`, from its workers and its queue's
    counts (`oldest_created_at`: when its oldest normal-priority queued job was created).

    Recycled workers are left out: they take no new job, so they neither count toward the target nor
    stand in a replacement's way. An Idle worker's idle time runs from its `idle_since`, or from when
    it entered its state when that is unknown.
    """
    current = [
        w
        for w in workers
        if not w.recycle
        and w.release == release
        and w.state not in (WorkerState.STOPPED, WorkerState.OUTDATED)
    ]
    return Observation(
        now=now,
        queued=queued,
        queued_low_priority=queued_low_priority,
        oldest_wait_s=max(0.0, now - oldest_created_at) if oldest_created_at else 0.0,
        in_progress=in_progress,
        workers=len(current),
        busy_workers=sum(1 for w in current if w.busy),
        idle_workers=tuple(
            w.idle_since or w.state_since for w in current if w.state == WorkerState.IDLE and not w.busy
        ),
    )


@dataclass(frozen=True)
class Memory:
    """What `decide` remembers between calls: its last target and when the target last rose; for
    PREDICTIVE also the forecast arrival rate (as of `forecast_at`) and the last known execution time."""

    target: int = 0
    last_up_at: float | None = None
    rate_per_s: float = 0.0
    execution_s: float | None = None
    forecast_at: float | None = None


def memory_to_json(mem: Memory) -> JsonObject:
    """The memory as a JSON object (what the endpoint row keeps)."""
    out: JsonObject = {"target": mem.target, "last_up_at": mem.last_up_at}
    if mem.forecast_at is not None:
        out.update(rate_per_s=mem.rate_per_s, execution_s=mem.execution_s, forecast_at=mem.forecast_at)
    return out


def memory_from_json(data: Mapping[str, object]) -> Memory:
    """The memory from `memory_to_json`'s object; rows written before the forecast existed (only
    `target` and `last_up_at`) and values of the wrong type decode to the defaults."""

    def num(key: str) -> float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)

    target = data.get("target")
    return Memory(
        target=target if isinstance(target, int) and not isinstance(target, bool) and target >= 0 else 0,
        last_up_at=num("last_up_at"),
        rate_per_s=max(0.0, num("rate_per_s") or 0.0),
        execution_s=num("execution_s"),
        forecast_at=num("forecast_at"),
    )


@dataclass(frozen=True)
class Decision:
    target: int
    reason: Reason
    memory: Memory


def status_line(reason: Reason, *, zero_balance: bool, account_limit: int) -> str | None:
    """The endpoint's status line for a decision its owner must act on (add credit, or accept the
    balance tier's cap), or None when the decision needs no word."""
    if zero_balance and reason == Reason.ZERO_BALANCE:
        return "account balance is exhausted: no new workers start until credit is added"
    if reason == Reason.ACCOUNT_LIMIT:
        return f"limited by the account's maximum of {account_limit} workers (balance tier)"
    return None


def window_s(spec: ScalingSpec) -> float:
    """The anti-flap window after a scale-up: scalerValue seconds for QUEUE_DELAY."""
    return spec.scaler_value if spec.scaler_type == QUEUE_DELAY else REQUEST_COUNT_WINDOW_S


def decide(
    spec: ScalingSpec,
    obs: Observation,
    mem: Memory,
    *,
    account_room: int,
    zero_balance: bool = False,
) -> Decision:
    """The number of (non-Outdated) workers the endpoint should have, with the reason.

    Rules, in order:
    - Demand. QUEUE_DELAY: with queued jobs and no worker, 1 at once ("cold_start"); when every
      worker is busy and the oldest queued job waited more than scalerValue s, enough workers to
      cover the queue, one per queued job ("queue_delay"); while some worker is idle or starting, the
      queue waits for it ("hold"). REQUEST_COUNT: ceil((queued + in_progress) / scalerValue).
      PREDICTIVE: see `forecast` ("forecast"). lowPriority jobs are never demand.
    - Scale-down keeps every worker that is busy, starting, or idle for less than idleTimeout s; only
      the others may go ("idle").
    - Window: for `window_s(spec)` after the target rose, it does not fall, and under QUEUE_DELAY it
      does not rise again either (except a cold start), so workers being started are waited for.
    - Bounds: at least min(workersMin, cap), at most cap = min(workersMax, account_room).
    - `zero_balance` (the caller's "balance <= 0"): never more than the busy workers, so running jobs
      finish, idle workers (active ones too) stop and nothing new starts.

    `account_room` is the most workers this endpoint may have under the account limit (see
    `limits.account_room`). Deterministic: the same arguments give the same Decision.
    """
    now = obs.now
    idle = len(obs.idle_workers)
    workers = max(obs.workers, obs.busy_workers + idle)
    removable = sum(1 for since in obs.idle_workers if now - since >= spec.idle_timeout_s)
    keep = workers - removable

    forecast_mem = mem
    if spec.scaler_type == PREDICTIVE:
        fc = forecast(spec, obs, mem)
        demand, reason = _predictive_demand(obs, workers, fc.demand)
        if fc.rate_per_s or mem.rate_per_s or fc.execution_s != mem.execution_s:
            # (an endpoint at rest keeps its memory as it is, so nothing is written each tick)
            forecast_mem = replace(mem, rate_per_s=fc.rate_per_s, execution_s=fc.execution_s, forecast_at=now)
    else:
        demand, reason = _demand(spec, obs, workers)
    target = max(demand, keep)
    if reason is None:
        reason = Reason.IDLE if target < workers else Reason.HOLD
        if reason == Reason.HOLD and workers == 0 and obs.queued == 0 and obs.queued_low_priority > 0:
            reason = Reason.LOW_PRIORITY

    since_up = None if mem.last_up_at is None else now - mem.last_up_at
    if since_up is not None and 0 <= since_up < window_s(spec):
        ceiling = max(mem.target, workers)
        if spec.scaler_type == QUEUE_DELAY and target > ceiling and reason != Reason.COLD_START:
            target, reason = ceiling, Reason.HOLD
        if target < mem.target:
            target, reason = mem.target, Reason.HOLD

    cap = max(0, min(spec.workers_max, account_room))
    floor = min(spec.workers_min, cap)
    if target > cap:
        target = cap
        reason = Reason.ACCOUNT_LIMIT if account_room < spec.workers_max else Reason.MAX_WORKERS
    elif target < floor:
        target, reason = floor, Reason.MIN_WORKERS
    if target == floor < spec.workers_min:
        reason = Reason.ACCOUNT_LIMIT if account_room < spec.workers_max else Reason.MAX_WORKERS
    if zero_balance and target > obs.busy_workers:
        target, reason = obs.busy_workers, Reason.ZERO_BALANCE

    last_up_at = now if target > mem.target else mem.last_up_at
    return Decision(target, reason, replace(forecast_mem, target=target, last_up_at=last_up_at))


def _demand(spec: ScalingSpec, obs: Observation, workers: int) -> tuple[int, Reason | None]:
    """Workers wanted by the queue, and the reason when that is a scale-up (else None)."""
    if obs.queued > 0 and workers == 0:
        base = 1
        if spec.scaler_type == REQUEST_COUNT:
            base = max(1, _ceil_div(obs.queued + obs.in_progress, spec.scaler_value))
        return base, Reason.COLD_START
    if spec.scaler_type == REQUEST_COUNT:
        wanted = _ceil_div(obs.queued + obs.in_progress, spec.scaler_value)
        return wanted, (Reason.BACKLOG if wanted > workers else None)
    if obs.queued == 0:
        return 0, None
    all_busy = obs.busy_workers >= workers
    if all_busy and obs.oldest_wait_s > spec.scaler_value:
        return workers + obs.queued, Reason.QUEUE_DELAY
    return workers, None


def _ceil_div(count: int, per_worker: float) -> int:
    if count <= 0:
        return 0
    return math.ceil(count / per_worker)


@dataclass(frozen=True)
class Forecast:
    """PREDICTIVE's view at one decision: the forecast arrival rate, the execution time it assumes
    (None: no job has finished yet), the cold start and hold it used, and the workers it wants."""

    rate_per_s: float
    execution_s: float | None
    cold_start_s: float
    hold_s: float
    demand: int


def hold_s(spec: ScalingSpec, cold_start_s: float) -> float:
    """How long PREDICTIVE remembers a rate (its decay time constant): at least idleTimeout, and at least
    HOLD_COLD_STARTS cold starts, since a worker let go too early is paid for again with a cold start
    (billed) and that much queue delay, while an idle flex worker is not billed."""
    return max(float(spec.idle_timeout_s), HOLD_COLD_STARTS * cold_start_s, 1.0)


def forecast(spec: ScalingSpec, obs: Observation, mem: Memory) -> Forecast:
    """PREDICTIVE's demand, from the observation and the remembered forecast.

    - Rate: the arrivals of the last RATE_WINDOW_S per second; a higher remembered rate decays toward
      it with time constant `hold_s`, so the rate rises at once and falls slowly. Below one job
      expected within the hold it counts as zero (nothing left to keep a worker for).
    - Load: rate x execution time (Little's law), plus HEADROOM x its square root, for the
      randomness of arrivals.
    - Backlog: a worker started now is ready only after a cold start. The queue then will be what is
      queued now, plus the arrivals until then, less what the ready workers serve meanwhile; clearing
      that within scalerValue s of the cold start takes backlog x execution / scalerValue workers
      more. So a queue that the ready workers clear before a new one could help starts none.
    Until a job has finished (no execution time known), one worker per queued or running job.
    """
    now = obs.now
    cold = obs.cold_start_s if obs.cold_start_s is not None and obs.cold_start_s >= 0 else None
    cold_s = DEFAULT_COLD_START_S if cold is None else cold
    hold = hold_s(spec, cold_s)
    rate = max(0, obs.arrived) / RATE_WINDOW_S
    if mem.forecast_at is not None and mem.rate_per_s > 0:
        elapsed = max(0.0, now - mem.forecast_at)
        rate = max(rate, mem.rate_per_s * math.exp(-elapsed / hold))
    if rate * hold < 1.0:
        rate = 0.0
    execution = obs.execution_s if obs.execution_s is not None else mem.execution_s
    if execution is None or execution <= 0:
        return Forecast(rate, execution, cold_s, hold, obs.queued + obs.in_progress)
    load = rate * execution
    ready = obs.busy_workers + len(obs.idle_workers)
    backlog = max(0.0, obs.queued + (rate - ready / execution) * cold_s)
    wanted = load + HEADROOM * math.sqrt(load) + backlog * execution / spec.scaler_value
    demand = max(obs.in_progress, math.ceil(wanted - 1e-9))
    return Forecast(rate, execution, cold_s, hold, demand)


def _predictive_demand(obs: Observation, workers: int, demand: int) -> tuple[int, Reason | None]:
    if obs.queued > 0 and workers == 0:
        return max(1, demand), Reason.COLD_START
    return demand, (Reason.FORECAST if demand > workers else None)
