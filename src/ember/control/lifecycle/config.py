"""The lifecycle loop's settings (timeouts, grace periods, retry rules, limit table), built once
by `ember.app` from Settings and shared read-only by every part of the loop."""

from __future__ import annotations

from dataclasses import dataclass

from ember.core import backoff
from ember.core.jobs import LOST_WORKER_REQUEUES, RETENTION_RUN_S
from ember.core.limits import DEFAULT_TABLE, LimitTable


@dataclass
class LifecycleConfig:
    ping_timeout_s: float = 10.0
    init_timeout_s: float = 420.0
    stop_grace_s: float = 10.0
    stuck_grace_s: float = 5.0
    # A job a worker's pings leave out for this long was dropped (never received): re-queued or failed.
    dropped_grace_s: float = 10.0
    lost_worker_requeues: int = LOST_WORKER_REQUEUES
    retention_run_s: float = RETENTION_RUN_S
    default_backend: str = "local"
    limit_table: LimitTable = DEFAULT_TABLE
    backoff_base_s: float = backoff.BASE_DELAY_S
