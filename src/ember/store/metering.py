"""Meter cursors: which workers have time not yet billed, and moving a worker's cursor together with the
charges for the span it covers (compare-and-set, so that each span is billed once by one meter)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select, update

from ember.core.workers import WorkerState
from ember.store.accounts import AccountStore, Charge
from ember.store.db import Repository, insert_unless_present
from ember.store.rows import MeterCandidate
from ember.store.schema import meter_cursors, worker_events, workers

W = workers.c


class MeterStore(Repository):
    def meter_candidates(self) -> list[tuple[MeterCandidate, float | None, int]]:
        """Workers with time not yet billed: live ones, and stopped ones billed short of their stop."""
        m = meter_cursors.c
        q = (
            select(workers, m.metered_until, m.carry_ms)
            .select_from(workers.outerjoin(meter_cursors, m.worker_id == W.id))
            .where(
                or_(
                    W.state != WorkerState.STOPPED.value,
                    m.metered_until.is_(None),
                    m.metered_until < W.state_since,
                )
            )
        )
        rows = self._rows(MeterCandidate, q)
        return [(r, r["metered_until"], int(r["carry_ms"] or 0)) for r in rows]

    def save_meter(
        self,
        worker_id: str,
        since: float | None,
        until: float,
        carry_ms: int,
        charges: Sequence[Charge],
        now: float,
        accounts: AccountStore,
        seen_event_id: int,
    ) -> bool:
        """Move the worker's cursor from `since` (None: it has none yet) to `until` and append the
        charges for that span, in one transaction. Compare-and-set: when the cursor is no longer at
        `since` (another meter, on another replica, billed the span first), or a transition stamped
        inside the span was recorded after the meter read up to event `seen_event_id` (a late settle,
        `settle_late`), nothing is written and this returns False, so a span is billed once however
        many meters run, and from every transition in it."""
        m = meter_cursors.c
        ev = worker_events.c
        with self.engine.begin() as conn:
            # The worker's row is locked first, as `settle_late` does, so that the two take turns.
            conn.execute(select(W.id).where(W.id == worker_id).with_for_update())
            in_span = [ev.worker_id == worker_id, ev.id > seen_event_id, ev.at < until]
            if since is not None:
                in_span.append(ev.at >= since)
            late = conn.execute(select(ev.id).where(*in_span).limit(1)).first()
            if late is not None:
                return False
            if since is None:
                # RETURNING says whether a row went in (a driver may give no rowcount for an INSERT).
                moved = (
                    conn.execute(
                        insert_unless_present(conn.dialect.name, meter_cursors)
                        .values(worker_id=worker_id, metered_until=until, carry_ms=carry_ms)
                        .on_conflict_do_nothing(index_elements=[m.worker_id])
                        .returning(m.worker_id)
                    ).first()
                    is not None
                )
            else:
                moved = (
                    conn.execute(
                        update(meter_cursors)
                        .where(m.worker_id == worker_id, m.metered_until == since)
                        .values(metered_until=until, carry_ms=carry_ms)
                    ).rowcount
                    > 0
                )
            if not moved:
                return False
            accounts.record_charges(charges, now, conn=conn)
            return True
