"""The control loops' scans over jobs: queue figures for the scaler, time-outs and ttl expiry, purging
old records, re-queueing a lost worker's jobs, and webhook bookkeeping. Each is one transaction; state
changes are guarded UPDATEs as in `jobs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, delete, func, select, update

from ember.core.jobs import JobState
from ember.store import outbox
from ember.store.db import Repository, constant
from ember.store.job_statements import FINAL_VALUES, QUEUED, RUNNING, J, ending, moving
from ember.store.rows import JobRow, TimedOutJob
from ember.store.schema import job_stream, jobs

# What a sweep that ends jobs TIMED_OUT reads of each (`TimedOutJob`).
TIMED_OUT_COLUMNS = (J.id, J.worker_id, J.endpoint_id, J.state, J.execution_timeout_ms)


@dataclass(frozen=True)
class QueueStats:
    queued: int
    queued_low: int
    oldest_created_at: float | None
    in_progress: int


class SweepStore(Repository):
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
        counts: dict[str, list[int]] = {}  # endpoint -> [queued, queued low-priority, in progress]
        oldest_at: dict[str, float] = {}
        with self.reader.connect() as conn:
            for endpoint_id, low, n, oldest in conn.execute(queued):
                entry = counts.setdefault(endpoint_id, [0, 0, 0])
                if low:
                    entry[1] = int(n)
                else:
                    entry[0], oldest_at[endpoint_id] = int(n), oldest
            for (endpoint_id,) in conn.execute(running):
                counts.setdefault(endpoint_id, [0, 0, 0])[2] += 1
        return {ep: QueueStats(q, low, oldest_at.get(ep), run) for ep, (q, low, run) in counts.items()}

    def held_by_worker(self) -> dict[str, dict[str, float]]:
        """worker id -> {job id -> started_at} of every IN_PROGRESS job."""
        with self.reader.connect() as conn:
            rows = conn.execute(select(J.worker_id, J.id, J.started_at).where(RUNNING)).all()
        held: dict[str, dict[str, float]] = {}
        for worker_id, job_id, started_at in rows:
            held.setdefault(worker_id, {})[job_id] = started_at
        return held

    def time_out_running(self, now: float, retention_run_s: float) -> list[TimedOutJob]:
        """IN_PROGRESS jobs past their execution deadline become TIMED_OUT and are flagged for job-stop."""
        overdue = select(*TIMED_OUT_COLUMNS).where(RUNNING, J.deadline_at < now)
        with self.engine.begin() as conn:
            due = self._rows(TimedOutJob, self._lock(overdue), conn)
            for row in due:
                conn.execute(
                    update(jobs)
                    .where(J.id == row["id"], moving(JobState.TIMED_OUT, JobState.IN_PROGRESS))
                    .values(
                        **ending(JobState.TIMED_OUT, now, now + retention_run_s),
                        stop_requested=True,
                        error=f"execution timeout of {row['execution_timeout_ms']} ms exceeded; "
                        "the worker was told to stop the job",
                    )
                )
            _ended(due)
            return due

    def expire(self, now: float, grace_s: float) -> list[TimedOutJob]:
        """Jobs past their ttl end TIMED_OUT and are purged shortly after (status then answers 404)."""
        with self.engine.begin() as conn:
            due = [
                row
                for state in (JobState.IN_QUEUE.value, JobState.IN_PROGRESS.value)
                for row in self._rows(
                    TimedOutJob,
                    self._lock(
                        select(*TIMED_OUT_COLUMNS).where(J.state == constant(state), J.expires_at < now)
                    ),
                    conn,
                )
            ]
            for row in due:
                conn.execute(
                    update(jobs)
                    .where(J.id == row["id"], moving(JobState.TIMED_OUT, row["state"]))
                    .values(
                        **ending(JobState.TIMED_OUT, now, now + grace_s),
                        stop_requested=row["state"] == JobState.IN_PROGRESS.value,
                        error="ttl expired before the job completed"
                        if row["state"] == JobState.IN_PROGRESS.value
                        else "ttl expired before the job was picked up",
                    )
                )
            _ended(due)
            return due

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
            q = select(J.id, J.requeues, J.endpoint_id).where(J.worker_id == worker_id, RUNNING)
            if only is not None:
                q = q.where(J.id.in_(list(only)))
            held = conn.execute(self._lock(q)).all()
            again = [r.id for r in held if r.requeues < max_requeues]
            fail = [r.id for r in held if r.requeues >= max_requeues]
            if again:
                conn.execute(
                    update(jobs)
                    .where(J.id.in_(again), moving(JobState.IN_QUEUE, JobState.IN_PROGRESS))
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
                    .where(J.id.in_(fail), moving(JobState.FAILED, JobState.IN_PROGRESS))
                    .values(
                        **ending(JobState.FAILED, now, now + retention_run_s),
                        error=f"{reason}; the job was already re-queued {max_requeues} time(s)",
                    )
                )
            for endpoint_id in sorted({r.endpoint_id for r in held if r.id in again}):
                outbox.add("q", endpoint_id)
            for job_id in fail:
                outbox.add("f", job_id)
            return again, fail

    def webhooks_due(self, now: float, limit: int = 100) -> list[JobRow]:
        return self._rows(
            JobRow,
            select(jobs)
            .where(
                J.webhook_state == constant("PENDING"),
                J.webhook.is_not(None),
                J.state.in_(FINAL_VALUES),
                J.webhook_next_at <= now,
            )
            .limit(limit),
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


def _ended(due: Sequence[TimedOutJob]) -> None:
    """Jobs the transaction ended: their runsync waiters, and the workers that still run them (told to
    stop), wherever they are held (`store.outbox`)."""
    for row in due:
        outbox.add("f", row["id"])
        if row["worker_id"] and row["state"] == JobState.IN_PROGRESS.value:
            outbox.add("s", row["worker_id"])
