"""The rows the store hands its callers, as TypedDicts (plain dicts at run time): the keys are columns of
`schema.py` and the types theirs. `PreparedRows` and `Repository._rows` check the keys against each
statement's columns."""

from __future__ import annotations

from typing import TypedDict


class AccountRow(TypedDict):
    """A whole `accounts` row."""

    id: str
    name: str
    is_admin: bool
    balance_micros: int
    secrets: str
    created_at: float


class EndpointRow(TypedDict):
    """A whole `endpoints` row."""

    id: str
    account_id: str
    name: str
    spec: str
    release: int
    release_key: str
    desired_workers: int
    scale_reason: str
    status_message: str
    scale_memory: str
    created_at: float
    updated_at: float
    deleted_at: float | None


class ReleaseRow(TypedDict):
    """A whole `releases` row."""

    id: int
    endpoint_id: str
    number: int
    spec: str
    status: str
    image: str | None
    commit: str | None
    log: str
    created_at: float


class ReleaseSummary(TypedDict):
    """A release without its build log (`ActivityStore.releases`)."""

    number: int
    status: str
    image: str | None
    commit: str | None
    created_at: float
    spec: str


class RegistryAuthRow(TypedDict):
    """A whole `registry_auths` row (the password sealed)."""

    id: str
    account_id: str
    name: str
    username: str
    password_sealed: str
    created_at: float


class LiveEndpoint(TypedDict):
    """What the metrics read of a live endpoint (`MetricsQueries.endpoints`)."""

    id: str
    name: str
    account_id: str
    desired_workers: int


class ScaleEventRow(TypedDict):
    """A whole `scale_events` row: one change of the scaler's decision."""

    id: int
    endpoint_id: str
    at: float
    desired: int
    reason: str
    queued: int
    workers: int


class TemplateRow(TypedDict):
    """A whole `templates` row."""

    id: str
    account_id: str
    name: str
    data: str
    created_at: float


class VolumeRow(TypedDict):
    """A whole `volumes` row."""

    id: str
    account_id: str
    name: str
    size_gb: int
    created_at: float
    deleted_at: float | None


class JobRow(TypedDict):
    """A whole `jobs` row."""

    id: str
    endpoint_id: str
    account_id: str
    state: str
    input: str
    extra: str | None
    webhook: str | None
    low_priority: bool
    execution_timeout_ms: int
    is_sync: bool
    created_at: float
    expires_at: float
    started_at: float | None
    deadline_at: float | None
    completed_at: float | None
    purge_at: float | None
    worker_id: str | None
    output: str | None
    error: str | None
    requeues: int
    retried: int
    stream_next: int
    stream_read: int
    stop_requested: bool
    webhook_state: str | None
    webhook_attempts: int
    webhook_next_at: float | None
    webhook_error: str | None


class CancelledJob(JobRow):
    """A job as `JobStore.cancel` leaves it, and whether that call cancelled it."""

    cancelled_now: bool


class TimedOutJob(TypedDict):
    """A job that a sweep ended TIMED_OUT (`SweepStore.time_out_running`, `SweepStore.expire`), as it was
    just before."""

    id: str
    worker_id: str | None
    endpoint_id: str
    state: str
    execution_timeout_ms: int


class WorkerOwner(TypedDict):
    """Whose a worker is: what the event row of its transition needs besides the states."""

    endpoint_id: str
    account_id: str


class WorkerPlace(WorkerOwner):
    """A worker's state and whose it is: what a transition reads first."""

    state: str


class TakingWorker(WorkerPlace):
    """`WorkerPlace` plus whether the worker is marked for recycling: what `WorkerStore.taking` reads."""

    recycle: bool


class WorkerRow(TypedDict):
    """A whole `workers` row."""

    id: str
    endpoint_id: str
    account_id: str
    release: int
    type: str
    state: str
    state_since: float
    reason: str
    gpu_type: str | None
    gpu_count: int
    gpu_devices: str
    host: str
    backend: str
    launched_at: float | None
    last_seen_at: float | None
    idle_since: float | None
    failures: int
    first_failure_at: float | None
    next_attempt_at: float | None
    recycle: bool
    created_at: float


class MeterCandidate(WorkerRow):
    """A worker with time not yet billed, and its meter cursor (None: it has none yet)."""

    metered_until: float | None
    carry_ms: int | None


class VolumeMeterCandidate(VolumeRow):
    """A volume with provisioned time not yet billed, and its meter cursor (None: it has none yet)."""

    metered_until: float | None
    carry_ms: int | None


class WorkerEvent(TypedDict):
    """A `worker_events` row: one transition of a worker."""

    id: int
    worker_id: str
    endpoint_id: str
    account_id: str
    from_state: str | None
    to_state: str
    at: float
    reason: str
