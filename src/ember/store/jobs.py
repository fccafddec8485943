"""The durable job queue: submit, claim (one statement; SKIP LOCKED on PostgreSQL), finish, cancel,
retry, purge, and the job-stop channel. Every state change is a guarded UPDATE derived from
`core.jobs.ALLOWED`, so an illegal transition is impossible rather than checked. Streamed output is in
`streams`, the control loops' scans in `sweeps`, the SQL they share in `job_statements`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from sqlalchemy import bindparam, case, delete, func, literal, select, update
from sqlalchemy.engine import Engine

from ember.core.jobs import RETRYABLE, JobState, sources
from ember.store import outbox
from ember.store.db import Cursor, Prepared, PreparedRows, RawAccess, Repository
from ember.store.job_statements import (
    FINAL_VALUES,
    QUEUED,
    RUNNING,
    ClaimedRow,
    FinishedRow,
    J,
    JobId,
    StateOf,
    StopState,
    claim_statement,
    ending,
    finish_statement,
    insert_statement,
    moving,
    owned,
)
from ember.store.rows import CancelledJob, JobRow
from ember.store.schema import job_stream, jobs


def queued_key(endpoint_id: str) -> str:
    """The name of a deferred write that queues a job on the endpoint (`RawAccess.defer`)."""
    return "queued:" + endpoint_id


class NewJob(NamedTuple):  # made per job: a tuple is quicker to make than a frozen dataclass
    id: str
    endpoint_id: str
    account_id: str
    input_json: str
    extra_json: str | None
    webhook: str | None
    low_priority: bool
    execution_timeout_ms: int
    ttl_ms: int
    is_sync: bool


class Claimed(NamedTuple):
    id: str
    input_json: str
    extra_json: str | None


class Finished(NamedTuple):
    """What `finish` learns about a job it finished: enough for its record without reading it again."""

    created_at: float
    started_at: float | None
    retried: int
    has_webhook: bool
    worker_takes: bool = False  # the worker that finished it may be handed new jobs (`takes_jobs`)
    queued: bool = False  # its endpoint (given to `finish`) had a queued job when it finished


class JobStore(Repository):
    def __init__(self, engine: Engine, raw: RawAccess | None = None) -> None:
        super().__init__(engine, raw)
        # The hot statements are compiled once and run on the raw connection (see `Prepared`).
        self._insert = Prepared(engine, insert_statement())
        self._claim = PreparedRows(engine, claim_statement(self.pg), ClaimedRow)
        self._get = PreparedRows(engine, select(jobs).where(J.id == bindparam("id")), JobRow)
        self._state_of = PreparedRows(
            engine, select(J.state, J.worker_id, J.endpoint_id).where(J.id == bindparam("id")), StateOf
        )
        self._stop_state = PreparedRows(
            engine, select(J.state, J.worker_id, J.stop_requested).where(J.id == bindparam("id")), StopState
        )
        self._any_queued = PreparedRows(
            engine, select(J.id).where(J.endpoint_id == bindparam("p_endpoint"), QUEUED).limit(1), JobId
        )
        self._finish = PreparedRows(engine, finish_statement(), FinishedRow)

    # ---- client side -------------------------------------------------------------------------------
    def submit(
        self, job: NewJob, now: float, *, worker_id: str | None = None, cur: Cursor | None = None
    ) -> None:
        """Queue a job, or with `worker_id` hand it straight to that worker (IN_PROGRESS from `now`);
        committed (on disk) when this returns, unless it joins the caller's transaction `cur`."""
        with self.raw.write(cur) as tx:
            self._insert.execute(
                tx,
                p_id=job.id,
                p_endpoint=job.endpoint_id,
                p_account=job.account_id,
                p_state=(JobState.IN_PROGRESS if worker_id else JobState.IN_QUEUE).value,
                p_input=job.input_json,
                p_extra=job.extra_json,
                p_webhook=job.webhook,
                p_low=job.low_priority,
                p_timeout_ms=job.execution_timeout_ms,
                p_sync=job.is_sync,
                p_now=now,
                p_expires=now + job.ttl_ms / 1000.0,
                p_webhook_state="PENDING" if job.webhook else None,
                p_worker=worker_id,
                p_started=now if worker_id else None,
                p_deadline=now + job.execution_timeout_ms / 1000.0 if worker_id else None,
            )

    def get(
        self, job_id: str, account_id: str | None = None, endpoint_id: str | None = None
    ) -> JobRow | None:
        with self.raw.read() as cur:
            row = self._get.first(cur, id=job_id)
        if row is None:
            return None
        if (account_id is not None and row["account_id"] != account_id) or (
            endpoint_id is not None and row["endpoint_id"] != endpoint_id
        ):
            return None
        return row

    def list(
        self, account_id: str, endpoint_id: str | None = None, state: str | None = None, limit: int = 100
    ) -> Sequence[JobRow]:
        q = select(jobs).where(J.account_id == account_id)
        if endpoint_id:
            q = q.where(J.endpoint_id == endpoint_id)
        if state:
            q = q.where(J.state == state)
        q = q.order_by(J.created_at.desc()).limit(limit)
        return self._rows(JobRow, q)

    def cancel(
        self, job_id: str, account_id: str, endpoint_id: str, now: float, retention_s: float
    ) -> CancelledJob | None:
        """Cancel a queued or running job; a running one is flagged for the job-stop channel.
        Returns the job as it is afterwards (with `cancelled_now`: whether this call cancelled it), or
        None when unknown. Final jobs are left as they are."""
        with self.engine.begin() as conn:
            row = conn.execute(
                self._lock(select(J.state, J.worker_id).where(owned(job_id, account_id, endpoint_id)))
            ).first()
            if row is None:
                return None
            cancelled_now = row.state in sources(JobState.CANCELLED)
            if cancelled_now:
                conn.execute(
                    update(jobs)
                    .where(J.id == job_id, moving(JobState.CANCELLED))
                    .values(
                        **ending(JobState.CANCELLED, now, now + retention_s),
                        stop_requested=row.state == JobState.IN_PROGRESS.value,
                    )
                )
                outbox.add("f", job_id)
                if row.state == JobState.IN_PROGRESS.value and row.worker_id:
                    outbox.add("s", row.worker_id)
            now_flag = literal(cancelled_now).label("cancelled_now")
            found = self._rows(CancelledJob, select(jobs, now_flag).where(J.id == job_id), conn)
            return found[0] if found else None

    def retry(self, job_id: str, account_id: str, endpoint_id: str, now: float) -> str | None:
        """Re-queue a FAILED or TIMED_OUT job under the same id with its output cleared.
        Returns the state it is in afterwards, or None when unknown."""
        ttl = J.expires_at - J.created_at
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(
                    owned(job_id, account_id, endpoint_id),
                    moving(JobState.IN_QUEUE, *RETRYABLE),
                )
                .values(
                    state=JobState.IN_QUEUE.value,
                    output=None,
                    error=None,
                    worker_id=None,
                    started_at=None,
                    deadline_at=None,
                    completed_at=None,
                    purge_at=None,
                    created_at=now,
                    expires_at=now + ttl,
                    retried=J.retried + 1,
                    requeues=0,
                    stream_next=0,
                    stream_read=0,
                    stop_requested=False,
                    webhook_state=case((J.webhook.is_not(None), "PENDING"), else_=None),
                    webhook_attempts=0,
                    webhook_next_at=None,
                    webhook_error=None,
                )
            )
            if res.rowcount:
                conn.execute(delete(job_stream).where(job_stream.c.job_id == job_id))
                return JobState.IN_QUEUE.value
            row = conn.execute(select(J.state).where(owned(job_id, account_id, endpoint_id))).first()
            return None if row is None else row.state

    def purge_queue(self, endpoint_id: str, now: float, retention_s: float) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(J.endpoint_id == endpoint_id, moving(JobState.CANCELLED, JobState.IN_QUEUE))
                .values(
                    **ending(JobState.CANCELLED, now, now + retention_s),
                    error="removed from the queue by purge-queue",
                )
            )
            return res.rowcount

    def counts(self, endpoint_id: str) -> dict[str, int]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(J.state, func.count()).where(J.endpoint_id == endpoint_id).group_by(J.state)
            ).all()
            retried = conn.execute(
                select(func.count()).where(J.endpoint_id == endpoint_id, J.retried > 0)
            ).scalar_one()
        out = {state: int(n) for state, n in rows}
        out["retried"] = int(retried)
        return out

    # ---- worker side -------------------------------------------------------------------------------
    def any_queued(self, endpoint_id: str) -> bool:
        """Whether the endpoint has a queued job (a read: no write lock is taken). The deferred writes are
        committed first only when one queues a job there (`Store.queue_later`)."""
        with self.raw.read(deferred=self.raw.waiting(queued_key(endpoint_id))) as cur:
            return self._any_queued.first(cur, p_endpoint=endpoint_id) is not None

    def claim(
        self, endpoint_id: str, worker_id: str, limit: int, now: float, cur: Cursor | None = None
    ) -> Sequence[Claimed]:
        """Hand up to `limit` queued jobs to `worker_id` in one statement: normal priority first, then
        oldest first. Concurrent claimers never get the same job."""
        with self.raw.write(cur) as tx:
            rows = self._claim.rows(tx, p_endpoint=endpoint_id, p_worker=worker_id, p_limit=limit, p_now=now)
        ordered = sorted(rows, key=lambda r: (r["low_priority"], r["created_at"]))
        return [Claimed(r["id"], r["input"], r["extra"]) for r in ordered]

    def progress(self, job_id: str, worker_id: str, output_json: str) -> bool:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(J.id == job_id, J.worker_id == worker_id, RUNNING)
                .values(output=output_json)
            )
            return res.rowcount > 0

    def finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        output_json: str | None,
        error: str | None,
        now: float,
        retention_run_s: float,
        retention_sync_s: float,
        cur: Cursor | None = None,
        endpoint_id: str | None = None,
    ) -> tuple[str, Finished | None]:
        """Record a final result. Returns ("done", what it learnt of the job), or "final" (already
        final: ignored, idempotent), "not_held" (in progress on another worker, or queued) or "unknown"
        (no such job, or, given `endpoint_id`, a job of another endpoint: a worker learns nothing of
        jobs outside its own endpoint)."""
        if JobState.IN_PROGRESS not in sources(state):
            raise ValueError(f"{state} is not a result state")
        with self.raw.write(cur) as tx:
            done = self._finish.first(
                tx,
                p_id=job_id,
                p_worker=worker_id,
                p_state=state.value,
                p_output=output_json,
                p_error=error,
                p_now=now,
                p_purge_sync=now + retention_sync_s,
                p_purge_run=now + retention_run_s,
                p_endpoint=endpoint_id,
            )
            if done is not None:
                return "done", Finished(
                    done["created_at"],
                    done["started_at"],
                    done["retried"],
                    done["webhook"] is not None,
                    bool(done["worker_takes"]),
                    bool(done["queued"]),
                )
            row = self._state_of.first(tx, id=job_id)
        if row is None or endpoint_id not in (None, row["endpoint_id"]):
            return "unknown", None
        if row["state"] in FINAL_VALUES:
            return "final", None
        return "not_held", None

    def held_by(self, worker_id: str) -> Sequence[str]:
        with self.reader.connect() as conn:
            return list(conn.execute(select(J.id).where(J.worker_id == worker_id, RUNNING)).scalars())

    def take_stops(self, worker_id: str) -> Sequence[str]:
        """Ids of jobs this worker should abandon (cancelled or timed out); each is handed out once."""
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(J.id).where(J.worker_id == worker_id, J.stop_requested.is_(True))
                ).scalars()
            )
            if ids:
                conn.execute(update(jobs).where(J.id.in_(ids)).values(stop_requested=False))
            return ids

    def stop_again(self, worker_id: str, job_ids: Sequence[str]) -> int:
        """Of `job_ids`, which a worker says it still runs, flag again for job-stop those that ended
        CANCELLED or TIMED_OUT (a stop that reached the worker before the job did is lost on it).
        Returns how many were flagged. (Called on every ping: a read by primary key per id.)"""
        stopped = (JobState.CANCELLED.value, JobState.TIMED_OUT.value)
        with self.raw.read() as cur:
            rows = {job_id: self._stop_state.first(cur, id=job_id) for job_id in job_ids}
        again = [
            job_id
            for job_id, row in rows.items()
            if row is not None
            and row["worker_id"] == worker_id
            and row["state"] in stopped
            and not row["stop_requested"]
        ]
        if not again:
            return 0
        with self.engine.begin() as conn:
            flag = update(jobs).where(J.id.in_(again), J.state.in_(stopped)).values(stop_requested=True)
            return conn.execute(flag).rowcount
