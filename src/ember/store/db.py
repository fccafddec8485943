"""Engine creation (SQLite in WAL with BEGIN IMMEDIATE, or PostgreSQL) and Alembic migrations at start.

SQLite runs its statements on the caller's thread (they take microseconds); PostgreSQL statements are
sent to a thread pool by `Database.run` so the event loop never blocks on the network.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool

from ember.core.errors import StoreError

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, NORMAL sync (durable against process crashes) and
    immediate write transactions so that a claim never races another writer."""
    if url.startswith("sqlite"):
        if url not in ("sqlite://", "sqlite:///:memory:"):
            path = url.split("///", 1)[1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "isolation_level": None, "timeout": 30},
            poolclass=StaticPool if url in ("sqlite://", "sqlite:///:memory:") else None,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Writes take the write lock up front, so a claim never races another writer; plain reads
            # run in autocommit (WAL readers never block and need no transaction of their own).
            if conn.get_execution_options().get("ember_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def writer(engine: Engine) -> Engine:
    """The engine that repositories write through (`begin()`); `connect()` on the plain one reads."""
    return engine.execution_options(ember_write=True)


class Repository:
    """Base of the store's repositories: writes go through `self.engine.begin()` (the writer), reads
    through `_all` / `_one` on the plain engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = writer(engine)
        self.reader = engine

    def _all(self, query: Any, params: dict[str, Any] | None = None) -> Sequence[RowMapping]:
        with self.reader.connect() as conn:
            return conn.execute(query, params).mappings().all()

    def _one(self, query: Any, params: dict[str, Any] | None = None) -> RowMapping | None:
        with self.reader.connect() as conn:
            return conn.execute(query, params).mappings().first()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with writer(engine).begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"database migration failed: {exc}") from exc


def transaction(engine: Engine, conn: Connection | None) -> AbstractContextManager[Connection]:
    """The caller's transaction when it passes one (so that several repositories write atomically),
    else a new one."""
    return nullcontext(conn) if conn is not None else engine.begin()


class Database:
    """The engine plus how to call blocking store code from async code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.is_sqlite:
            return fn(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def dispose(self) -> None:
        self.engine.dispose()
