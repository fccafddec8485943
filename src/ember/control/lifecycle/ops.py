"""What the lifecycle loop does to one worker: fail it (UNHEALTHY, with backoff), stop it (drain,
SIGTERM, STOPPED, optionally parked warm), release the jobs it held, and run its launches and stops
in the background, one operation at a time per worker. Decides nothing: the steps call these."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence

from ember.backends.base import WarmParking
from ember.control.clock import Clock
from ember.control.fleet import Fleet
from ember.control.lifecycle.config import LifecycleConfig
from ember.control.signals import Signals
from ember.core import backoff
from ember.core.errors import EmberError
from ember.core.jobs import JobState
from ember.core.workers import WorkerState
from ember.store.facade import Store
from ember.store.rows import WorkerRow

log = logging.getLogger("ember.lifecycle")
_S = WorkerState


def ids(w: WorkerRow) -> dict[str, str]:
    """A worker row's ids, for a log line's `extra`."""
    return {"worker_id": w["id"], "endpoint_id": w["endpoint_id"]}


class WorkerOps:
    """The operations, and the loop's bookkeeping of them: `acted` is bumped by every operation that
    changes the store (the tick takes its snapshot again after a step that acted), `ticks` counts the
    ticks begun (the tick bumps it)."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        clock: Clock,
        signals: Signals,
        cfg: LifecycleConfig,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.clock = clock
        self.signals = signals
        self.cfg = cfg
        self.acted = 0
        self.ticks = 0
        self._busy: dict[str, asyncio.Task[None]] = {}  # worker id -> launch/stop in flight
        # Worker id -> job id -> the first ping that left the job out (health's dropped-job check);
        # a stopped worker's entry goes with it.
        self.missing_since: dict[str, dict[str, float]] = {}

    def busy(self, worker_id: str) -> bool:
        """Whether a launch or stop of the worker is in flight (the steps leave it alone meanwhile)."""
        return worker_id in self._busy

    def in_flight(self) -> frozenset[str]:
        """The workers with a launch or stop in flight."""
        return frozenset(self._busy)

    async def fail(self, w: WorkerRow, reason: str, now: float, kill: bool = False) -> None:
        """Mark the worker UNHEALTHY with its next restart after a backoff, release its jobs and stop
        its runtime (at once; `kill`: after a second's grace)."""
        self.acted += 1
        s = self.store
        state = backoff.Backoff(w["failures"], w["first_failure_at"], now if w["failures"] else None)
        state = state.record_failure(now)
        prev = await s.run(
            lambda: s.workers.transition(
                w["id"],
                _S.UNHEALTHY,
                now,
                reason,
                failures=state.failures,
                first_failure_at=state.first_failure_at,
                next_attempt_at=now + backoff.delay_s(state.failures, base_s=self.cfg.backoff_base_s),
                recycle=False,
                idle_since=None,
            )
        )
        if prev is None:
            return
        self.signals.retire(w["id"])  # its held job-takes end: no new job is handed to it
        log.info(
            "worker_transition worker=%s from=%s to=UNHEALTHY reason=%r", w["id"], prev, reason, extra=ids(w)
        )
        await self.release_jobs(w["id"], reason, now)
        backend = self.fleet.for_worker(w)
        if backend is not None:
            self.spawn(w["id"], backend.stop(w["id"], 0.0 if not kill else 1.0))

    async def release_jobs(
        self, worker_id: str, reason: str, now: float, only: Sequence[str] | None = None
    ) -> None:
        """The worker's IN_PROGRESS jobs (or `only` these) go back to the queue, or fail once they used
        up their re-queues."""
        s = self.store
        with self.signals.in_txn():  # "q" for the re-queued jobs' endpoint, "f" for each failed one
            again, failed = await s.run(
                lambda: s.sweeps.release_worker_jobs(
                    worker_id, reason, self.cfg.lost_worker_requeues, now, self.cfg.retention_run_s, only
                )
            )
        for job_id in failed:
            self.signals.job_finished(job_id)
        if not (again or failed):
            return
        row = await s.run(s.workers.get, worker_id)
        endpoint_id = row["endpoint_id"] if row is not None else None
        if endpoint_id is not None:
            self.signals.metrics.jobs_finished(endpoint_id, JobState.FAILED.value, len(failed))
        if again:
            log.info(
                "jobs_requeued worker=%s jobs=%s",
                worker_id,
                ",".join(again),
                extra={"worker_id": worker_id, "endpoint_id": endpoint_id},
            )
            if endpoint_id is not None:
                self.signals.jobs_queued(endpoint_id, len(again))

    async def stop(self, w: WorkerRow, reason: str, park: bool = False) -> None:
        """Stop assigning jobs, then SIGTERM (the SDK drains), then record STOPPED. With `park`, a
        backend that keeps warm runtimes (Docker) may keep the worker's container paused for reuse."""
        self.acted += 1
        s = self.store
        with self.signals.in_txn(("r", w["id"])):
            await s.run(lambda: s.workers.update(w["id"], recycle=True))
        self.signals.retire(w["id"])
        backend = self.fleet.for_worker(w)

        async def go() -> None:
            if backend is not None and w["state"] not in (_S.THROTTLED.value, _S.UNHEALTHY.value):
                try:
                    if park and isinstance(backend, WarmParking):
                        await backend.park(w["id"], self.cfg.stop_grace_s)
                    else:
                        await backend.stop(w["id"], self.cfg.stop_grace_s)
                except EmberError as exc:
                    log.warning("stop_failed worker=%s error=%s", w["id"], exc, extra=ids(w))
            await self.finish_stop(w, reason)

        self.spawn(w["id"], go())

    async def finish_stop(self, w: WorkerRow, reason: str) -> None:
        """Record the worker STOPPED (its runtime is gone), release its jobs and drop its key."""
        self.acted += 1
        s = self.store
        now = self.clock.now()
        prev = await s.run(lambda: s.workers.transition(w["id"], _S.STOPPED, now, reason))
        if prev:
            self.signals.retire(w["id"])
            log.info(
                "worker_transition worker=%s from=%s to=STOPPED reason=%r",
                w["id"],
                prev,
                reason,
                extra=ids(w),
            )
        await self.release_jobs(w["id"], f"worker {w['id']} stopped ({reason})", now)
        await self.drop_keys(w["id"])
        self.signals.presence.forget(w["id"])
        if not s.inline:
            await s.run(s.pings.forget, w["id"])
        self.missing_since.pop(w["id"], None)
        self.signals.reconcile.set()

    async def drop_keys(self, worker_id: str) -> None:
        """The worker's keys stop working, in every process's key cache too."""
        s = self.store
        with self.signals.in_txn(("c", "keys")):
            await s.run(s.accounts.drop_worker_keys, worker_id)
        self.signals.caches_changed("keys")

    def spawn(self, worker_id: str, coro: Coroutine[object, object, None], quiet: bool = False) -> None:
        """Run a launch or stop of the worker in the background (one at a time per worker); the loop
        looks again when it ends, since ticks meanwhile left the worker alone. `quiet`: only when a
        tick began meanwhile."""
        if worker_id in self._busy:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._busy[worker_id] = task
        ticks = self.ticks

        def done(t: asyncio.Task[None]) -> None:
            self._busy.pop(worker_id, None)
            if not t.cancelled() and t.exception() is not None:
                log.error(
                    "worker_op_failed worker=%s error=%r",
                    worker_id,
                    t.exception(),
                    extra={"worker_id": worker_id},
                )
            if not quiet or self.ticks != ticks or t.cancelled() or t.exception() is not None:
                self.signals.reconcile.set()

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for launches and stops in flight (used at shutdown and by tests)."""
        while self._busy:
            await asyncio.gather(*list(self._busy.values()), return_exceptions=True)
