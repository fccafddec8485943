"""`worker_pings`: each worker's latest heartbeat and the jobs it said it holds, for the control-plane
process that runs the lifecycle when the worker pings another.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_pings",
        sa.Column("worker_id", sa.String(64), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("held", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_pings")
