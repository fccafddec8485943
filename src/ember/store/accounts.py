"""Accounts, API keys (stored as SHA-256 hashes only), balances and the append-only ledger."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Integer, case, cast, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from ember.store.db import LOCK_BOOTSTRAP, Repository, serialize, transaction
from ember.store.rows import AccountRow, UsageRow
from ember.store.schema import accounts, api_keys, endpoints, ledger, volumes

A = accounts.c
K = api_keys.c
L = ledger.c
DAY_S = 86400


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    account_id: str
    kind: str  # admin | user | worker
    endpoint_id: str | None
    worker_id: str | None


@dataclass(frozen=True)
class Charge:
    account_id: str
    endpoint_id: str
    worker_id: str
    state: str
    worker_type: str
    gpu_type: str | None
    seconds: int
    amount_micros: int
    from_at: float
    to_at: float


@dataclass(frozen=True)
class DayUsage:
    """What one endpoint's workers (kind "usage") or one network volume (kind "volume") were billed
    for intervals starting on one UTC day."""

    account_id: str
    kind: str
    resource_id: str  # the endpoint's id (usage) or the volume's (volume)
    name: str  # its name, kept after it was deleted; "" when no record names it
    day: int  # days since the epoch
    seconds: int
    amount_micros: int


class AccountStore(Repository):
    def create(
        self,
        *,
        id: str,
        name: str,
        is_admin: bool,
        balance_micros: int,
        now: float,
        conn: Connection | None = None,
    ) -> None:
        with transaction(self.engine, conn) as tx:
            tx.execute(
                insert(accounts).values(
                    id=id, name=name, is_admin=is_admin, balance_micros=balance_micros, created_at=now
                )
            )
            if balance_micros:
                tx.execute(
                    insert(ledger).values(
                        account_id=id, kind="credit", amount_micros=-balance_micros, created_at=now
                    )
                )

    def create_admin(self, account_id: str, key: str, balance_micros: int, now: float) -> bool:
        """Create the admin account with `key` unless an admin exists; False when one did. Several
        processes starting at once on one database create one admin between them."""
        with self.engine.begin() as conn:
            serialize(conn, LOCK_BOOTSTRAP)
            if conn.execute(select(A.id).where(A.is_admin.is_(True)).limit(1)).first() is not None:
                return False
            self.create(
                id=account_id, name="admin", is_admin=True, balance_micros=balance_micros, now=now, conn=conn
            )
            self.add_key(key, account_id=account_id, kind="admin", now=now, conn=conn)
            return True

    def get(self, account_id: str) -> AccountRow | None:
        return self._first(AccountRow, select(accounts).where(A.id == account_id))

    def admin(self) -> AccountRow | None:
        return self._first(AccountRow, select(accounts).where(A.is_admin.is_(True)))

    def all(self) -> Sequence[AccountRow]:
        return self._rows(AccountRow, select(accounts))

    def add_key(
        self,
        plain: str,
        *,
        account_id: str,
        kind: str,
        now: float,
        endpoint_id: str | None = None,
        worker_id: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        with transaction(self.engine, conn) as tx:
            tx.execute(
                insert(api_keys).values(
                    key_hash=hash_key(plain),
                    account_id=account_id,
                    kind=kind,
                    endpoint_id=endpoint_id,
                    worker_id=worker_id,
                    created_at=now,
                )
            )

    def resolve_key(self, plain: str) -> KeyInfo | None:
        with self.reader.connect() as conn:
            row = conn.execute(select(api_keys).where(K.key_hash == hash_key(plain))).first()
        if row is None:
            return None
        return KeyInfo(row.account_id, row.kind, row.endpoint_id, row.worker_id)

    def drop_worker_keys(self, worker_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(api_keys).where(K.worker_id == worker_id))

    def credit(self, account_id: str, amount_micros: int, now: float) -> int | None:
        with self.engine.begin() as conn:
            res = conn.execute(
                update(accounts)
                .where(A.id == account_id)
                .values(balance_micros=A.balance_micros + amount_micros)
            )
            if not res.rowcount:
                return None
            conn.execute(
                insert(ledger).values(
                    account_id=account_id, kind="credit", amount_micros=-amount_micros, created_at=now
                )
            )
            return int(conn.execute(select(A.balance_micros).where(A.id == account_id)).scalar_one())

    def record_charges(self, charges: Sequence[Charge], now: float, conn: Connection | None = None) -> None:
        """Append usage rows and debit balances, in one transaction (the caller's, when given).
        The ledger is never rewritten."""
        if not charges:
            return
        if conn is None:
            with self.engine.begin() as own:
                self.record_charges(charges, now, own)
            return
        conn.execute(
            insert(ledger),
            [
                dict(
                    account_id=c.account_id,
                    kind="usage",
                    endpoint_id=c.endpoint_id,
                    worker_id=c.worker_id,
                    state=c.state,
                    worker_type=c.worker_type,
                    gpu_type=c.gpu_type,
                    seconds=c.seconds,
                    amount_micros=c.amount_micros,
                    from_at=c.from_at,
                    to_at=c.to_at,
                    created_at=now,
                )
                for c in charges
            ],
        )
        totals: dict[str, int] = {}
        for c in charges:
            totals[c.account_id] = totals.get(c.account_id, 0) + c.amount_micros
        for account_id, total in totals.items():
            if total:
                conn.execute(
                    update(accounts).where(A.id == account_id).values(balance_micros=A.balance_micros - total)
                )

    def usage(
        self,
        account_id: str,
        *,
        endpoint_id: str | None = None,
        worker_id: str | None = None,
        from_at: float | None = None,
        to_at: float | None = None,
    ) -> list[UsageRow]:
        q = select(
            L.worker_id,
            L.endpoint_id,
            L.state,
            L.worker_type,
            L.gpu_type,
            func.sum(L.seconds).label("seconds"),
            func.sum(L.amount_micros).label("amount_micros"),
        ).where(L.account_id == account_id, L.kind == "usage")
        if endpoint_id:
            q = q.where(L.endpoint_id == endpoint_id)
        if worker_id:
            q = q.where(L.worker_id == worker_id)
        if from_at is not None:
            q = q.where(L.to_at > from_at)
        if to_at is not None:
            q = q.where(L.from_at < to_at)
        q = q.group_by(L.worker_id, L.endpoint_id, L.state, L.worker_type, L.gpu_type).order_by(L.worker_id)
        return self._rows(UsageRow, q)

    def usage_by_day(self, account_ids: Sequence[str] | None, since_at: float) -> list[DayUsage]:
        """Usage and volume charges of these accounts (every account for None) for intervals starting
        at or after `since_at`, summed per account, endpoint or volume, and UTC day of the interval's
        start. One grouped query, then one for the names."""
        if self.engine.dialect.name == "sqlite":
            day = cast(L.from_at / DAY_S, Integer)  # times are positive: truncation is the floor
        else:
            day = cast(func.floor(L.from_at / DAY_S), Integer)
        resource = case((L.kind == "usage", L.endpoint_id), else_=L.worker_id)
        q = select(L.account_id, L.kind, resource, day, func.sum(L.seconds), func.sum(L.amount_micros)).where(
            L.kind.in_(("usage", "volume")), L.from_at >= since_at
        )
        if account_ids is not None:
            q = q.where(L.account_id.in_(list(account_ids)))
        q = q.group_by(L.account_id, L.kind, resource, day)
        with self.reader.connect() as conn:
            rows = conn.execute(q).all()
            ids = {r[2] for r in rows if r[2]}
            names: dict[str, str] = {}
            if ids:
                for table in (endpoints, volumes):
                    names.update(
                        conn.execute(select(table.c.id, table.c.name).where(table.c.id.in_(ids))).all()
                    )
        return [
            DayUsage(
                str(r[0]),
                str(r[1]),
                str(r[2] or ""),
                names.get(r[2], ""),
                int(r[3]),
                int(r[4] or 0),
                int(r[5] or 0),
            )
            for r in rows
        ]
