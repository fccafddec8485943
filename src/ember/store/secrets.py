"""Account secrets: the `accounts.secrets` JSON column (name -> value, sealed by the caller). Values
are returned only to the control plane's own code, never listed by name with values."""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import select, update

from ember.store.db import Repository
from ember.store.schema import accounts

A = accounts.c


def _parsed(column: str | None) -> dict[str, str]:
    """The `secrets` column's names and values; {} when it is empty or unreadable."""
    try:
        data = json.loads(column or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class SecretStore(Repository):
    def get(self, account_id: str) -> dict[str, str]:
        """The account's secrets (name -> value); {} for an unknown account or an unreadable column."""
        with self.reader.connect() as conn:
            return _parsed(conn.execute(select(A.secrets).where(A.id == account_id)).scalar_one_or_none())

    def update(self, account_id: str, changes: Mapping[str, str | None]) -> list[str] | None:
        """Set (or, with None, delete) secrets; returns the sorted names now set, None if no account."""
        with self.engine.begin() as conn:
            row = conn.execute(select(A.secrets).where(A.id == account_id)).first()
            if row is None:
                return None
            data = _parsed(row[0])
            for name, value in changes.items():
                if value is None:
                    data.pop(name, None)
                else:
                    data[name] = value
            conn.execute(update(accounts).where(A.id == account_id).values(secrets=json.dumps(data)))
            return sorted(data)
