"""The job hand-off, end to end, as the job path's routes use it:

- `submit`: a new job goes straight to a job-take waiting on its endpoint (recorded as taken by that
  worker) or into the queue, waking the takes and the scaler;
- `run_sync`: submit, then wait for the job's final record (handed over by whoever finished it);
- `take`: a worker's job-take claims queued jobs, or is held until a submit hands it one;
- `hold_for_jobs`: a job-done that asked for more and found none is held like a take.

The waiting lines are the `Dispatcher`'s (in memory); the store stays the truth. The routes only read
HTTP in and write HTTP out around these calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ember.control.clock import Clock
from ember.control.dispatch import Answer
from ember.control.signals import Signals
from ember.core.errors import StoreError
from ember.core.jobs import TERMINAL, JobState
from ember.core.workers import WorkerState
from ember.store.facade import Report, Store
from ember.store.jobs import Claimed, NewJob
from ember.store.rows import JobRow, WorkerRow
from ember.store.workers import TAKING

_FINAL = frozenset(s.value for s in TERMINAL)
# A long wait is cut into slices this long: a waiter then looks in the store (a wake-up may be lost
# when a process dies; the store never is).
_SLICE_S = 5.0
_RESULT_SLICE_S = 1.0
# The longest a runsync job handed to a worker waits to be recorded with its result (`submit`).
DEFER_S = 0.005
# uvloop's timers count whole milliseconds and may fire up to one early by the clock the store reads:
# deferred writes that close to their time are committed then, not waited for with a timer due at once
# (which would spin the loop until that millisecond passes).
_TIMER_SLACK_S = 0.001
log = logging.getLogger("ember.control")

Gone = Callable[[], Awaitable[None]]  # returns when the client hangs up
# Called once when a take's first look found nothing, before it waits: the worker's row after it.
FirstEmpty = Callable[[WorkerRow, float], Awaitable[WorkerRow]]


class Limits(Protocol):
    @property
    def take_hold_s(self) -> float: ...  # how long a job-take (or a job-done asking for more) is held

    @property
    def settle_grace_s(self) -> float: ...  # see `hold_for_jobs`

    @property
    def retention_run_s(self) -> float: ...  # how long a /run job's record is kept once final

    @property
    def retention_sync_s(self) -> float: ...  # the same for a runsync job


def hold_clock() -> float:
    """Monotonic time for how long a request is held. Holding is a transport matter measured in real
    time; what is recorded (job and worker times) comes from the injected clock. (The clock the event
    loop's timers use, read without looking the loop up: on Python 3.11 that costs a system call.)"""
    return time.monotonic()


class HandOff:
    def __init__(self, store: Store, signals: Signals, clock: Clock, limits: Limits) -> None:
        self.store = store
        self.signals = signals
        self.dispatch = signals.dispatch
        self.clock = clock
        self.limits = limits
        self.defer_s = DEFER_S  # how long a deferred hand-over or queueing waits at most to be written
        # The runsync jobs handed over with their record deferred (`submit`), while their client waits:
        # `Dispatcher.retirements` and the endpoint's `queued_count` at the hand-over.
        self._handed: dict[str, tuple[int, int]] = {}
        self._flushing: asyncio.Handle | None = None  # the one timer that commits deferred writes
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # the loop it was set on
        self._flush_at = 0.0  # when it is due, in that loop's time

    # ---- clients ---------------------------------------------------------------------------------
    async def submit(self, job: NewJob) -> None:
        """Write the job (on disk when this returns): straight to a job-take waiting on its endpoint
        when there is one, else into the queue."""
        now = self.clock.now()
        store = self.store
        taker = self.dispatch.next_taker(job.endpoint_id)
        if taker is not None and store.inline:
            # This process is the only one: a worker that stops taking jobs is retired here
            # (`Signals.retire`) as its new state is recorded, which ends its takes, so a take still
            # waiting is one its worker may be handed. Hand the job over first and commit it while the
            # worker runs it: the take's answer leaves now (in the loop's next turn when the take
            # brought no `Answer`), this commit in that next turn, before the worker's result can be
            # read (the loop reads sockets only between turns, and runs the result's route after this).
            # A crash in between loses a job no one was told of; the worker's result for it is then
            # refused as unknown.
            self.dispatch.hand(taker, Claimed(job.id, job.input_json, job.extra_json))
            if job.is_sync:
                self._handed[job.id] = (self.dispatch.retirements, self.queued_count(job.endpoint_id))
            await asyncio.sleep(0)  # the take's answer goes out first (if the take brought none)
            if not job.is_sync:
                store.hand_over(job, taker.worker_id, now, delivered=True)
            else:
                # No one has been told of a runsync job before its answer: it is recorded with its
                # result, one commit for both, when that comes within `DEFER_S` (else on its own then).
                store.hand_over_later(job, taker.worker_id, now)
                self._flush_soon()
            return
        if taker is not None:
            try:
                with self.signals.in_txn():  # queued instead (the worker no longer takes): "q"
                    handed = await store.run(store.hand_over, job, taker.worker_id, now)
            except BaseException:
                self.dispatch.hand(taker, None)
                raise
            self.dispatch.hand(taker, Claimed(job.id, job.input_json, job.extra_json) if handed else None)
            if handed:
                return
        elif store.inline and job.is_sync:
            # Queued with the transaction that claims it (or within `DEFER_S`): no one has been told of
            # a runsync job before its answer, as above.
            store.queue_later(job, now)
            self._flush_soon()
        else:
            with self.signals.in_txn(("q", job.endpoint_id)):
                await store.run(store.jobs.submit, job, now)
        self.signals.jobs_submitted(job.endpoint_id)

    def _flush_soon(self) -> None:
        """Commit the deferred writes once the oldest has waited `defer_s`, unless a write transaction
        takes them first (the usual case under load: each result's claim does). One timer at a time."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = now + self.defer_s
        if self._flushing is not None and self._flush_loop is loop:
            if now <= self._flush_at <= due:
                return
            self._flushing.cancel()
        self._flush_after(loop, self.defer_s)

    def _flush_after(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        self._flushing = loop.call_later(delay_s, self._flush)
        self._flush_loop, self._flush_at = loop, loop.time() + delay_s

    def _flush(self) -> None:
        self._flushing = None
        try:
            left = self.store.flush_due(max(0.0, self.defer_s - _TIMER_SLACK_S))
        except StoreError:
            log.exception("could not record the jobs handed over")
            return
        if left > 0:  # what waits now was deferred after the timer was set
            self._flush_after(asyncio.get_running_loop(), left)

    async def run_sync(
        self, job: NewJob, wait_s: float, answer: Answer[str] | None = None
    ) -> str | JobRow | None:
        """Submit `job` and wait up to `wait_s` for it to end: its final record as JSON text when it was
        handed over (with `answer`, that record was sent to the client already), else its row as the
        store has it when the wait ends (final or not), or None when the record is gone (expired)."""
        dispatch = self.dispatch
        # Before the job exists, so its finish can't be missed.
        result = dispatch.expect_result(job.id, answer)
        try:
            await self.submit(job)
            deadline = hold_clock() + wait_s
            while True:
                slice_s = max(0.0, min(deadline - hold_clock(), _RESULT_SLICE_S))
                final = await dispatch.result_within(result, slice_s)
                if final is not None:
                    return final
                # Woken without the record (or a slice passed): the store says how the job stands.
                result = dispatch.expect_result(job.id, answer)
                row = await self.store.run(self.store.jobs.get, job.id)
                if row is None or row["state"] in _FINAL or hold_clock() >= deadline:
                    return row
        finally:
            dispatch.forget_result(job.id)
            self._handed.pop(job.id, None)

    def report_answered(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        output_json: str | None,
        error: str | None,
        now: float,
        take: int,
    ) -> tuple[Report, int, int] | None:
        """The result of a runsync job whose client waits here and whose hand-over is still deferred:
        recorded after its hand-over in the same deferred transaction (`Store.finish_later`), so the
        client's answer (the final record returned) goes out before any write. The answer then precedes
        the commit by up to `DEFER_S`: a crash in between loses the record of a job whose client holds
        its result (a job `/run` acknowledged is never deferred). Also returns `queued_count` and
        `Dispatcher.retirements` as they were at the hand-over, for `hold_for_jobs`: the queue was empty
        then (a take waited). None when the result is to be `Store.report`ed."""
        handed = self._handed.get(job_id)
        if handed is None:
            return None
        report = self.store.finish_later(
            job_id,
            worker_id,
            state,
            output_json,
            error,
            now,
            self.limits.retention_run_s,
            self.limits.retention_sync_s,
            settle=take == 0,
        )
        if report is None:
            return None
        retired, seen = handed
        return report, seen, retired

    # ---- workers ---------------------------------------------------------------------------------
    async def take(
        self,
        endpoint_id: str,
        worker: WorkerRow,
        limit: int,
        gone: Gone,
        first_empty: FirstEmpty,
        answer: Answer[Claimed] | None = None,
    ) -> Sequence[Claimed]:
        """Up to `limit` jobs for the worker: queued ones, or the first submitted while the take is
        held (`Limits.take_hold_s`; with `answer`, that one was sent to the worker as it was handed
        over). Empty when none came, the client hung up, or the worker may not take jobs (then the take
        is still held, until it is retired or the hold ends)."""
        store, dispatch = self.store, self.dispatch
        worker_id = worker["id"]
        deadline = hold_clock() + self.limits.take_hold_s
        retired = dispatch.retirements  # `worker` was read after this
        first = True
        watching: asyncio.Future[None] | None = None
        try:
            while True:
                if worker["state"] not in TAKING or worker["recycle"]:
                    # Outdated, stopping or recycled workers take no new job: hold, then say "nothing".
                    await self.signals.stops.wait("retire:" + worker_id, max(0.0, deadline - hold_clock()))
                    return []
                now = self.clock.now()
                queued_before = self.queued_count(endpoint_id)
                was_running = worker["state"] == WorkerState.RUNNING.value
                claimed = await store.run(
                    store.take, endpoint_id, worker_id, limit, now, mark_running=not was_running
                )
                if claimed:
                    return claimed
                if first:
                    first = False
                    worker = await first_empty(worker, now)
                remaining = deadline - hold_clock()
                if remaining <= 0:
                    return []
                if self.queued_count(endpoint_id) != queued_before:
                    continue  # a job was queued while this take looked: look again
                if dispatch.retirements != retired:  # perhaps this worker: look at it again
                    retired = dispatch.retirements
                    fresh = await store.run(store.workers.get, worker_id)
                    worker = fresh if fresh is not None else worker
                    continue
                if watching is None:
                    watching = asyncio.ensure_future(gone())
                handed = await dispatch.handed_job(
                    endpoint_id, worker_id, min(remaining, _SLICE_S), watching, answer
                )
                if handed is not None:
                    return [handed]
                if watching.done():
                    return []
                fresh = await store.run(store.workers.get, worker_id)
                worker = fresh if fresh is not None else worker
        finally:
            if watching is not None:
                watching.cancel()

    def queued_count(self, endpoint_id: str) -> int:
        """How many times jobs were queued on the endpoint in this process (or told of by another):
        read before a look at the store, a change after it means jobs came since (`hold_for_jobs`)."""
        return self.dispatch.queued.get(endpoint_id, 0)

    async def hold_for_jobs(
        self,
        endpoint_id: str,
        worker_id: str,
        limit: int,
        finished_at: float,
        gone: Gone,
        seen: int,
        retired: int,
        answer: Answer[Claimed] | None = None,
    ) -> Sequence[Claimed]:
        """A job-done that asked for its next jobs (take=N) and found none queued is held like a
        job-take: the next job submitted may be handed to it. Ends empty when the hold ends, the client
        hangs up or the worker may no longer take jobs. The worker was left RUNNING (`Store.report`): a
        job handed to it within `Limits.settle_grace_s` keeps it so; otherwise it is settled IDLE as
        of `finished_at`. `seen`: `queued_count` as it was before the job-done's own claim; `retired`:
        `Dispatcher.retirements` as it was before the result said the worker may take more. With
        `answer`, a job handed over while it is held is sent to the worker at once."""
        store, dispatch = self.store, self.dispatch
        start = hold_clock()
        deadline, grace_end = start + self.limits.take_hold_s, start + self.limits.settle_grace_s
        watching: asyncio.Future[None] | None = None  # watched once the grace has passed
        unsettled = True  # RUNNING with no job
        # `seen` is the endpoint's queued count when the store was last asked: a change means jobs were
        # queued since (through this process or another, `control.broadcast`). It is read again before
        # each claim, so a job queued during one is claimed by the next instead of waiting out the hold.
        try:
            while (remaining := deadline - hold_clock()) > 0 and not (
                watching is not None and watching.done()
            ):
                if dispatch.retirements != retired:  # perhaps this worker: is it still taking jobs?
                    retired = dispatch.retirements
                    if not await store.run(store.workers.taking, worker_id):
                        return []
                if self.queued_count(endpoint_id) == seen:
                    wait_s = min(remaining, max(0.0, grace_end - hold_clock()) if unsettled else _SLICE_S)
                    handed = await dispatch.handed_job(endpoint_id, worker_id, wait_s, watching, answer)
                    if handed is not None:
                        unsettled = False
                        return [handed]
                if unsettled and hold_clock() >= grace_end:
                    unsettled = False
                    await store.run(store.workers.settle_late, worker_id, finished_at)
                if (count := self.queued_count(endpoint_id)) != seen:
                    # Claim at once (`take` checks that the worker may still take jobs); one claimed
                    # within the grace keeps the worker RUNNING, as a job handed over does.
                    seen = count
                    claimed = await store.run(
                        store.take,
                        endpoint_id,
                        worker_id,
                        limit,
                        self.clock.now(),
                        mark_running=True,
                        queued=True,
                    )
                    if claimed:
                        unsettled = False
                        return claimed
                if unsettled:
                    continue  # wait out the grace, then settle
                if watching is None:
                    watching = asyncio.ensure_future(gone())
                if watching.done() or not await store.run(store.workers.taking, worker_id):
                    return []
            return []
        finally:
            if watching is not None:
                watching.cancel()
            if unsettled:
                await store.run(store.workers.settle_late, worker_id, finished_at)
