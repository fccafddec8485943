"""The in-memory hand-offs of `control.dispatch`: takers in arrival order, one open take per worker,
wake-ups and releases that end takes empty-handed, results handed to their waiter only."""

from __future__ import annotations

import asyncio

from ember.control.dispatch import Answer, Dispatcher
from ember.store.jobs import Claimed


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_takers_are_served_longest_waiting_first_and_skipped_once_ended() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        a = d.wait_for_job("ep", "wk-a")
        b = d.wait_for_job("ep", "wk-b")
        c = d.wait_for_job("ep", "wk-c")
        a.future.cancel()  # its request ended (timed out) without leaving yet
        first = d.next_taker("ep")
        assert first is b and first.promised
        d.done_waiting("ep", c)
        assert d.next_taker("ep") is None
        assert d.takers("ep") == 0

    run(scenario())


def test_release_ends_every_open_take_of_the_worker() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        take = d.wait_for_job("ep", "wk-a")
        held_done = d.wait_for_job("ep", "wk-a")  # a job-done holding for the next job
        other = d.wait_for_job("ep", "wk-b")
        d.release("wk-a")
        assert take.future.result() is None and held_done.future.result() is None
        assert d.next_taker("ep") is other

    run(scenario())


def test_queued_jobs_wake_as_many_takers_as_jobs_and_count_the_queueing() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        takers = [d.wait_for_job("ep", f"wk-{i}") for i in range(3)]
        d.wake_takers("ep", 2)
        assert [t.future.done() for t in takers] == [True, True, False]
        assert d.queued["ep"] == 1
        d.wake_takers("other")
        assert not takers[2].future.done() and d.queued["other"] == 1

    run(scenario())


def test_a_result_goes_to_its_waiter_once() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        waiting = d.expect_result("job-1")
        d.finished("job-2", '{"id":"job-2"}')
        assert not waiting.done()
        d.finished("job-1", '{"id":"job-1","status":"COMPLETED"}')
        assert waiting.result() == '{"id":"job-1","status":"COMPLETED"}'
        d.finished("job-1", None)  # a second finish (e.g. a late reaper pass) changes nothing
        assert waiting.result() == '{"id":"job-1","status":"COMPLETED"}'

    run(scenario())


def test_a_wait_for_a_job_ends_empty_after_its_time_or_when_its_client_goes() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        assert await d.handed_job("ep", "wk-a", 0.01) is None
        assert d.takers("ep") == 0  # it left the waiters
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(d.handed_job("ep", "wk-a", 30.0, gone))
        await asyncio.sleep(0)
        gone.set_result(None)
        assert await asyncio.wait_for(waiting, 5) is None

    run(scenario())


def test_a_promised_wait_gets_its_job_even_past_its_time() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(d.handed_job("ep", "wk-a", 0.01, gone))
        await asyncio.sleep(0)
        taker = d.next_taker("ep")  # a submit picked it and is writing the job
        assert taker is not None
        gone.set_result(None)
        await asyncio.sleep(0.05)  # its time passes too
        assert not waiting.done()
        taker.future.set_result("the job")
        assert await waiting == "the job"

    run(scenario())


def test_a_result_wait_ends_empty_after_its_time() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        assert await d.result_within(d.expect_result("job-1"), 0.01) is None
        fut = d.expect_result("job-2")
        asyncio.get_running_loop().call_soon(d.finished, "job-2", '{"id":"job-2"}')
        assert await d.result_within(fut, 5) == '{"id":"job-2"}'

    run(scenario())


def test_a_waiter_that_brings_its_answer_is_answered_by_the_hand_over_itself() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        sent: list[object] = []
        take = d.wait_for_job("ep", "wk-a", Answer(lambda job: sent.append(job) or True))
        picked = d.next_taker("ep")
        assert picked is take
        job = Claimed("job-1", "{}", None)
        d.hand(take, job)
        assert sent == [job] and take.future.result() is job  # sent before the waiter ran
        plain = d.wait_for_job("ep", "wk-b")
        d.hand(plain, None)  # no job: nothing is sent
        assert plain.future.result() is None and sent == [job]

        waiting = d.expect_result("job-1", Answer(lambda record: sent.append(record) or True))
        assert d.finished("job-1", '{"id":"job-1"}') is True  # its client was answered here
        assert sent[-1] == '{"id":"job-1"}' and waiting.result() == '{"id":"job-1"}'
        d.expect_result("job-2", Answer(lambda record: sent.append(record) or True))
        assert d.finished("job-2") is False  # no record to send: the waiter reads the store itself
        assert sent[-1] == '{"id":"job-1"}'
        d.expect_result("job-3")
        assert d.finished("job-3", '{"id":"job-3"}') is False  # no answer brought: the waiter sends it'

        def broken(_: object) -> bool:
            raise RuntimeError("the answer failed")

        failing = d.wait_for_job("ep", "wk-c", Answer(broken))
        d.next_taker("ep")
        d.hand(failing, job)  # logged, never raised into the hand-over
        assert failing.future.result() is job

    run(scenario())
