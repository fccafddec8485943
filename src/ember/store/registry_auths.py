"""Accounts' container-registry logins: name, username and the password as sealed by the caller (this
module never sees one in the clear). Every read is scoped to one account."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from ember.store.db import Repository
from ember.store.rows import RegistryAuthRow
from ember.store.schema import registry_auths

R = registry_auths.c


class RegistryAuthStore(Repository):
    def create(
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

    def list(self, account_id: str) -> Sequence[RegistryAuthRow]:
        """The account's registry auths, by name."""
        q = select(registry_auths).where(R.account_id == account_id).order_by(R.name)
        return self._rows(RegistryAuthRow, q)

    def get(self, auth_id: str, account_id: str) -> RegistryAuthRow | None:
        """One registry auth of the account (None for another account's: ids never leak)."""
        q = select(registry_auths).where(R.id == auth_id, R.account_id == account_id)
        return self._first(RegistryAuthRow, q)

    def delete(self, auth_id: str, account_id: str) -> bool:
        """Remove it; False when the account has no such auth."""
        with self.engine.begin() as conn:
            res = conn.execute(delete(registry_auths).where(R.id == auth_id, R.account_id == account_id))
            return bool(res.rowcount)
