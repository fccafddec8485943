"""Tables. Times are float seconds since the epoch from the injected clock (`*_at`); money is integer
micro-dollars (`*_micros`); JSON payloads are stored as text exactly as they will be sent."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from ember.core.jobs import JobState
from ember.core.workers import WorkerState, WorkerType

metadata = MetaData()


E = TypeVar("E", bound=StrEnum)


class EnumText(TypeDecorator[E]):
    """A state column: stored as its text (the SQL and the migrations see a plain VARCHAR), read back as
    the `StrEnum` member, so the store's rows carry `JobState`/`WorkerState` values, not strings."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int = 16) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        # Any text may be compared with a state (a filter a client sent): it matches no row, no error.
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("balance_micros", BigInteger, nullable=False, default=0),
    Column("secrets", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_hash", String(64), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # admin | user | worker
    Column("endpoint_id", String(64)),
    Column("worker_id", String(64)),
    Column("created_at", Float, nullable=False),
)

templates = Table(
    "templates",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("data", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# An account's container-registry logins (RunPod's containerRegistryAuth); templates and endpoints name one
# by id in their `containerRegistryAuthId`. The password is sealed with the server's key (never plain).
registry_auths = Table(
    "registry_auths",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("username", String(200), nullable=False),
    Column("password_sealed", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("account_id", "name", name="uq_registry_auths_account_name"),
)

endpoints = Table(
    "endpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("spec", Text, nullable=False),
    Column("release", Integer, nullable=False, default=0),  # serving release number
    Column("release_key", String(64), nullable=False, default=""),
    Column("desired_workers", Integer, nullable=False, default=0),
    Column("scale_reason", String(200), nullable=False, default=""),
    Column("status_message", Text, nullable=False, default=""),
    Column("scale_memory", Text, nullable=False, default="{}"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("deleted_at", Float),
)

releases = Table(
    "releases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint_id", String(64), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    Column("status", String(16), nullable=False),  # BUILDING | READY | FAILED
    Column("image", String(500)),
    Column("commit", String(64)),
    Column("log", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("endpoint_id", String(64), nullable=False, index=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("release", Integer, nullable=False),
    Column("type", EnumText(WorkerType, 8), nullable=False),
    Column("state", EnumText(WorkerState), nullable=False),
    Column("state_since", Float, nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("gpu_type", String(64)),
    Column("gpu_count", Integer, nullable=False, default=0),
    Column("gpu_devices", String(200), nullable=False, default=""),
    Column("host", String(200), nullable=False, default="local"),
    Column("backend", String(16), nullable=False, default="local"),
    Column("launched_at", Float),
    Column("last_seen_at", Float),
    Column("idle_since", Float),
    Column("failures", Integer, nullable=False, default=0),
    Column("first_failure_at", Float),
    Column("next_attempt_at", Float),
    Column("recycle", Boolean, nullable=False, default=False),  # stopPod: take no new jobs
    Column("created_at", Float, nullable=False),
)

# Each worker's latest heartbeat, where several control-plane processes share the database: a worker
# pings whichever process the public address sends it to, and the one that runs the lifecycle reads them
# all here. `held`: the ids of the jobs it said it holds, comma-separated. (One process keeps them in
# memory: `control.presence`.)
worker_pings = Table(
    "worker_pings",
    metadata,
    Column("worker_id", String(64), primary_key=True),
    Column("at", Float, nullable=False),
    Column("held", Text, nullable=False, default=""),
    # A failed start-up check the worker reported (it exits next), and when: read by the lifecycle.
    Column("failed_check", Text),
    Column("failed_at", Float),
)

worker_events = Table(
    "worker_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("worker_id", String(64), nullable=False),
    Column("endpoint_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("from_state", EnumText(WorkerState)),
    Column("to_state", EnumText(WorkerState), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", Text, nullable=False, default=""),
)
Index("ix_worker_events_endpoint", worker_events.c.endpoint_id, worker_events.c.at)
Index("ix_worker_events_worker", worker_events.c.worker_id, worker_events.c.at)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(80), primary_key=True),
    Column("endpoint_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("state", EnumText(JobState), nullable=False),
    Column("input", Text, nullable=False),  # JSON text of the `input` value
    Column("extra", Text),  # JSON text of other job fields passed to the worker (webhook, s3Config, policy)
    Column("webhook", Text),
    Column("low_priority", Boolean, nullable=False, default=False),
    Column("execution_timeout_ms", Integer, nullable=False),
    Column("is_sync", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("started_at", Float),
    Column("deadline_at", Float),
    Column("completed_at", Float),
    Column("purge_at", Float),
    Column("worker_id", String(64)),
    Column("output", Text),  # JSON text, NULL when the worker sent no output
    Column("error", Text),
    Column("requeues", Integer, nullable=False, default=0),
    Column("retried", Integer, nullable=False, default=0),
    Column("stream_next", Integer, nullable=False, default=0),
    Column("stream_read", Integer, nullable=False, default=0),
    Column("stop_requested", Boolean, nullable=False, default=False),
    Column("webhook_state", String(16)),  # PENDING | DELIVERED | FAILED
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_next_at", Float),
    Column("webhook_error", Text),  # why the last delivery failed (shown on the job); NULL once delivered
)


def _partial(name: str, *columns: Column[object], where: ColumnElement[bool]) -> Index:
    return Index(name, *columns, sqlite_where=where, postgresql_where=where)


# Each job index holds only the rows its scans look at (queued jobs, running ones, those awaiting a
# webhook, a stop or their purge), so a job changing state rewrites few index pages: every page a commit
# touches is written to the log again. Running jobs are few, so scanning all of them is cheap.
_partial(
    "ix_jobs_queued",
    jobs.c.endpoint_id,
    jobs.c.low_priority,
    jobs.c.created_at,
    where=jobs.c.state == "IN_QUEUE",
)
_partial("ix_jobs_running", jobs.c.worker_id, where=jobs.c.state == "IN_PROGRESS")
_partial("ix_jobs_stopping", jobs.c.worker_id, where=jobs.c.stop_requested.is_(True))
_partial("ix_jobs_webhook_due", jobs.c.webhook_next_at, where=jobs.c.webhook_state == "PENDING")
_partial("ix_jobs_purgeable", jobs.c.purge_at, where=jobs.c.purge_at.is_not(None))
Index("ix_jobs_endpoint", jobs.c.endpoint_id, jobs.c.created_at)

# A client's idempotency key for /run (header `Idempotency-Key`), per account and endpoint: the job it
# queued. Kept a day (`core.jobs.IDEMPOTENCY_WINDOW_S`), longer than the job's own record may be.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("endpoint_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("job_id", String(80), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)

job_stream = Table(
    "job_stream",
    metadata,
    Column("job_id", String(80), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("output", Text, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # usage | credit | volume
    Column("endpoint_id", String(64)),
    Column("worker_id", String(64)),
    Column("state", String(16)),
    Column("worker_type", String(8)),
    Column("gpu_type", String(64)),
    Column("seconds", BigInteger, nullable=False, default=0),
    Column("amount_micros", BigInteger, nullable=False),  # positive = charge, negative = credit
    Column("from_at", Float),
    Column("to_at", Float),
    Column("created_at", Float, nullable=False),
)
# One charge per worker (or volume) and interval start: a span billed twice, by two meters or a retried
# one, fails instead of charging again (the meter's cursor compare-and-set already keeps it from
# happening; this is the database saying so too). Credits have no worker: NULLs never collide.
Index("ux_ledger_interval", ledger.c.kind, ledger.c.worker_id, ledger.c.from_at, unique=True)

meter_cursors = Table(
    "meter_cursors",
    metadata,
    Column("worker_id", String(64), primary_key=True),
    Column("metered_until", Float, nullable=False),
    Column("carry_ms", Integer, nullable=False, default=0),
)

volumes = Table(
    "volumes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("size_gb", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("deleted_at", Float),
)

settings_kv = Table(
    "settings_kv",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# Signed-in console browsers (kind "session") and one-time sign-in links (kind "link"), by token hash.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False, index=True),
    Column("kind", String(8), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Each change of an endpoint's desired worker count or reason: the scaler's decisions, for the console.
scale_events = Table(
    "scale_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("desired", Integer, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("queued", Integer, nullable=False),
    Column("workers", Integer, nullable=False),
)
Index("ix_scale_events_endpoint", scale_events.c.endpoint_id, scale_events.c.at)

# GPU machines whose agents (`ember agent`) connect in. `token_hash`: the sha256 of the host's token
# (shown once, when the host is added). `slots`: its GPUs by type (JSON: {type: [device ids]}),
# `backends`: the worker runtimes it offers (comma-separated), `observed`: the workers it said it runs,
# all as of its latest report (`last_seen_at`). `state`: NEW (never reported), READY or LOST.
hosts = Table(
    "hosts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("slots", Text, nullable=False),
    Column("backends", String(200), nullable=False),
    Column("observed", Text, nullable=False),
    Column("hostname", String(200), nullable=False),
    Column("last_seen_at", Float),
    Column("created_at", Float, nullable=False),
)

# What the control plane asks of a host's agent (launch, stop, exec, logs), in order; an agent takes
# its QUEUED orders (SENT), and answers each with its `result` (DONE). In the database so that any
# replica may hand them to the agent and read the answer.
host_orders = Table(
    "host_orders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(8), nullable=False),
    Column("result", Text),
    Column("created_at", Float, nullable=False),
    Column("sent_at", Float),
)
Index("ix_host_orders_host", host_orders.c.host_id, host_orders.c.state, host_orders.c.id)
