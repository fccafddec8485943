"""Runs the loops (lifecycle, reaper, webhooks, meter) on the injected clock. The lifecycle tick runs
when woken by the API or every `tick_s`; nothing else schedules compute. With a lease (`store.leases`),
the loops run only while this process holds it: among processes on one database, one runs them and the
others serve the API and stand by, trying to take the lease every tick."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ember.control.clock import Clock
from ember.control.lifecycle import Lifecycle
from ember.control.meter import Meter
from ember.control.reaper import Reaper
from ember.control.signals import Signals
from ember.core.errors import EmberError
from ember.store.leases import Lease

log = logging.getLogger("ember.runner")


@dataclass
class Intervals:
    tick_s: float = 0.5
    meter_s: float = 5.0
    webhook_s: float = 1.0


class Runner:
    def __init__(
        self,
        lifecycle: Lifecycle,
        reaper: Reaper,
        meter: Meter,
        clock: Clock,
        signals: Signals,
        intervals: Intervals,
        extra: list[Callable[[], Awaitable[None]]] | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.reaper = reaper
        self.meter = meter
        self.clock = clock
        self.signals = signals
        self.intervals = intervals
        self.extra = extra or []
        self._tasks: list[asyncio.Task[None]] = []
        self.lease = lease
        self.leading = lease is None
        self._lease_checked_at: float | None = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._loop("lifecycle", self.lifecycle.tick, self.intervals.tick_s, self.signals.reconcile)
            ),
            asyncio.create_task(self._loop("reaper", self.reaper.tick, self.intervals.tick_s, None)),
            asyncio.create_task(
                self._loop(
                    "webhooks",
                    self.reaper.deliver_webhooks,
                    self.intervals.webhook_s,
                    self.signals.webhooks,
                    # Every finished job wakes this loop; gather a burst of them into one look at the store.
                    debounce_s=0.05,
                )
            ),
            asyncio.create_task(self._loop("meter", self.meter.tick, self.intervals.meter_s, None)),
        ]
        for i, fn in enumerate(self.extra):
            self._tasks.append(
                asyncio.create_task(self._loop(f"extra{i}", fn, self.intervals.tick_s, self.signals.builds))
            )

    async def _loop(
        self,
        name: str,
        fn: Callable[[], Awaitable[object]],
        every_s: float,
        wake: asyncio.Event | None,
        debounce_s: float = 0.0,
    ) -> None:
        while True:
            try:
                if await self._may_run():
                    await fn()
            except EmberError as exc:
                log.warning("loop_error loop=%s error=%s", name, exc)
            except Exception:
                log.exception("loop_crash loop=%s", name)
            if wake is None:
                await self.clock.sleep(every_s)
                continue
            sleeper = asyncio.ensure_future(self.clock.sleep(every_s))
            waiter = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waiter.cancel()
            if debounce_s and wake.is_set():
                await asyncio.sleep(debounce_s)  # real time: a transport matter, not the domain clock
            wake.clear()

    async def _may_run(self) -> bool:
        """Whether this process runs the loops now: it holds the lease (looked at most once a tick)."""
        if self.lease is None:
            return True
        now = asyncio.get_running_loop().time()
        last = self._lease_checked_at
        first = last is None
        if last is None or now - last >= self.intervals.tick_s:
            self._lease_checked_at = now
            was, self.leading = self.leading, await self.lifecycle.store.run(self.lease.held)
            if self.leading and not was:
                log.info("lease_taken: this process runs the loops")
            elif was and not self.leading:
                log.warning("lease_lost: another process on this database runs the loops")
            elif first:
                log.info("standby: another process on this database runs the loops")
        return self.leading

    async def stop(self) -> None:
        """Stop the loops and wait for the launches and stops in flight. Workers keep running (the next
        start re-adopts them). Idempotent: `ember server` calls it before the API closes, the app's
        lifespan again after."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.lifecycle.drain()
        await self.reaper.aclose()
        if self.lease is not None:
            self.lease.release()  # another process takes over at its next tick, not after a timeout
            self.leading = False
