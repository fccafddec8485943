"""Worker events indexed by worker and time, in place of by worker alone: the meter reads a worker's
events since its cursor (and the one before it), not its whole history, so its work per tick stays the
same however long the worker has lived.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_worker_events_worker", "worker_events", ["worker_id", "at"])
    op.drop_index("ix_worker_events_worker_id", table_name="worker_events")


def downgrade() -> None:
    op.create_index("ix_worker_events_worker_id", "worker_events", ["worker_id"])
    op.drop_index("ix_worker_events_worker", table_name="worker_events")
