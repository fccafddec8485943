"""`Store`: one object holding the repositories over one engine, built by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from ember.store.accounts import AccountStore
from ember.store.db import Database, make_engine, migrate
from ember.store.endpoints import EndpointStore
from ember.store.jobs import JobStore
from ember.store.workers import WorkerStore

T = TypeVar("T")


class Store:
    def __init__(self, engine: Engine) -> None:
        self.db = Database(engine)
        self.jobs = JobStore(engine)
        self.workers = WorkerStore(engine)
        self.accounts = AccountStore(engine)
        self.endpoints = EndpointStore(engine)

    @classmethod
    def open(cls, url: str) -> Store:
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a blocking store method from async code (inline on SQLite, in a thread otherwise)."""
        return await self.db.run(fn, *args, **kwargs)

    def close(self) -> None:
        self.db.dispose()
