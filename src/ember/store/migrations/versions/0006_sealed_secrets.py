"""Secrets stored in plain text before sealing existed are sealed with the server's key: every value of
`accounts.secrets`, and the git webhook secret (`git.webhookSecret`) in `endpoints.spec` and
`releases.spec`. A value already sealed is left alone, so running this on a database that has none is
a no-op.

The key's sealer comes from `ember.store.db.migrate(engine, sealer=...)` (the server passes the one of
its EMBER_HOME). A database that holds plain secrets and is migrated without one stops here with an
error, rather than being marked done with its secrets still in the clear.

Revision ID: 0006
Revises: 0005
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import context, op

from ember.core.errors import StoreError
from ember.core.secrets import looks_sealed

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _sealed_secrets(raw: str | None, seal: Any) -> str | None:
    """The accounts.secrets text with every plain value sealed; None when nothing changes."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    plain = [k for k, v in data.items() if isinstance(v, str) and not looks_sealed(v)]
    if not plain:
        return None
    for name in plain:
        data[name] = seal(data[name])
    return json.dumps(data)


def _sealed_spec(raw: str | None, seal: Any) -> str | None:
    """The spec text with its plain git webhook secret sealed; None when nothing changes."""
    try:
        data = json.loads(raw or "{}")
    except ValueError:
        return None
    git = data.get("git") if isinstance(data, dict) else None
    if not isinstance(git, dict):
        return None
    secret = git.get("webhookSecret")
    if not isinstance(secret, str) or not secret or looks_sealed(secret):
        return None
    git["webhookSecret"] = seal(secret)
    return json.dumps(data, sort_keys=True)


class _NoKey:
    """Stands in for a missing sealer: finding anything to seal is the error."""

    def __call__(self, _value: str) -> str:
        raise StoreError(
            "this database holds secrets in plain text and was migrated without the server's key: "
            "start `ember server` (or `ember up`) with its EMBER_HOME once to seal them"
        )


def upgrade() -> None:
    sealer = context.config.attributes.get("sealer")
    seal = sealer.seal if sealer is not None else _NoKey()
    conn = op.get_bind()
    accounts = sa.table("accounts", sa.column("id", sa.String), sa.column("secrets", sa.Text))
    for row in conn.execute(sa.select(accounts.c.id, accounts.c.secrets)).all():
        new = _sealed_secrets(row.secrets, seal)
        if new is not None:
            conn.execute(accounts.update().where(accounts.c.id == row.id).values(secrets=new))
    for name, key_type in (("endpoints", sa.String), ("releases", sa.Integer)):
        table = sa.table(name, sa.column("id", key_type), sa.column("spec", sa.Text))
        for row in conn.execute(sa.select(table.c.id, table.c.spec)).all():
            new = _sealed_spec(row.spec, seal)
            if new is not None:
                conn.execute(table.update().where(table.c.id == row.id).values(spec=new))


def downgrade() -> None:
    """Sealed values stay sealed: opening them again would put secrets back in plain text."""
