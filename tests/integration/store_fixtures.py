"""Fresh stores on each real database: SQLite in a temp dir, and PostgreSQL at EMBER_TEST_PG_URL."""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text

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


def fresh_pg() -> Store:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return Store.open(PG_URL)
