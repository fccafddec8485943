"""Idempotent submits: a client's `Idempotency-Key` on /run, bound to the job it queued.

The key is claimed and the job written in one transaction, so a submit retried at once (on this or
another replica) either finds the key and the first job, or waits for the first submit's transaction
and then finds them: one job per key, whatever the timing."""

from __future__ import annotations

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.dml import Insert
from typing_extensions import ReadOnly, TypedDict

from ember.core.errors import StoreError
from ember.store import outbox
from ember.store.db import Prepared, PreparedRows, RawAccess, Repository, insert_unless_present
from ember.store.jobs import JobStore, NewJob
from ember.store.schema import idempotency_keys

K = idempotency_keys.c


class _KeyedJob(TypedDict):
    job_id: ReadOnly[str]


def _claim_statement(dialect: str) -> Insert:
    """Insert the key for a job; a row of the same key older than :p_cutoff is taken over, a newer one
    is left alone (no row changes: the key is another submit's)."""
    stmt = insert_unless_present(dialect, idempotency_keys).values(
        account_id=bindparam("p_account"),
        endpoint_id=bindparam("p_endpoint"),
        key=bindparam("p_key"),
        job_id=bindparam("p_job"),
        created_at=bindparam("p_now"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[K.account_id, K.endpoint_id, K.key],
        set_={"job_id": stmt.excluded.job_id, "created_at": stmt.excluded.created_at},
        where=K.created_at < bindparam("p_cutoff"),
    )


class IdempotencyStore(Repository):
    def __init__(self, engine: Engine, jobs: JobStore, raw: RawAccess | None = None) -> None:
        super().__init__(engine, raw)
        self.jobs = jobs
        self._claim = Prepared(engine, _claim_statement(engine.dialect.name))
        self._find = PreparedRows(
            engine,
            select(K.job_id).where(
                K.account_id == bindparam("p_account"),
                K.endpoint_id == bindparam("p_endpoint"),
                K.key == bindparam("p_key"),
            ),
            _KeyedJob,
        )

    def submit_once(self, job: NewJob, key: str, now: float, window_s: float) -> str | None:
        """Queue `job` under `key` unless the account used `key` on the endpoint within `window_s`:
        then nothing is written and the first job's id is returned. None when `job` was queued."""
        with self.raw.write() as cur:
            self._claim.execute(
                cur,
                p_account=job.account_id,
                p_endpoint=job.endpoint_id,
                p_key=key,
                p_job=job.id,
                p_now=now,
                p_cutoff=now - window_s,
            )
            if cur.rowcount == 0:
                row = self._find.first(cur, p_account=job.account_id, p_endpoint=job.endpoint_id, p_key=key)
                if row is None:  # cannot happen: a conflict is a row
                    raise StoreError(f"idempotency key {key!r} is taken and cannot be read")
                return row["job_id"]
            self.jobs.submit(job, now, cur=cur)
            outbox.add("q", job.endpoint_id)
        return None

    def forget_before(self, cutoff: float) -> int:
        """Drop keys made before `cutoff` (their window has passed). Returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(idempotency_keys.delete().where(K.created_at < cutoff)).rowcount
