"""Streamed job output: the chunks a worker sends while its job runs (`job_stream`), each handed to the
client once, in order."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert, select, update

from ember.store.db import Repository
from ember.store.job_statements import FINAL_VALUES, RUNNING, J, owned
from ember.store.rows import JobRow
from ember.store.schema import job_stream, jobs

S = job_stream.c


class StreamStore(Repository):
    def stream_chunk(
        self, job_id: str, worker_id: str, output_json: str, endpoint_id: str | None = None
    ) -> str:
        """Append a chunk to the job's stream: "done", or (nothing written) "unknown" (no such job, or one
        of another endpoint than `endpoint_id`), "final" (already final) or "not_held" (not this
        worker's running job)."""
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

    def read_stream(
        self, job_id: str, account_id: str, endpoint_id: str
    ) -> tuple[JobRow, Sequence[str]] | None:
        """The job and every chunk not yet read (each chunk is handed out once), oldest first."""
        with self.engine.begin() as conn:
            found = self._rows(JobRow, select(jobs).where(owned(job_id, account_id, endpoint_id)), conn)
            if not found:
                return None
            job = found[0]
            chunks = conn.execute(
                select(S.seq, S.output).where(S.job_id == job_id, S.seq >= job["stream_read"]).order_by(S.seq)
            ).all()
            if chunks:
                conn.execute(update(jobs).where(J.id == job_id).values(stream_read=chunks[-1].seq + 1))
            return job, [c.output for c in chunks]
