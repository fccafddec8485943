"""Account secrets (the `accounts.secrets` JSON column), accounts' registry auths (their passwords as
sealed by the caller: this module never sees one in the clear) and the network-volume meter: its cursor
per volume and its ledger rows (`kind="volume"`). Secret values are returned only to the control
plane's own code, never listed by name with values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ember.store.db import Repository
from ember.store.rows import RegistryAuthRow, VolumeMeterCandidate
from ember.store.schema import accounts, ledger, meter_cursors, registry_auths, volumes

A = accounts.c
L = ledger.c
M = meter_cursors.c
R = registry_auths.c
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


class ResourceStore(Repository):
    # ---- secrets ---------------------------------------------------------------------------------
    def secrets(self, account_id: str) -> dict[str, str]:
        """The account's secrets (name -> value); {} for an unknown account or an unreadable column."""
        with self.reader.connect() as conn:
            raw = conn.execute(select(A.secrets).where(A.id == account_id)).scalar_one_or_none()
        try:
            data = json.loads(raw or "{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def update_secrets(self, account_id: str, changes: Mapping[str, str | None]) -> list[str] | None:
        """Set (or, with None, delete) secrets; returns the sorted names now set, None if no account."""
        with self.engine.begin() as conn:
            raw = conn.execute(select(A.secrets).where(A.id == account_id)).first()
            if raw is None:
                return None
            try:
                data = json.loads(raw[0] or "{}")
            except ValueError:
                data = {}
            if not isinstance(data, dict):
                data = {}
            for name, value in changes.items():
                if value is None:
                    data.pop(name, None)
                else:
                    data[name] = value
            conn.execute(update(accounts).where(A.id == account_id).values(secrets=json.dumps(data)))
            return sorted(data)

    # ---- registry auths ----------------------------------------------------------------------------
    def create_registry_auth(
        self, *, id: str, account_id: str, name: str, username: str, password_sealed: str, now: float
    ) -> bool:
        """Add a registry auth; False (and nothing stored) when the account already has one so named."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(registry_auths).values(
                        id=id,
                        account_id=account_id,
                        name=name,
                        username=username,
                        password_sealed=password_sealed,
                        created_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    def registry_auths(self, account_id: str) -> list[RegistryAuthRow]:
        """The account's registry auths, by name."""
        q = select(registry_auths).where(R.account_id == account_id).order_by(R.name)
        return self._rows(RegistryAuthRow, q)

    def registry_auth(self, auth_id: str, account_id: str) -> RegistryAuthRow | None:
        """One registry auth of the account (None for another account's: ids never leak)."""
        q = select(registry_auths).where(R.id == auth_id, R.account_id == account_id)
        return self._first(RegistryAuthRow, q)

    def delete_registry_auth(self, auth_id: str, account_id: str) -> bool:
        """Remove it; False when the account has no such auth."""
        with self.engine.begin() as conn:
            res = conn.execute(delete(registry_auths).where(R.id == auth_id, R.account_id == account_id))
            return bool(res.rowcount)

    # ---- volume meter ----------------------------------------------------------------------------
    def volume_meter_candidates(self) -> list[tuple[VolumeMeterCandidate, float | None, int]]:
        """Volumes with provisioned time not yet billed: live ones, and deleted ones billed short of
        their deletion. Each with its cursor (None: never billed) and carried remainder."""
        q = (
            select(volumes, M.metered_until, M.carry_ms)
            .select_from(volumes.outerjoin(meter_cursors, M.worker_id == V.id))
            .where(or_(V.deleted_at.is_(None), M.metered_until.is_(None), M.metered_until < V.deleted_at))
        )
        rows = self._rows(VolumeMeterCandidate, q)
        return [(r, r["metered_until"], int(r["carry_ms"] or 0)) for r in rows]

    def save_volume_meter(
        self, volume_id: str, until: float, carry: int, charge: VolumeCharge | None
    ) -> None:
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

    def volume_billed(self, volume_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
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
