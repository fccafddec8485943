"""The web console's tables: `console_sessions` (signed-in browsers and one-time sign-in links, by the
hash of their token) and `scale_events` (each change of an endpoint's desired worker count or of its
reason, which the console shows as the scaler's decisions).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "scale_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("workers", sa.Integer(), nullable=False),
    )
    op.create_index("ix_scale_events_endpoint", "scale_events", ["endpoint_id", "at"])
    op.create_index("ix_worker_events_endpoint", "worker_events", ["endpoint_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_worker_events_endpoint", table_name="worker_events")
    op.drop_index("ix_scale_events_endpoint", table_name="scale_events")
    op.drop_table("scale_events")
    op.drop_table("console_sessions")
