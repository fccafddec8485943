"""In-memory hand-offs on the job path, so that a job waits on no poll and no re-read:

- a job-take waiting on an endpoint is handed the next job submitted there (the submit records it as
  taken by that worker in the same transaction that writes it; on SQLite, where store calls run on
  this loop, that commit comes in the loop turn right after the take's answer leaves, so that it
  overlaps the worker's run instead of delaying it);
- a runsync waiting on a job is handed the job's final record by whoever finished it.

A waiter may bring its answer (`Answer`): the hand-off then sends it at once, in the code that hands
over, instead of waking the waiter to send it a turn of the loop later (`api.serving.ANSWER`).

The store stays the truth: a hand-off that is lost (a process dies) leaves a job the store recovers like
any other, and a waiter woken with nothing looks in the store itself."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ember.store.jobs import Claimed

T = TypeVar("T")
V = TypeVar("V")
log = logging.getLogger("ember.control")


class Answer(Generic[V]):
    """How a waiter's client is answered with what it waits for (a job, a final record), by whoever
    hands it over: `send(value)` returns True when the answer went out (False: the client is gone, or
    was answered already). Never raises into the caller."""

    __slots__ = ("send",)

    def __init__(self, send: Callable[[V], bool]) -> None:
        self.send = send

    def __call__(self, value: V) -> bool:
        try:
            return self.send(value)
        except Exception:
            log.exception("could not answer early")
            return False


def _end(fut: asyncio.Future[T | None]) -> None:
    """Resolve `fut` empty-handed (None) unless it already has its value."""
    if not fut.done():
        fut.set_result(None)


def _end_unless_promised(taker: Taker) -> None:
    if not taker.promised:
        _end(taker.future)


def _end_if_gone(taker: Taker, _gone: asyncio.Future[None]) -> None:
    _end_unless_promised(taker)


@dataclass(eq=False)
class Taker:
    """A job-take held open by `worker_id`. Once `promised` (picked by a submit), it waits for its
    future without a timeout: the submit is writing the job and resolves it with the job, or with None."""

    worker_id: str
    promised: bool = False
    future: asyncio.Future[Claimed | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    answer: Answer[Claimed] | None = None  # sends the job to the worker as it is handed over (`hand`)


class Dispatcher:
    def __init__(self) -> None:
        self._takers: dict[str, deque[Taker]] = {}
        self._by_worker: dict[str, set[Taker]] = {}
        self._results: dict[str, asyncio.Future[str | None]] = {}
        self._answers: dict[str, Answer[str]] = {}  # of the runsync waiters that brought one
        # Per endpoint, how many times queued jobs woke its takers (a count of wake-ups, not of jobs): a
        # take that looked at the store before a queueing and starts waiting after it (possible when
        # store calls run on threads) sees the count moved and looks again instead of waiting.
        self.queued: dict[str, int] = {}
        # How many times workers were retired here (`release`): a take that moves on to wait again after
        # this moved makes sure its worker still takes jobs (`HandOff`): a submit hands a job to any
        # take that waits.
        self.retirements = 0

    # ---- job-takes -------------------------------------------------------------------------------
    def wait_for_job(self, endpoint_id: str, worker_id: str, answer: Answer[Claimed] | None = None) -> Taker:
        taker = Taker(worker_id, answer=answer)
        self._takers.setdefault(endpoint_id, deque()).append(taker)
        self._by_worker.setdefault(worker_id, set()).add(taker)
        return taker

    async def handed_job(
        self,
        endpoint_id: str,
        worker_id: str,
        timeout_s: float,
        gone: asyncio.Future[None] | None = None,
        answer: Answer[Claimed] | None = None,
    ) -> Claimed | None:
        """Wait up to `timeout_s` for a submit to hand `worker_id` a job on the endpoint (or for `gone`,
        its client hanging up, or a wake-up that says: look in the store). The job, or None. Once a
        submit has picked this take (`Taker.promised`), it waits for the job whatever else happens.
        With `answer`, the job was sent to the worker as it was handed over (`hand`)."""
        taker = self.wait_for_job(endpoint_id, worker_id, answer)
        timer = taker.future.get_loop().call_later(timeout_s, _end_unless_promised, taker)
        ended = functools.partial(_end_if_gone, taker)
        if gone is not None:
            gone.add_done_callback(ended)
        try:
            return await taker.future
        finally:
            timer.cancel()
            if gone is not None:
                gone.remove_done_callback(ended)
            self.done_waiting(endpoint_id, taker)

    def done_waiting(self, endpoint_id: str, taker: Taker) -> None:
        waiting = self._takers.get(endpoint_id)
        if waiting is not None:
            try:
                waiting.remove(taker)
            except ValueError:
                pass
            if not waiting:
                del self._takers[endpoint_id]
        self._forget(taker)

    def next_taker(self, endpoint_id: str) -> Taker | None:
        """The longest-waiting open take on the endpoint, removed from the waiters; None when none."""
        waiting = self._takers.get(endpoint_id)
        while waiting:
            taker = waiting.popleft()
            self._forget(taker)
            if not taker.future.done():
                if not waiting:
                    del self._takers[endpoint_id]
                taker.promised = True
                return taker
        self._takers.pop(endpoint_id, None)
        return None

    @staticmethod
    def hand(taker: Taker, job: Claimed | None) -> None:
        """Resolve a picked take (`next_taker`) with `job` (None: it gets none), sending the job to its
        worker now when the take brought its answer."""
        taker.future.set_result(job)
        if job is not None and taker.answer is not None:
            taker.answer(job)

    def _forget(self, taker: Taker) -> None:
        mine = self._by_worker.get(taker.worker_id)
        if mine is not None:
            mine.discard(taker)
            if not mine:
                del self._by_worker[taker.worker_id]

    def wake_takers(self, endpoint_id: str, count: int | None = None) -> None:
        """Jobs were queued: end waiting takes empty-handed so they look in the store."""
        self.queued[endpoint_id] = self.queued.get(endpoint_id, 0) + 1
        woken = 0
        while count is None or woken < count:
            taker = self.next_taker(endpoint_id)
            if taker is None:
                return
            taker.future.set_result(None)
            woken += 1

    def release(self, worker_id: str) -> None:
        """A worker takes no new job (retiring, stopping): its open takes end empty-handed."""
        self.retirements += 1
        for taker in self._by_worker.pop(worker_id, set()):
            if not taker.future.done() and not taker.promised:
                taker.future.set_result(None)

    def takers(self, endpoint_id: str) -> int:
        return sum(1 for t in self._takers.get(endpoint_id, ()) if not t.future.done())

    # ---- runsync results -------------------------------------------------------------------------
    def expect_result(self, job_id: str, answer: Answer[str] | None = None) -> asyncio.Future[str | None]:
        """A future given the job's final record (`finished`); with `answer`, the record is also sent
        to the waiter's client at once."""
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._results[job_id] = fut
        if answer is not None:
            self._answers[job_id] = answer
        return fut

    @staticmethod
    async def result_within(fut: asyncio.Future[str | None], timeout_s: float) -> str | None:
        """What `fut` (from `expect_result`) is given within `timeout_s`: the final record's JSON text
        (`core.wire.final_text`), or None (woken
        without it, or the time passed: the caller looks in the store)."""
        timer = fut.get_loop().call_later(timeout_s, _end, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def forget_result(self, job_id: str) -> None:
        self._results.pop(job_id, None)
        self._answers.pop(job_id, None)

    def finished(self, job_id: str, record: str | None = None) -> bool:
        """The job reached a final state; `record` is its final record's JSON text when known (else the
        waiter reads it). True when its runsync client was sent `record` here (its `Answer`)."""
        fut = self._results.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.set_result(record)
            answer = self._answers.pop(job_id, None)
            if answer is not None and record is not None:
                return answer(record)
        return False
