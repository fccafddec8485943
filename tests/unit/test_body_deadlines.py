"""Body reads share one deadline timer (`api.deps.BodyDeadlines`): a read past its deadline is cut and
says so, a read in time is untouched, and a cancellation from elsewhere still cancels."""

from __future__ import annotations

import asyncio

import pytest

from ember.api.deps import BodyDeadlines


def test_a_read_past_its_deadline_is_cut_and_marked_expired() -> None:
    async def scenario() -> None:
        deadlines = BodyDeadlines()
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with deadlines.watch(0.05) as read:
            await never
        assert read.expired
        # The timer stops once nothing is being read.
        await asyncio.sleep(BodyDeadlines.SWEEP_S * 2)
        assert deadlines._timer is None

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_reads_in_time_are_untouched() -> None:
    async def scenario() -> None:
        deadlines = BodyDeadlines()
        for _ in range(3):
            with deadlines.watch(30) as read:
                await asyncio.sleep(0)
            assert not read.expired

    asyncio.run(scenario())


def test_a_cancellation_from_elsewhere_goes_on() -> None:
    async def reader(deadlines: BodyDeadlines, started: asyncio.Event) -> None:
        with deadlines.watch(30):
            started.set()
            await asyncio.sleep(30)

    async def scenario() -> None:
        deadlines = BodyDeadlines()
        started = asyncio.Event()
        task = asyncio.ensure_future(reader(deadlines, started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
