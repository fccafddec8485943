"""Job states, the one transition table, and the rules for results, retries and timeouts.

States and names follow RunPod's wire protocol (spec §3). No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import TypedDict

from ember.core.workers import Ping


class JobState(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)

# to-state -> the states it may be reached from. The store derives its guarded UPDATEs from this.
ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.IN_QUEUE: frozenset({JobState.IN_PROGRESS, JobState.FAILED, JobState.TIMED_OUT}),
    JobState.IN_PROGRESS: frozenset({JobState.IN_QUEUE}),
    JobState.COMPLETED: frozenset({JobState.IN_PROGRESS}),
    JobState.FAILED: frozenset({JobState.IN_PROGRESS, JobState.IN_QUEUE}),
    JobState.CANCELLED: frozenset({JobState.IN_QUEUE, JobState.IN_PROGRESS}),
    JobState.TIMED_OUT: frozenset({JobState.IN_QUEUE, JobState.IN_PROGRESS}),
}

RETRYABLE: frozenset[JobState] = frozenset({JobState.FAILED, JobState.TIMED_OUT})

# Policy bounds and defaults, in milliseconds as the wire gives them (spec §3).
EXECUTION_TIMEOUT_MIN_MS = 5_000
EXECUTION_TIMEOUT_MAX_MS = 7 * 24 * 3600 * 1000
TTL_DEFAULT_MS = 24 * 3600 * 1000
TTL_MIN_MS = 10_000
TTL_MAX_MS = 7 * 24 * 3600 * 1000
RETENTION_RUN_S = 30 * 60
RETENTION_SYNC_S = 60
RUN_BODY_LIMIT_BYTES = 10 * 1024 * 1024
RUNSYNC_BODY_LIMIT_BYTES = 20 * 1024 * 1024
STREAM_CHUNK_LIMIT_BYTES = 1024 * 1024
RUNSYNC_WAIT_DEFAULT_MS = 90_000
RUNSYNC_WAIT_MIN_MS = 1_000
RUNSYNC_WAIT_MAX_MS = 300_000
# A job whose worker vanished is re-queued this many times before it fails.
LOST_WORKER_REQUEUES = 1
# A /run with an `Idempotency-Key` the account used on the endpoint this long ago or less returns the
# first job instead of queuing another.
IDEMPOTENCY_WINDOW_S = 24 * 3600
IDEMPOTENCY_KEY_MAX_CHARS = 255


def sources(to: JobState) -> frozenset[JobState]:
    """The states from which `to` may be entered."""
    return ALLOWED[to]


def can_transition(frm: JobState, to: JobState) -> bool:
    return frm in ALLOWED[to]


class ResultFields(TypedDict, total=False):
    """What `classify_result` keeps of a job-done body: its output (any JSON value) and error text."""

    output: object
    error: str


def classify_result(body: Mapping[str, object]) -> tuple[JobState, ResultFields]:
    """Turn a job-done body into (final state, fields to store) following spec §1.6 and gotcha 9.

    A truthy `error` means FAILED (any `output` is kept); otherwise COMPLETED, with `output` only when
    the key is present (falsy outputs are real outputs). Errors that are not strings are JSON-encoded
    by the caller's serializer; here they are kept as given, but for NUL characters, which become
    U+FFFD (PostgreSQL's text cannot hold NUL, and a worker's result must not be lost over one).
    """
    fields: ResultFields = {}
    if "output" in body:
        fields["output"] = body["output"]
    error = body.get("error")
    if error:
        fields["error"] = error.replace("\x00", "\ufffd") if isinstance(error, str) else _to_text(error)
        return JobState.FAILED, fields
    return JobState.COMPLETED, fields


def _to_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def idempotency_key_problem(key: str) -> str | None:
    """What is wrong with a client's idempotency key, None when it may be used: 1 to 255 printable
    ASCII characters (a UUID, a hash, a request name)."""
    if not key:
        return "must not be empty"
    if len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        return f"must be at most {IDEMPOTENCY_KEY_MAX_CHARS} characters"
    if not all(" " < c <= "~" for c in key):
        return "must be printable ASCII without spaces"
    return None


def is_progress_update(body: Mapping[str, object]) -> bool:
    """A job-done body with status IN_PROGRESS is a progress update, not a result (gotcha 7)."""
    return body.get("status") == JobState.IN_PROGRESS.value


def dropped_jobs(
    held: Mapping[str, float],
    ping: Ping | None,
    missing_since: Mapping[str, float],
    grace_s: float,
) -> tuple[list[str], dict[str, float]]:
    """Jobs the store says a worker holds (id -> started_at) that its pings have left out for `grace_s`:
    the worker never got them or dropped them (spec §1.7), e.g. a job handed over in an answer that was
    lost. Only a ping received after a job started counts against it, and only a later ping at least
    `grace_s` after the first that left it out condemns it, so a result still on its way wins.
    Returns (dropped ids, job id -> time of the first ping that left it out)."""
    if ping is None:
        return [], {}
    ping_at, listed = ping
    since: dict[str, float] = {}
    dropped: list[str] = []
    for job_id, started_at in held.items():
        if job_id in listed or ping_at <= started_at:
            continue
        first = missing_since.get(job_id, ping_at)
        if ping_at - first >= grace_s:
            dropped.append(job_id)
        else:
            since[job_id] = first
    return sorted(dropped), since
