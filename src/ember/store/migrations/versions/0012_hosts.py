"""`hosts` and `host_orders`: GPU machines whose agents connect in, and what they are asked to do.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("slots", sa.Text(), nullable=False),
        sa.Column("backends", sa.String(200), nullable=False),
        sa.Column("observed", sa.Text(), nullable=False),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("last_seen_at", sa.Float()),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "host_orders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("host_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("result", sa.Text()),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float()),
    )
    op.create_index("ix_host_orders_host", "host_orders", ["host_id", "state", "id"])


def downgrade() -> None:
    op.drop_index("ix_host_orders_host", "host_orders")
    op.drop_table("host_orders")
    op.drop_table("hosts")
