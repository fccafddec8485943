"""The autoscaler's decision: how many workers an endpoint should have now, and why.

One pure function of an explicit Observation, the previous Decision's Memory and `now` (inside the
Observation); the autoscaler loop builds the snapshot, calls `decide`, stores the memory and acts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ember.core.specs import ScalingSpec

QUEUE_DELAY = "QUEUE_DELAY"
REQUEST_COUNT = "REQUEST_COUNT"
# REQUEST_COUNT's scalerValue is a count, not seconds; its anti-flap window is this long instead.
REQUEST_COUNT_WINDOW_S = 4.0

REASONS = (
    "cold_start",  # queued jobs and no worker at all: one starts at once
    "queue_delay",  # QUEUE_DELAY: every worker busy and the oldest job waited > scalerValue s
    "backlog",  # REQUEST_COUNT: ceil((queued + in progress) / scalerValue) exceeds the workers
    "idle",  # workers idle for idleTimeout s or more are let go
    "hold",  # nothing to change, or a change deferred inside the delay window
    "low_priority",  # only lowPriority jobs wait, and they never start a worker
    "min_workers",  # raised to workersMin
    "max_workers",  # capped at workersMax
    "account_limit",  # capped by the account's max workers (its balance tier)
    "zero_balance",  # the balance is exhausted: no new workers, idle ones go
)


@dataclass(frozen=True)
class Observation:
    """One endpoint at `now`, built by the autoscaler loop from the store.

    `workers` counts the endpoint's workers on its current release that are neither STOPPED nor
    OUTDATED: older releases and Outdated workers are being replaced (see `reconcile.plan`), so they
    are not capacity the target speaks of. `busy_workers` of them are processing a job
    and `idle_workers` holds the `idle_since` time of each Idle one. The rest (Initializing, Throttled,
    Unhealthy) count as starting. `queued` and `oldest_wait_s` exclude lowPriority jobs.
    """

    now: float
    queued: int = 0
    queued_low_priority: int = 0
    oldest_wait_s: float = 0.0
    in_progress: int = 0
    workers: int = 0
    busy_workers: int = 0
    idle_workers: Sequence[float] = ()


@dataclass(frozen=True)
class Memory:
    """What `decide` remembers between calls: its last target and when the target last rose."""

    target: int = 0
    last_up_at: float | None = None


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str
    memory: Memory


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
      lowPriority jobs are never demand.
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

    demand, reason = _demand(spec, obs, workers)
    target = max(demand, keep)
    if reason is None:
        reason = "idle" if target < workers else "hold"
        if reason == "hold" and workers == 0 and obs.queued == 0 and obs.queued_low_priority > 0:
            reason = "low_priority"

    since_up = None if mem.last_up_at is None else now - mem.last_up_at
    if since_up is not None and 0 <= since_up < window_s(spec):
        ceiling = max(mem.target, workers)
        if spec.scaler_type == QUEUE_DELAY and target > ceiling and reason != "cold_start":
            target, reason = ceiling, "hold"
        if target < mem.target:
            target, reason = mem.target, "hold"

    cap = max(0, min(spec.workers_max, account_room))
    floor = min(spec.workers_min, cap)
    if target > cap:
        target = cap
        reason = "account_limit" if account_room < spec.workers_max else "max_workers"
    elif target < floor:
        target, reason = floor, "min_workers"
    if target == floor < spec.workers_min:
        reason = "account_limit" if account_room < spec.workers_max else "max_workers"
    if zero_balance and target > obs.busy_workers:
        target, reason = obs.busy_workers, "zero_balance"

    last_up_at = now if target > mem.target else mem.last_up_at
    return Decision(target, reason, Memory(target, last_up_at))


def _demand(spec: ScalingSpec, obs: Observation, workers: int) -> tuple[int, str | None]:
    """Workers wanted by the queue, and the reason when that is a scale-up (else None)."""
    if obs.queued > 0 and workers == 0:
        base = 1
        if spec.scaler_type == REQUEST_COUNT:
            base = max(1, _ceil_div(obs.queued + obs.in_progress, spec.scaler_value))
        return base, "cold_start"
    if spec.scaler_type == REQUEST_COUNT:
        wanted = _ceil_div(obs.queued + obs.in_progress, spec.scaler_value)
        return wanted, ("backlog" if wanted > workers else None)
    if obs.queued == 0:
        return 0, None
    all_busy = obs.busy_workers >= workers
    if all_busy and obs.oldest_wait_s > spec.scaler_value:
        return workers + obs.queued, "queue_delay"
    return workers, None


def _ceil_div(count: int, per_worker: float) -> int:
    if count <= 0:
        return 0
    return math.ceil(count / per_worker)
