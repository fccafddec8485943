"""Workers' latest heartbeats in the database (`worker_pings`), for several control-plane processes on one
database: the process a worker pings records it here, the one that runs the lifecycle reads them all."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select

from ember.core.workers import Ping
from ember.store.db import Repository, insert_unless_present
from ember.store.schema import worker_pings

P = worker_pings.c


class PingStore(Repository):
    def record(self, worker_id: str, at: float, held: frozenset[str]) -> None:
        """The worker's ping at `at`, saying it holds the jobs `held`; an older ping never replaces a
        newer one (two processes may record a worker's pings out of order)."""
        text = ",".join(sorted(held))
        upsert = insert_unless_present(self.engine.dialect.name, worker_pings).values(
            worker_id=worker_id, at=at, held=text
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[P.worker_id], set_={"at": at, "held": text}, where=P.at < at
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)

    def latest(self, worker_ids: Sequence[str]) -> dict[str, Ping]:
        """The latest ping of each of these workers that has one."""
        if not worker_ids:
            return {}
        with self.reader.connect() as conn:
            rows = conn.execute(select(P.worker_id, P.at, P.held).where(P.worker_id.in_(list(worker_ids))))
            return {wid: Ping(at, frozenset(i for i in held.split(",") if i)) for wid, at, held in rows}

    def failed_check(self, worker_id: str, reason: str, at: float) -> None:
        """The worker reported a failed start-up check at `at` (it exits next)."""
        upsert = insert_unless_present(self.engine.dialect.name, worker_pings).values(
            worker_id=worker_id, at=at, held="", failed_check=reason, failed_at=at
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[P.worker_id], set_={"failed_check": reason, "failed_at": at}
        )
        with self.engine.begin() as conn:
            conn.execute(upsert)

    def failed_checks(self, since: dict[str, float]) -> dict[str, str]:
        """The failed start-up check of each worker of `since` that reported one at or after its time
        there (its latest launch: an earlier run's report is not this run's)."""
        if not since:
            return {}
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(P.worker_id, P.failed_check, P.failed_at).where(
                    P.worker_id.in_(list(since)), P.failed_check.is_not(None)
                )
            )
            return {wid: str(why) for wid, why, at in rows if at is not None and at >= since[wid]}

    def forget(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(worker_pings).where(P.worker_id == worker_id))
