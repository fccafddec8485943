"""Wake-ups between processes on one PostgreSQL database (`control.broadcast`, LISTEN/NOTIFY, sent by
`store.outbox` in the transaction that makes the change): a change one process makes in the store,
inside `Signals.in_txn`, reaches the waiters of another (two broadcasts here, on real connections); a
transaction that rolls back tells nobody; a process does not act on its own events twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from ember.control.broadcast import Broadcast
from ember.control.signals import Signals
from ember.core.errors import StoreError
from ember.core.jobs import JobState
from ember.core.workers import WorkerState
from ember.store.facade import Store
from ember.store.jobs import NewJob
from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, add_worker, fresh_pg, pg_available


@asynccontextmanager
async def two_processes() -> AsyncIterator[tuple[Store, Signals, Signals]]:
    ok, why = pg_available()
    need("postgres", ok, why)
    store = fresh_pg()
    here, there = Signals(), Signals()
    casts = [Broadcast(PG_URL, here), Broadcast(PG_URL, there)]
    for cast in casts:
        cast.start()
    await asyncio.sleep(0.5)  # both are listening
    try:
        yield store, here, there
    finally:
        for cast in casts:
            await cast.stop()
        store.close()


def job(job_id: str = "job-1") -> NewJob:
    return NewJob(job_id, "ep-1", "acct-1", '{"n": 1}', None, None, False, 60_000, 600_000, False)


async def _within(seconds: float, waiting: Awaitable[object]) -> object:
    return await asyncio.wait_for(waiting, seconds)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_a_queued_job_wakes_a_take_held_by_another_process() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, there):
            there.presence.counted({"ep-1": 1})
            waiting = asyncio.ensure_future(there.dispatch.handed_job("ep-1", "wk-1", 30.0))
            await asyncio.sleep(0.05)
            with here.in_txn(("q", "ep-1")):
                await store.run(store.jobs.submit, job(), 1.0)
            assert await _within(5, waiting) is None  # woken empty-handed: it looks in the store
            assert there.dispatch.queued["ep-1"] == 1
            assert store.jobs.get("job-1") is not None  # which has the job by then

    _run(scenario)


def test_a_finished_job_reaches_a_runsync_held_by_another_process_with_its_record() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, there):
            add_worker(store, WorkerState.RUNNING)
            store.jobs.submit(job("sync-1"), 1.0, worker_id="wk-1")
            result = there.dispatch.expect_result("sync-1")
            with here.in_txn():  # the store adds "f" with the record it wrote
                report = await store.run(
                    store.report, "sync-1", "wk-1", JobState.COMPLETED, '{"n":2}', None, 2.0, 60.0, 60.0
                )
            text = await _within(5, there.dispatch.result_within(result, 30.0))
            assert text == report.record and isinstance(text, str) and '"output":{"n":2}' in text

    _run(scenario)


def test_a_cancelled_running_job_stops_its_worker_s_poll_on_another_process() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, there):
            add_worker(store, WorkerState.RUNNING)
            store.jobs.submit(job(), 1.0, worker_id="wk-1")
            polling = asyncio.ensure_future(there.stops.wait("wk-1", 30.0))
            finished = there.dispatch.expect_result("job-1")
            await asyncio.sleep(0.05)
            with here.in_txn():
                await store.run(store.jobs.cancel, "job-1", "acct-1", "ep-1", 2.0, 60.0)
            assert await _within(5, polling) is True
            assert (
                await _within(5, there.dispatch.result_within(finished, 30.0)) is None
            )  # no record: read it

    _run(scenario)


def test_a_retired_worker_takes_nothing_on_any_process() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, there):
            add_worker(store, WorkerState.IDLE)
            waiting = asyncio.ensure_future(there.dispatch.handed_job("ep-1", "wk-1", 30.0))
            await asyncio.sleep(0.05)
            with here.in_txn(("r", "wk-1")):
                await store.run(lambda: store.workers.update("wk-1", recycle=True))
            assert await _within(5, waiting) is None
            assert there.dispatch.takers("ep-1") == 0

    _run(scenario)


def test_a_transaction_that_rolls_back_tells_nobody() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, there):
            store.jobs.submit(job(), 1.0)
            with here.in_txn(("q", "ep-1")), pytest.raises(StoreError):
                await store.run(store.jobs.submit, job(), 2.0)  # the same id again: refused
            await asyncio.sleep(0.5)
            assert there.dispatch.queued.get("ep-1", 0) == 0

    _run(scenario)


def test_a_process_does_not_act_on_its_own_events_twice() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, _there):
            here.presence.counted({"ep-1": 1})
            with here.in_txn(("q", "ep-1")):
                await store.run(store.jobs.submit, job(), 1.0)
            here.jobs_submitted("ep-1")
            await asyncio.sleep(0.5)  # its own notification came back and was skipped
            assert here.dispatch.queued["ep-1"] == 1

    _run(scenario)


def test_a_dropped_worker_key_is_forgotten_by_every_process_s_cache() -> None:
    async def scenario() -> None:
        async with two_processes() as (store, here, there):
            forgotten: asyncio.Queue[str] = asyncio.Queue()
            there.on_caches_changed(forgotten.put_nowait)
            store.accounts.create(id="acct-1", name="a", is_admin=False, balance_micros=0, now=1.0)
            store.accounts.add_key(
                "wk_secret", account_id="acct-1", kind="worker", endpoint_id="ep-1", worker_id="wk-1", now=1.0
            )
            with here.in_txn(("c", "keys")):
                await store.run(store.accounts.drop_worker_keys, "wk-1")
            assert await _within(5, forgotten.get()) == "keys"
            assert store.accounts.resolve_key("wk_secret") is None

    _run(scenario)
