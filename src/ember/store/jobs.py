"""The durable job queue: submit, claim (one statement; SKIP LOCKED on PostgreSQL), finish, stream,
cancel, retry, purge, and the reaper's scans. Every state change is a guarded UPDATE derived from
`core.jobs.ALLOWED`, so an illegal transition is impossible rather than checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, literal, select, update
from sqlalchemy.engine import Engine, RowMapping

from ember.core.jobs import TERMINAL, JobState, sources
from ember.store.db import Prepared, RawAccess, Repository, constant
from ember.store.schema import job_stream, jobs
from ember.store.workers import takes_jobs

J = jobs.c
FINAL_VALUES = [s.value for s in TERMINAL]
# The states that partial indexes cover, as constants in the SQL (see `constant`).
QUEUED = J.state == constant(JobState.IN_QUEUE.value)
RUNNING = J.state == constant(JobState.IN_PROGRESS.value)


def _src(to: JobState) -> list[str]:
    return [s.value for s in sources(to)]


@dataclass(frozen=True)
class NewJob:
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


@dataclass(frozen=True)
class Claimed:
    id: str
    input_json: str
    extra_json: str | None


@dataclass(frozen=True)
class QueueStats:
    queued: int
    queued_low: int
    oldest_created_at: float | None
    in_progress: int


def _claim_statement(pg: bool) -> Any:
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
        .where(J.id == picked.c.id, QUEUED)
        .values(
            state=JobState.IN_PROGRESS.value,
            worker_id=bindparam("p_worker"),
            started_at=bindparam("p_now"),
            deadline_at=J.execution_timeout_ms / 1000.0 + bindparam("p_now"),
        )
        .returning(J.id, J.input, J.extra, J.low_priority, J.created_at)
    )


def _insert_statement() -> Any:
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


@dataclass(frozen=True)
class Finished:
    """What `finish` learns about a job it finished: enough for its record without reading it again."""

    created_at: float
    started_at: float | None
    retried: int
    has_webhook: bool
    worker_takes: bool = False  # the worker that finished it may be handed new jobs (`takes_jobs`)


class JobStore(Repository):
    def __init__(self, engine: Engine, raw: RawAccess | None = None) -> None:
        super().__init__(engine, raw)
        self.pg = engine.dialect.name == "postgresql"
        # The hot statements are compiled once and run on the raw connection (see `Prepared`).
        self._insert = Prepared(engine, _insert_statement())
        self._claim = Prepared(engine, _claim_statement(self.pg))
        self._get = Prepared(engine, select(jobs).where(J.id == bindparam("id")))
        self._state_of = Prepared(
            engine, select(J.state, J.worker_id, J.endpoint_id).where(J.id == bindparam("id"))
        )
        self._stop_state = Prepared(
            engine, select(J.state, J.worker_id, J.stop_requested).where(J.id == bindparam("id"))
        )
        self._any_queued = Prepared(
            engine,
            select(J.id).where(J.endpoint_id == bindparam("p_endpoint"), QUEUED).limit(1),
        )
        self._finish = Prepared(
            engine,
            update(jobs)
            .where(
                J.id == bindparam("p_id"),
                J.worker_id == bindparam("p_worker"),
                RUNNING,
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
            ),
        )

    # ---- client side -------------------------------------------------------------------------------
    def submit(self, job: NewJob, now: float, *, worker_id: str | None = None, cur: Any = None) -> None:
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
    ) -> dict[str, Any] | None:
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
    ) -> Sequence[RowMapping]:
        q = select(jobs).where(J.account_id == account_id)
        if endpoint_id:
            q = q.where(J.endpoint_id == endpoint_id)
        if state:
            q = q.where(J.state == state)
        q = q.order_by(J.created_at.desc()).limit(limit)
        return self._all(q)

    def cancel(
        self, job_id: str, account_id: str, endpoint_id: str, now: float, retention_s: float
    ) -> RowMapping | None:
        """Cancel a queued or running job; a running one is flagged for the job-stop channel.
        Returns the job as it is afterwards (with `cancelled_now`: whether this call cancelled it), or
        None when unknown. Final jobs are left as they are."""
        with self.engine.begin() as conn:
            row = conn.execute(
                self._lock(
                    select(J.state, J.worker_id).where(
                        J.id == job_id, J.account_id == account_id, J.endpoint_id == endpoint_id
                    )
                )
            ).first()
            if row is None:
                return None
            cancelled_now = row.state in _src(JobState.CANCELLED)
            if cancelled_now:
                conn.execute(
                    update(jobs)
                    .where(J.id == job_id, J.state.in_(_src(JobState.CANCELLED)))
                    .values(
                        state=JobState.CANCELLED.value,
                        completed_at=now,
                        purge_at=now + retention_s,
                        stop_requested=row.state == JobState.IN_PROGRESS.value,
                        webhook_next_at=now,
                    )
                )
            now_flag = literal(cancelled_now).label("cancelled_now")
            return conn.execute(select(jobs, now_flag).where(J.id == job_id)).mappings().first()

    def retry(self, job_id: str, account_id: str, endpoint_id: str, now: float) -> str | None:
        """Re-queue a FAILED or TIMED_OUT job under the same id with its output cleared.
        Returns the state it is in afterwards, or None when unknown."""
        ttl = J.expires_at - J.created_at
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(
                    J.id == job_id,
                    J.account_id == account_id,
                    J.endpoint_id == endpoint_id,
                    J.state.in_([JobState.FAILED.value, JobState.TIMED_OUT.value]),
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
            row = conn.execute(
                select(J.state).where(
                    J.id == job_id, J.account_id == account_id, J.endpoint_id == endpoint_id
                )
            ).first()
            return None if row is None else row.state

    def purge_queue(self, endpoint_id: str, now: float, retention_s: float) -> int:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(jobs)
                .where(J.endpoint_id == endpoint_id, QUEUED)
                .values(
                    state=JobState.CANCELLED.value,
                    completed_at=now,
                    purge_at=now + retention_s,
                    error="removed from the queue by purge-queue",
                    webhook_next_at=now,
                )
            )
            return res.rowcount

    def read_stream(
        self, job_id: str, account_id: str, endpoint_id: str
    ) -> tuple[RowMapping, Sequence[str]] | None:
        """The job and every chunk not yet read (each chunk is handed out once), oldest first."""
        with self.engine.begin() as conn:
            job = (
                conn.execute(
                    select(jobs).where(
                        J.id == job_id, J.account_id == account_id, J.endpoint_id == endpoint_id
                    )
                )
                .mappings()
                .first()
            )
            if job is None:
                return None
            chunks = conn.execute(
                select(job_stream.c.seq, job_stream.c.output)
                .where(job_stream.c.job_id == job_id, job_stream.c.seq >= job["stream_read"])
                .order_by(job_stream.c.seq)
            ).all()
            if chunks:
                conn.execute(update(jobs).where(J.id == job_id).values(stream_read=chunks[-1].seq + 1))
            return job, [c.output for c in chunks]

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
        """Whether the endpoint has a queued job (a read: no write lock is taken)."""
        with self.raw.read() as cur:
            return self._any_queued.first(cur, p_endpoint=endpoint_id) is not None

    def claim(
        self, endpoint_id: str, worker_id: str, limit: int, now: float, cur: Any = None
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
        cur: Any = None,
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
            )
            if done is not None:
                return "done", Finished(
                    done["created_at"],
                    done["started_at"],
                    done["retried"],
                    done["webhook"] is not None,
                    bool(done["worker_takes"]),
                )
            row = self._state_of.first(tx, id=job_id)
        if row is None or endpoint_id not in (None, row["endpoint_id"]):
            return "unknown", None
        if row["state"] in FINAL_VALUES:
            return "final", None
        return "not_held", None

    def stream_chunk(
        self, job_id: str, worker_id: str, output_json: str, endpoint_id: str | None = None
    ) -> str:
        with self.engine.begin() as conn:
            seq = conn.execute(
                update(jobs)
                .where(J.id == job_id, J.worker_id == worker_id, RUNNING)
                .values(stream_next=J.stream_next + 1)
                .returning(J.stream_next)
            ).scalar()
            if seq is not None:
                conn.execute(insert(job_stream).values(job_id=job_id, seq=seq - 1, output=output_json))
                return "done"
            row = conn.execute(select(J.state, J.endpoint_id).where(J.id == job_id)).first()
        if row is None or endpoint_id not in (None, row.endpoint_id):
            return "unknown"
        return "final" if row.state in FINAL_VALUES else "not_held"

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

    # ---- control loops -----------------------------------------------------------------------------
    def queue_stats(self) -> dict[str, QueueStats]:
        """Per endpoint: queued (normal), queued low-priority, oldest normal queued time, in progress.
        (One query per state, so each reads its own partial index.)"""
        queued = (
            select(
                J.endpoint_id,
                J.low_priority,
                func.count(),
                func.min(J.created_at),
            )
            .where(QUEUED)
            .group_by(J.endpoint_id, J.low_priority)
        )
        # Running jobs are few: counted here, so that the scan reads the running-jobs index.
        running = select(J.endpoint_id).where(RUNNING)
        stats: dict[str, list[Any]] = {}
        with self.reader.connect() as conn:
            for endpoint_id, low, n, oldest in conn.execute(queued):
                entry = stats.setdefault(endpoint_id, [0, 0, None, 0])
                if low:
                    entry[1] = int(n)
                else:
                    entry[0], entry[2] = int(n), oldest
            for (endpoint_id,) in conn.execute(running):
                stats.setdefault(endpoint_id, [0, 0, None, 0])[3] += 1
        return {ep: QueueStats(*entry) for ep, entry in stats.items()}

    def held_by_worker(self) -> dict[str, dict[str, float]]:
        """worker id -> {job id -> started_at} of every IN_PROGRESS job."""
        with self.reader.connect() as conn:
            rows = conn.execute(select(J.worker_id, J.id, J.started_at).where(RUNNING)).all()
        held: dict[str, dict[str, float]] = {}
        for worker_id, job_id, started_at in rows:
            held.setdefault(worker_id, {})[job_id] = started_at
        return held

    def time_out_running(self, now: float, retention_run_s: float) -> Sequence[RowMapping]:
        """IN_PROGRESS jobs past their execution deadline become TIMED_OUT and are flagged for job-stop."""
        with self.engine.begin() as conn:
            due = (
                conn.execute(
                    self._lock(
                        select(J.id, J.worker_id, J.endpoint_id, J.execution_timeout_ms).where(
                            RUNNING, J.deadline_at < now
                        )
                    )
                )
                .mappings()
                .all()
            )
            for row in due:
                conn.execute(
                    update(jobs)
                    .where(J.id == row["id"], RUNNING)
                    .values(
                        state=JobState.TIMED_OUT.value,
                        completed_at=now,
                        purge_at=now + retention_run_s,
                        stop_requested=True,
                        webhook_next_at=now,
                        error=f"execution timeout of {row['execution_timeout_ms']} ms exceeded; "
                        "the worker was told to stop the job",
                    )
                )
            return list(due)

    def expire(self, now: float, grace_s: float) -> Sequence[RowMapping]:
        """Jobs past their ttl end TIMED_OUT and are purged shortly after (status then answers 404)."""
        with self.engine.begin() as conn:
            due = [
                row
                for state in (JobState.IN_QUEUE.value, JobState.IN_PROGRESS.value)
                for row in conn.execute(
                    self._lock(
                        select(J.id, J.worker_id, J.state, J.endpoint_id).where(
                            J.state == constant(state), J.expires_at < now
                        )
                    )
                )
                .mappings()
                .all()
            ]
            for row in due:
                conn.execute(
                    update(jobs)
                    .where(J.id == row["id"], J.state == row["state"])
                    .values(
                        state=JobState.TIMED_OUT.value,
                        completed_at=now,
                        purge_at=now + grace_s,
                        stop_requested=row["state"] == JobState.IN_PROGRESS.value,
                        webhook_next_at=now,
                        error="ttl expired before the job completed"
                        if row["state"] == JobState.IN_PROGRESS.value
                        else "ttl expired before the job was picked up",
                    )
                )
            return list(due)

    def purge_expired(self, now: float) -> int:
        # webhook_state is NULL for jobs without a webhook: test it explicitly, or NOT(NULL AND …) is NULL
        # and such jobs are never purged.
        keep_for_webhook = and_(
            J.webhook_state.is_not(None), J.webhook_state == "PENDING", J.webhook_attempts < 3
        )
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(select(J.id).where(J.purge_at < now, ~keep_for_webhook).limit(5000)).scalars()
            )
            if ids:
                conn.execute(delete(job_stream).where(job_stream.c.job_id.in_(ids)))
                conn.execute(delete(jobs).where(J.id.in_(ids)))
            return len(ids)

    def release_worker_jobs(
        self,
        worker_id: str,
        reason: str,
        max_requeues: int,
        now: float,
        retention_run_s: float,
        only: Sequence[str] | None = None,
    ) -> tuple[Sequence[str], Sequence[str]]:
        """A worker is gone (or dropped the jobs `only`): its IN_PROGRESS jobs are re-queued (up to
        `max_requeues` times each), the rest failed with `reason`. Returns (requeued ids, failed ids)."""
        with self.engine.begin() as conn:
            q = select(J.id, J.requeues).where(J.worker_id == worker_id, RUNNING)
            if only is not None:
                q = q.where(J.id.in_(list(only)))
            held = conn.execute(self._lock(q)).all()
            again = [r.id for r in held if r.requeues < max_requeues]
            fail = [r.id for r in held if r.requeues >= max_requeues]
            if again:
                conn.execute(
                    update(jobs)
                    .where(J.id.in_(again), RUNNING)
                    .values(
                        state=JobState.IN_QUEUE.value,
                        worker_id=None,
                        started_at=None,
                        deadline_at=None,
                        requeues=J.requeues + 1,
                        output=None,
                    )
                )
            if fail:
                conn.execute(
                    update(jobs)
                    .where(J.id.in_(fail), RUNNING)
                    .values(
                        state=JobState.FAILED.value,
                        completed_at=now,
                        purge_at=now + retention_run_s,
                        webhook_next_at=now,
                        error=f"{reason}; the job was already re-queued {max_requeues} time(s)",
                    )
                )
            return again, fail

    def webhooks_due(self, now: float, limit: int = 100) -> Sequence[RowMapping]:
        return self._all(
            select(jobs)
            .where(
                J.webhook_state == constant("PENDING"), J.state.in_(FINAL_VALUES), J.webhook_next_at <= now
            )
            .limit(limit)
        )

    def webhook_result(
        self,
        job_id: str,
        delivered: bool,
        now: float,
        retry_after_s: float,
        max_attempts: int,
        *,
        error: str | None = None,
        final: bool = False,
    ) -> None:
        """Record one delivery attempt. A failure is tried again later until `max_attempts`, unless it is
        `final` (a refused destination): then the webhook is FAILED at once. `error` says why it failed."""
        with self.engine.begin() as conn:
            row = conn.execute(select(J.webhook_attempts).where(J.id == job_id)).first()
            if row is None:
                return
            attempts = row.webhook_attempts + 1
            given_up = final or attempts >= max_attempts
            state = "DELIVERED" if delivered else ("FAILED" if given_up else "PENDING")
            conn.execute(
                update(jobs)
                .where(J.id == job_id)
                .values(
                    webhook_state=state,
                    webhook_attempts=attempts,
                    webhook_next_at=now + retry_after_s,
                    webhook_error=None if delivered else (error or "not delivered")[:1000],
                )
            )

    def _lock(self, q: Any) -> Any:
        return q.with_for_update() if self.pg else q
