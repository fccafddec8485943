"""`worker_pings.failed_check` and `failed_at`: a failed start-up check a worker reported to one
control-plane process, for the one that runs the lifecycle.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("worker_pings") as batch:
        batch.add_column(sa.Column("failed_check", sa.Text()))
        batch.add_column(sa.Column("failed_at", sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("worker_pings") as batch:
        batch.drop_column("failed_at")
        batch.drop_column("failed_check")
