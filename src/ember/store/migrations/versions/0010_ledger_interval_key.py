"""`ux_ledger_interval`: one ledger row per (kind, worker or volume, interval start), so that no span is
billed twice whatever the meters do.

A database that already holds such twins (billed twice by two servers before the meter's cursor was a
compare-and-set) is not changed behind its operator's back: the upgrade stops and says how to find them.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TWINS = (
    "SELECT kind, worker_id, from_at, COUNT(*) FROM ledger WHERE worker_id IS NOT NULL "
    "GROUP BY kind, worker_id, from_at HAVING COUNT(*) > 1"
)


def upgrade() -> None:
    twins = op.get_bind().execute(sa.text(TWINS)).fetchall()
    if twins:
        raise RuntimeError(
            f"the ledger bills {len(twins)} interval(s) more than once; list them with: {TWINS}; "
            "keep one row of each (and credit the account the others) before upgrading"
        )
    op.create_index("ux_ledger_interval", "ledger", ["kind", "worker_id", "from_at"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_ledger_interval", table_name="ledger")
