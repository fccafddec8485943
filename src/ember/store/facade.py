"""`Store`: one object holding the repositories over one engine, built by the composition root."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy.engine import Engine

from ember.core.jobs import JobState
from ember.core.workers import WorkerState
from ember.store.accounts import AccountStore
from ember.store.db import Database, make_engine, migrate
from ember.store.endpoints import EndpointStore
from ember.store.jobs import Claimed, JobStore
from ember.store.workers import WorkerStore

T = TypeVar("T")


class Store:
    def __init__(self, engine: Engine) -> None:
        self.db = Database(engine)
        self.jobs = JobStore(engine)
        self.workers = WorkerStore(engine)
        self.accounts = AccountStore(engine)
        self.endpoints = EndpointStore(engine)

    def take(
        self, endpoint_id: str, worker_id: str, limit: int, now: float, *, mark_running: bool
    ) -> Sequence[Claimed]:
        """Claim up to `limit` jobs for a worker and, when it got some, make it RUNNING: one transaction."""
        with self.jobs.engine.begin() as conn:
            claimed = self.jobs.claim(endpoint_id, worker_id, limit, now, conn=conn)
            if claimed and mark_running:
                self.workers.transition(
                    worker_id,
                    WorkerState.RUNNING,
                    now,
                    "took a job",
                    conn=conn,
                    idle_since=None,
                    last_seen_at=now,
                )
        return claimed

    def report(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        output_json: str | None,
        error: str | None,
        now: float,
        retention_run_s: float,
        retention_sync_s: float,
    ) -> str:
        """Record a job's result and, when the worker holds nothing more, make it IDLE: one transaction."""
        with self.jobs.engine.begin() as conn:
            outcome = self.jobs.finish(
                job_id,
                worker_id,
                state,
                output_json,
                error,
                now,
                retention_run_s,
                retention_sync_s,
                conn=conn,
            )
            if outcome == "done":
                self.workers.settle_if_idle(worker_id, now, conn=conn)
        return outcome

    @classmethod
    def open(cls, url: str) -> Store:
        engine = make_engine(url)
        migrate(engine)
        return cls(engine)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a blocking store method from async code (inline on SQLite, in a thread otherwise)."""
        return await self.db.run(fn, *args, **kwargs)

    async def run_background(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like `run`, but always in a thread: for long background work (billing) that must not hold up
        requests. SQLite serialises its writers with BEGIN IMMEDIATE and a busy timeout."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.db.dispose()
