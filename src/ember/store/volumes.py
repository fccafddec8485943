"""Network-volume records (soft-deleted: `deleted_at`) and their meter: the cursor per volume and its
ledger rows (`kind="volume"`, the volume id in the ledger's `worker_id` column)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, or_, select, update

from ember.store.db import Repository
from ember.store.rows import VolumeMeterCandidate, VolumeRow
from ember.store.schema import accounts, ledger, meter_cursors, volumes

A = accounts.c
L = ledger.c
M = meter_cursors.c
V = volumes.c
# Volume cursors share `meter_cursors` with workers; volume ids (`vol-…`) never clash with worker ids.


@dataclass(frozen=True)
class VolumeCharge:
    account_id: str
    volume_id: str
    size_gb: int
    seconds: int
    amount_micros: int
    from_at: float
    to_at: float


class VolumeStore(Repository):
    # ---- records -----------------------------------------------------------------------------------
    def create(self, *, id: str, account_id: str, name: str, size_gb: int, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(volumes).values(
                    id=id, account_id=account_id, name=name, size_gb=size_gb, created_at=now
                )
            )

    def list(self, account_id: str) -> Sequence[VolumeRow]:
        """The account's live volumes, oldest first."""
        return self._rows(
            VolumeRow,
            select(volumes).where(V.account_id == account_id, V.deleted_at.is_(None)).order_by(V.created_at),
        )

    def get(self, volume_id: str, account_id: str) -> VolumeRow | None:
        """One live volume of the account (None for a deleted one or another account's)."""
        return self._first(
            VolumeRow,
            select(volumes).where(V.id == volume_id, V.account_id == account_id, V.deleted_at.is_(None)),
        )

    def resize(self, volume_id: str, size_gb: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(volumes).where(V.id == volume_id).values(size_gb=size_gb))

    def delete(self, volume_id: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(volumes).where(V.id == volume_id).values(deleted_at=now))

    # ---- meter -------------------------------------------------------------------------------------
    def meter_candidates(self) -> Sequence[tuple[VolumeMeterCandidate, float | None, int]]:
        """Volumes with provisioned time not yet billed: live ones, and deleted ones billed short of
        their deletion. Each with its cursor (None: never billed) and carried remainder."""
        q = (
            select(volumes, M.metered_until, M.carry_ms)
            .select_from(volumes.outerjoin(meter_cursors, M.worker_id == V.id))
            .where(or_(V.deleted_at.is_(None), M.metered_until.is_(None), M.metered_until < V.deleted_at))
        )
        rows = self._rows(VolumeMeterCandidate, q)
        return [(r, r["metered_until"], int(r["carry_ms"] or 0)) for r in rows]

    def save_meter(self, volume_id: str, until: float, carry: int, charge: VolumeCharge | None) -> None:
        """Append the charge (if any), debit the balance and move the cursor, in one transaction."""
        with self.engine.begin() as conn:
            if charge is not None and (charge.amount_micros or charge.seconds):
                conn.execute(
                    insert(ledger).values(
                        account_id=charge.account_id,
                        kind="volume",
                        worker_id=charge.volume_id,  # the ledger's subject column; here a volume id
                        gpu_type=f"{charge.size_gb}GB",
                        seconds=charge.seconds,
                        amount_micros=charge.amount_micros,
                        from_at=charge.from_at,
                        to_at=charge.to_at,
                        created_at=charge.to_at,
                    )
                )
                if charge.amount_micros:
                    conn.execute(
                        update(accounts)
                        .where(A.id == charge.account_id)
                        .values(balance_micros=A.balance_micros - charge.amount_micros)
                    )
            res = conn.execute(
                update(meter_cursors)
                .where(M.worker_id == volume_id)
                .values(metered_until=until, carry_ms=carry)
            )
            if not res.rowcount:
                conn.execute(
                    insert(meter_cursors).values(worker_id=volume_id, metered_until=until, carry_ms=carry)
                )

    def billed(self, volume_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Per volume: (seconds billed, micro-dollars charged) so far."""
        if not volume_ids:
            return {}
        q = (
            select(L.worker_id, func.sum(L.seconds), func.sum(L.amount_micros))
            .where(L.kind == "volume", L.worker_id.in_(list(volume_ids)))
            .group_by(L.worker_id)
        )
        with self.reader.connect() as conn:
            return {r[0]: (int(r[1] or 0), int(r[2] or 0)) for r in conn.execute(q).all()}
