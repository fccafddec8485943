"""SQL over the `jobs` table, shared by the job repositories (`jobs`, `streams`, `sweeps`): the state
tests that partial indexes cover, what a client may see, the columns of a move to a final state, and the
job path's hot statements (compiled once into `Prepared` ones) with the rows they return."""

from __future__ import annotations

from sqlalchemy import and_, bindparam, case, exists, insert, select, update
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import ReturnsRows
from typing_extensions import ReadOnly, TypedDict

from ember.core.jobs import ALLOWED, TERMINAL, JobState
from ember.store.db import constant
from ember.store.schema import jobs
from ember.store.transitions import guard
from ember.store.workers import takes_jobs

J = jobs.c
FINAL_VALUES = [s.value for s in TERMINAL]
# The states that partial indexes cover, as constants in the SQL (see `constant`), for reads and for
# changes within a state; a change of state is guarded by `moving`.
QUEUED = J.state == constant(JobState.IN_QUEUE.value)
RUNNING = J.state == constant(JobState.IN_PROGRESS.value)
# Other jobs, for a statement about one job that asks about others in passing.
Q = jobs.alias("other").c
QUEUED_Q = Q.state == constant(JobState.IN_QUEUE.value)


def moving(to: JobState | tuple[JobState, ...], *among: JobState) -> ColumnElement[bool]:
    """The guard of a job UPDATE to `to`, derived from `core.jobs.ALLOWED` (see `transitions.guard`)."""
    return guard(J.state, ALLOWED, to, among)


def owned(job_id: str, account_id: str, endpoint_id: str) -> ColumnElement[bool]:
    """The job `job_id`, when it is the account's and the endpoint's (a client sees no other)."""
    return and_(J.id == job_id, J.account_id == account_id, J.endpoint_id == endpoint_id)


def ending(state: JobState, now: float, purge_at: float) -> dict[str, object]:
    """The columns every move to a final `state` sets: when it ended, when its record goes, and its
    webhook (if any) due at once."""
    return dict(state=state.value, completed_at=now, purge_at=purge_at, webhook_next_at=now)


class ClaimedRow(TypedDict):
    """What `claim_statement` returns of each job it hands out."""

    id: ReadOnly[str]
    input: ReadOnly[str]
    extra: ReadOnly[str | None]
    low_priority: ReadOnly[bool]
    created_at: ReadOnly[float]


class FinishedRow(TypedDict):
    """What `finish_statement` returns of the job it finished (`worker_takes`: 1 or 0)."""

    created_at: ReadOnly[float]
    started_at: ReadOnly[float | None]
    retried: ReadOnly[int]
    webhook: ReadOnly[str | None]
    worker_takes: ReadOnly[int]
    queued: ReadOnly[bool]  # the job's endpoint has a queued job: a claim may find one


class StateOf(TypedDict):
    """Where a job stands: its state, its worker and its endpoint."""

    state: ReadOnly[JobState]
    worker_id: ReadOnly[str | None]
    endpoint_id: ReadOnly[str]


class StopState(TypedDict):
    """What deciding whether to flag a job for job-stop again reads."""

    state: ReadOnly[JobState]
    worker_id: ReadOnly[str | None]
    stop_requested: ReadOnly[bool]


class JobId(TypedDict):
    """A job's id alone."""

    id: ReadOnly[str]


def claim_statement(pg: bool) -> ReturnsRows:
    """Hand up to :p_limit queued jobs of :p_endpoint to :p_worker: normal priority first, then oldest
    first. A CTE is evaluated once (PostgreSQL may re-run an IN-subquery and so exceed the LIMIT)."""
    pick = (
        select(J.id)
        .where(J.endpoint_id == bindparam("p_endpoint"), QUEUED)
        .order_by(J.low_priority, J.created_at)
        .limit(bindparam("p_limit"))
    )
    if pg:
        pick = pick.with_for_update(skip_locked=True)
    picked = pick.cte("picked")
    return (
        update(jobs)
        .where(J.id == picked.c.id, moving(JobState.IN_PROGRESS, JobState.IN_QUEUE))
        .values(
            state=JobState.IN_PROGRESS.value,
            worker_id=bindparam("p_worker"),
            started_at=bindparam("p_now"),
            deadline_at=J.execution_timeout_ms / 1000.0 + bindparam("p_now"),
        )
        .returning(J.id, J.input, J.extra, J.low_priority, J.created_at)
    )


def insert_statement() -> Insert:
    """A new job: queued, or (with :p_worker set) already handed to a waiting worker."""
    return insert(jobs).values(
        id=bindparam("p_id"),
        endpoint_id=bindparam("p_endpoint"),
        account_id=bindparam("p_account"),
        state=bindparam("p_state"),
        input=bindparam("p_input"),
        extra=bindparam("p_extra"),
        webhook=bindparam("p_webhook"),
        low_priority=bindparam("p_low"),
        execution_timeout_ms=bindparam("p_timeout_ms"),
        is_sync=bindparam("p_sync"),
        created_at=bindparam("p_now"),
        expires_at=bindparam("p_expires"),
        webhook_state=bindparam("p_webhook_state"),
        worker_id=bindparam("p_worker"),
        started_at=bindparam("p_started"),
        deadline_at=bindparam("p_deadline"),
        requeues=0,
        retried=0,
        stream_next=0,
        stream_read=0,
        stop_requested=False,
        webhook_attempts=0,
    )


def finish_statement() -> ReturnsRows:
    """Record the result :p_state of job :p_id held by :p_worker at :p_now; returns what the record of
    its end needs, whether the worker may take the next job (`takes_jobs`), and whether endpoint
    :p_endpoint has a queued job (else a claim for the worker need not be tried; none without one)."""
    return (
        update(jobs)
        .where(
            J.id == bindparam("p_id"),
            J.worker_id == bindparam("p_worker"),
            moving((JobState.COMPLETED, JobState.FAILED), JobState.IN_PROGRESS),  # :p_state is one of them
        )
        .values(
            state=bindparam("p_state"),
            output=bindparam("p_output"),
            error=bindparam("p_error"),
            completed_at=bindparam("p_now"),
            purge_at=case((J.is_sync, bindparam("p_purge_sync")), else_=bindparam("p_purge_run")),
            webhook_next_at=bindparam("p_now"),
        )
        .returning(
            J.created_at,
            J.started_at,
            J.retried,
            J.webhook,
            takes_jobs(bindparam("p_worker")).label("worker_takes"),
            exists().where(Q.endpoint_id == bindparam("p_endpoint"), QUEUED_Q).label("queued"),
        )
    )
