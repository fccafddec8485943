"""Indexes for the reaper's scans (ttl expiry, result purge), which ran over the whole jobs table.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_state_expires", "jobs", ["state", "expires_at"])
    op.create_index("ix_jobs_purge", "jobs", ["purge_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_purge", table_name="jobs")
    op.drop_index("ix_jobs_state_expires", table_name="jobs")
