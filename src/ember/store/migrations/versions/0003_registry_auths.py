"""Accounts' container-registry logins (RunPod's containerRegistryAuth), named by templates and endpoints.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_auths",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=False),
        sa.Column("password_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name", name="uq_registry_auths_account_name"),
    )
    with op.batch_alter_table("registry_auths", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registry_auths_account_id"), ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("registry_auths", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registry_auths_account_id"))
    op.drop_table("registry_auths")
