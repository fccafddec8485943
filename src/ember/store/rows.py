"""The rows the store hands its callers, as TypedDicts whose items are all `ReadOnly` (plain dicts at run
time; mypy refuses a write to one): the keys are columns of `schema.py` and the types theirs, states as
`core`'s `StrEnum` members (`schema.EnumText`). `PreparedRows` and `Repository._rows` check the keys
against each statement's columns."""

from __future__ import annotations

from typing_extensions import ReadOnly, TypedDict

from ember.core.jobs import JobState
from ember.core.workers import WorkerState, WorkerType


class AccountRow(TypedDict):
    """A whole `accounts` row."""

    id: ReadOnly[str]
    name: ReadOnly[str]
    is_admin: ReadOnly[bool]
    balance_micros: ReadOnly[int]
    secrets: ReadOnly[str]
    created_at: ReadOnly[float]


class EndpointRow(TypedDict):
    """A whole `endpoints` row."""

    id: ReadOnly[str]
    account_id: ReadOnly[str]
    name: ReadOnly[str]
    spec: ReadOnly[str]
    release: ReadOnly[int]
    release_key: ReadOnly[str]
    desired_workers: ReadOnly[int]
    scale_reason: ReadOnly[str]
    status_message: ReadOnly[str]
    scale_memory: ReadOnly[str]
    created_at: ReadOnly[float]
    updated_at: ReadOnly[float]
    deleted_at: ReadOnly[float | None]


class ReleaseRow(TypedDict):
    """A whole `releases` row."""

    id: ReadOnly[int]
    endpoint_id: ReadOnly[str]
    number: ReadOnly[int]
    spec: ReadOnly[str]
    status: ReadOnly[str]
    image: ReadOnly[str | None]
    commit: ReadOnly[str | None]
    log: ReadOnly[str]
    created_at: ReadOnly[float]


class ReleaseSummary(TypedDict):
    """A release without its build log (`ActivityStore.releases`)."""

    number: ReadOnly[int]
    status: ReadOnly[str]
    image: ReadOnly[str | None]
    commit: ReadOnly[str | None]
    created_at: ReadOnly[float]
    spec: ReadOnly[str]


class RegistryAuthRow(TypedDict):
    """A whole `registry_auths` row (the password sealed)."""

    id: ReadOnly[str]
    account_id: ReadOnly[str]
    name: ReadOnly[str]
    username: ReadOnly[str]
    password_sealed: ReadOnly[str]
    created_at: ReadOnly[float]


class LiveEndpoint(TypedDict):
    """What the metrics read of a live endpoint (`MetricsQueries.endpoints`)."""

    id: ReadOnly[str]
    name: ReadOnly[str]
    account_id: ReadOnly[str]
    desired_workers: ReadOnly[int]


class ScaleEventRow(TypedDict):
    """A whole `scale_events` row: one change of the scaler's decision."""

    id: ReadOnly[int]
    endpoint_id: ReadOnly[str]
    at: ReadOnly[float]
    desired: ReadOnly[int]
    reason: ReadOnly[str]
    queued: ReadOnly[int]
    workers: ReadOnly[int]


class TemplateRow(TypedDict):
    """A whole `templates` row."""

    id: ReadOnly[str]
    account_id: ReadOnly[str]
    name: ReadOnly[str]
    data: ReadOnly[str]
    created_at: ReadOnly[float]


class VolumeRow(TypedDict):
    """A whole `volumes` row."""

    id: ReadOnly[str]
    account_id: ReadOnly[str]
    name: ReadOnly[str]
    size_gb: ReadOnly[int]
    created_at: ReadOnly[float]
    deleted_at: ReadOnly[float | None]


class JobRow(TypedDict):
    """A whole `jobs` row."""

    id: ReadOnly[str]
    endpoint_id: ReadOnly[str]
    account_id: ReadOnly[str]
    state: ReadOnly[JobState]
    input: ReadOnly[str]
    extra: ReadOnly[str | None]
    webhook: ReadOnly[str | None]
    low_priority: ReadOnly[bool]
    execution_timeout_ms: ReadOnly[int]
    is_sync: ReadOnly[bool]
    created_at: ReadOnly[float]
    expires_at: ReadOnly[float]
    started_at: ReadOnly[float | None]
    deadline_at: ReadOnly[float | None]
    completed_at: ReadOnly[float | None]
    purge_at: ReadOnly[float | None]
    worker_id: ReadOnly[str | None]
    output: ReadOnly[str | None]
    error: ReadOnly[str | None]
    requeues: ReadOnly[int]
    retried: ReadOnly[int]
    stream_next: ReadOnly[int]
    stream_read: ReadOnly[int]
    stop_requested: ReadOnly[bool]
    webhook_state: ReadOnly[str | None]
    webhook_attempts: ReadOnly[int]
    webhook_next_at: ReadOnly[float | None]
    webhook_error: ReadOnly[str | None]


class CancelledJob(JobRow):
    """A job as `JobStore.cancel` leaves it, and whether that call cancelled it."""

    cancelled_now: ReadOnly[bool]


class TimedOutJob(TypedDict):
    """A job that a sweep ended TIMED_OUT (`SweepStore.time_out_running`, `SweepStore.expire`), as it was
    just before."""

    id: ReadOnly[str]
    worker_id: ReadOnly[str | None]
    endpoint_id: ReadOnly[str]
    state: ReadOnly[JobState]
    execution_timeout_ms: ReadOnly[int]


class WorkerOwner(TypedDict):
    """Whose a worker is: what the event row of its transition needs besides the states."""

    endpoint_id: ReadOnly[str]
    account_id: ReadOnly[str]


class WorkerPlace(WorkerOwner):
    """A worker's state and whose it is: what a transition reads first."""

    state: ReadOnly[WorkerState]


class TakingWorker(WorkerPlace):
    """`WorkerPlace` plus whether the worker is marked for recycling: what `WorkerStore.taking` reads."""

    recycle: ReadOnly[bool]


class WorkerRow(TypedDict):
    """A whole `workers` row."""

    id: ReadOnly[str]
    endpoint_id: ReadOnly[str]
    account_id: ReadOnly[str]
    release: ReadOnly[int]
    type: ReadOnly[WorkerType]
    state: ReadOnly[WorkerState]
    state_since: ReadOnly[float]
    reason: ReadOnly[str]
    gpu_type: ReadOnly[str | None]
    gpu_count: ReadOnly[int]
    gpu_devices: ReadOnly[str]
    host: ReadOnly[str]
    backend: ReadOnly[str]
    launched_at: ReadOnly[float | None]
    last_seen_at: ReadOnly[float | None]
    idle_since: ReadOnly[float | None]
    failures: ReadOnly[int]
    first_failure_at: ReadOnly[float | None]
    next_attempt_at: ReadOnly[float | None]
    recycle: ReadOnly[bool]
    created_at: ReadOnly[float]


class MeterCandidate(WorkerRow):
    """A worker with time not yet billed, and its meter cursor (None: it has none yet)."""

    metered_until: ReadOnly[float | None]
    carry_ms: ReadOnly[int | None]


class VolumeMeterCandidate(VolumeRow):
    """A volume with provisioned time not yet billed, and its meter cursor (None: it has none yet)."""

    metered_until: ReadOnly[float | None]
    carry_ms: ReadOnly[int | None]


class UsageRow(TypedDict):
    """Usage of one worker in one state, summed over its ledger rows (`AccountStore.usage`)."""

    worker_id: ReadOnly[str | None]
    endpoint_id: ReadOnly[str | None]
    state: ReadOnly[str | None]
    worker_type: ReadOnly[str | None]
    gpu_type: ReadOnly[str | None]
    seconds: ReadOnly[int]
    amount_micros: ReadOnly[int]


class WorkerEvent(TypedDict):
    """A `worker_events` row: one transition of a worker."""

    id: ReadOnly[int]
    worker_id: ReadOnly[str]
    endpoint_id: ReadOnly[str]
    account_id: ReadOnly[str]
    from_state: ReadOnly[WorkerState | None]
    to_state: ReadOnly[WorkerState]
    at: ReadOnly[float]
    reason: ReadOnly[str]


class HostRow(TypedDict):
    """A whole `hosts` row."""

    id: ReadOnly[str]
    name: ReadOnly[str]
    token_hash: ReadOnly[str]
    state: ReadOnly[str]
    slots: ReadOnly[str]
    backends: ReadOnly[str]
    observed: ReadOnly[str]
    hostname: ReadOnly[str]
    last_seen_at: ReadOnly[float | None]
    created_at: ReadOnly[float]


class HostOrderRow(TypedDict):
    """A whole `host_orders` row."""

    id: ReadOnly[int]
    host_id: ReadOnly[str]
    kind: ReadOnly[str]
    body: ReadOnly[str]
    state: ReadOnly[str]
    result: ReadOnly[str | None]
    created_at: ReadOnly[float]
    sent_at: ReadOnly[float | None]
