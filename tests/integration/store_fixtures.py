"""Fresh stores on each real database: SQLite in a temp dir, and PostgreSQL at EMBER_TEST_PG_URL."""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text

from ember.core.workers import WorkerState
from ember.store.facade import Store

PG_URL = os.environ.get("EMBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pg_available() -> tuple[bool, str]:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True, ""
    except Exception as exc:  # any driver or connection error means "not here"
        return False, f"{PG_URL}: {exc.__class__.__name__}"


def reset_pg(url: str = PG_URL) -> None:
    """An empty database at `url`: its `public` schema dropped and made again."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def fresh_pg() -> Store:
    reset_pg()
    return Store.open(PG_URL)


def add_worker(store: Store, state: WorkerState, worker_id: str = "wk-1", *, reason: str = "test") -> None:
    """A launched FLEX worker of endpoint ep-1 (account acct-1, release 1, no GPU) in `state` since 1.0."""
    store.workers.create(
        id=worker_id,
        endpoint_id="ep-1",
        account_id="acct-1",
        release=1,
        type="FLEX",
        state=state,
        now=1.0,
        reason=reason,
        gpu_type=None,
        gpu_count=0,
        gpu_devices="",
        backend="local",
        launched=True,
    )
