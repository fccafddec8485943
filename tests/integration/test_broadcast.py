"""Wake-ups between processes on one PostgreSQL database (`control.broadcast`, LISTEN/NOTIFY): what one
process's `Signals` says reaches the waiters of another (two broadcasts here, on real connections)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from ember.control.broadcast import Broadcast
from ember.control.signals import Signals
from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, pg_available


@asynccontextmanager
async def two_processes() -> AsyncIterator[tuple[Signals, Signals]]:
    ok, why = pg_available()
    need("postgres", ok, why)
    here, there = Signals(), Signals()
    casts = [Broadcast(PG_URL, here), Broadcast(PG_URL, there)]
    for cast in casts:
        cast.start()
    await asyncio.sleep(0.5)  # both are listening
    try:
        yield here, there
    finally:
        for cast in casts:
            await cast.stop()


async def _within(seconds: float, waiting: Awaitable[object]) -> object:
    return await asyncio.wait_for(waiting, seconds)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_a_queued_job_wakes_a_take_held_by_another_process() -> None:
    async def scenario() -> None:
        async with two_processes() as (here, there):
            there.presence.counted({"ep-1": 1})
            waiting = asyncio.ensure_future(there.dispatch.handed_job("ep-1", "wk-1", 30.0))
            await asyncio.sleep(0.05)
            here.jobs_submitted("ep-1")
            assert await _within(5, waiting) is None  # woken empty-handed: it looks in the store
            assert there.dispatch.queued["ep-1"] == 1

    _run(scenario)


def test_a_finished_job_reaches_a_runsync_held_by_another_process_with_its_record() -> None:
    async def scenario() -> None:
        async with two_processes() as (here, there):
            result = there.dispatch.expect_result("sync-1")
            here.job_finished("sync-1", '{"id":"sync-1","status":"COMPLETED","output":{"n":1}}')
            text = await _within(5, there.dispatch.result_within(result, 30.0))
            assert text == '{"id":"sync-1","status":"COMPLETED","output":{"n":1}}'

    _run(scenario)


def test_a_stop_reaches_a_job_stop_poll_held_by_another_process() -> None:
    async def scenario() -> None:
        async with two_processes() as (here, there):
            polling = asyncio.ensure_future(there.stops.wait("wk-1", 30.0))
            await asyncio.sleep(0.05)
            here.stop_wanted("wk-1")
            assert await _within(5, polling) is True

    _run(scenario)


def test_a_retired_worker_takes_nothing_on_any_process() -> None:
    async def scenario() -> None:
        async with two_processes() as (here, there):
            waiting = asyncio.ensure_future(there.dispatch.handed_job("ep-1", "wk-1", 30.0))
            await asyncio.sleep(0.05)
            here.retire("wk-1")
            assert await _within(5, waiting) is None
            assert there.dispatch.takers("ep-1") == 0

    _run(scenario)


def test_a_process_does_not_act_on_its_own_events_twice() -> None:
    async def scenario() -> None:
        async with two_processes() as (here, _there):
            here.presence.counted({"ep-1": 1})
            here.jobs_submitted("ep-1")
            await asyncio.sleep(0.5)  # its own notification came back and was skipped
            assert here.dispatch.queued["ep-1"] == 1

    _run(scenario)
