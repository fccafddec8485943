"""Job indexes that hold only the rows their scans need (queued, running, awaiting a webhook, a stop or
purge), so a job's change of state rewrites fewer index pages; the workers' state index (never used by a
query) goes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

state: sa.ColumnClause[str] = sa.column("state", sa.String)


def _partial(name: str, columns: list[str], where: sa.ColumnElement[bool]) -> None:
    op.create_index(name, "jobs", columns, sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    for name in (
        "ix_jobs_queue",
        "ix_jobs_worker",
        "ix_jobs_state_deadline",
        "ix_jobs_webhook",
        "ix_jobs_state_expires",
        "ix_jobs_purge",
    ):
        op.drop_index(name, table_name="jobs")
    op.drop_index("ix_workers_state", table_name="workers")
    _partial("ix_jobs_queued", ["endpoint_id", "low_priority", "created_at"], state == "IN_QUEUE")
    _partial("ix_jobs_running", ["worker_id"], state == "IN_PROGRESS")
    _partial("ix_jobs_stopping", ["worker_id"], sa.column("stop_requested").is_(True))
    _partial("ix_jobs_webhook_due", ["webhook_next_at"], sa.column("webhook_state") == "PENDING")
    _partial("ix_jobs_purgeable", ["purge_at"], sa.column("purge_at").is_not(None))
    op.create_index("ix_jobs_endpoint", "jobs", ["endpoint_id", "created_at"])


def downgrade() -> None:
    for name in (
        "ix_jobs_queued",
        "ix_jobs_running",
        "ix_jobs_stopping",
        "ix_jobs_webhook_due",
        "ix_jobs_purgeable",
        "ix_jobs_endpoint",
    ):
        op.drop_index(name, table_name="jobs")
    op.create_index("ix_workers_state", "workers", ["state"])
    op.create_index("ix_jobs_queue", "jobs", ["endpoint_id", "state", "low_priority", "created_at"])
    op.create_index("ix_jobs_worker", "jobs", ["worker_id", "state"])
    op.create_index("ix_jobs_state_deadline", "jobs", ["state", "deadline_at"])
    op.create_index("ix_jobs_webhook", "jobs", ["webhook_state", "webhook_next_at"])
    op.create_index("ix_jobs_state_expires", "jobs", ["state", "expires_at"])
    op.create_index("ix_jobs_purge", "jobs", ["purge_at"])
