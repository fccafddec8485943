"""In-process wake-ups between the API and the loops: jobs arrived, a job finished, a stop is wanted,
the autoscaler should look now. Losing a wake-up only delays work until the next tick, never loses it:
the store is the truth, these only shorten waits. Jobs and results themselves are handed over by the
`Dispatcher`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from ember.control.dispatch import Dispatcher
from ember.control.metrics import Instruments
from ember.control.presence import Presence
from ember.store import outbox


class _Waiters:
    """Futures keyed by a name; `wake(name)` resolves every waiter registered under it."""

    def __init__(self) -> None:
        self._by_key: dict[str, set[asyncio.Future[None]]] = defaultdict(set)

    async def wait(self, key: str, timeout_s: float) -> bool:
        """Wait until woken or `timeout_s` passes; True when woken."""
        if timeout_s <= 0:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_key[key].add(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._by_key.get(key)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._by_key[key]

    def wake(self, key: str) -> None:
        for fut in list(self._by_key.get(key, ())):
            if not fut.done():
                fut.set_result(None)


class Signals:
    def __init__(self) -> None:
        self.dispatch = Dispatcher()  # open job-takes and runsync waiters
        self.stops = _Waiters()  # key: worker id: a job-stop is pending
        # Hosts' agents: key "host:<id>": an order for that host was queued; "order:<id>": answered.
        self.orders = _Waiters()
        self.scale = asyncio.Event()  # the autoscaler should decide now
        self.webhooks = asyncio.Event()  # a webhook became due
        self.reconcile = asyncio.Event()  # the lifecycle loop should act now
        self.builds = asyncio.Event()  # a release waits to be built
        self.presence = Presence()  # workers' pings and failed checks, live workers per endpoint
        # Counters and histograms of this process (jobs finished, model downloads), served at /metrics.
        self.metrics = Instruments()
        # This process's name in the events it sends the other processes on its PostgreSQL database
        # (`in_txn`, `control.broadcast`); None when there are none to tell (SQLite).
        self.origin: str | None = None
        self._forgetting: list[Callable[[str], None]] = []

    def in_txn(self, *events: tuple[str, str]) -> AbstractContextManager[None]:
        """Around store calls whose change the other processes must hear of: `events` ((kind, id)
        pairs), and those the store adds as it finds them (a job finished, jobs re-queued), are sent
        in the transaction that makes the change (`store.outbox`), never before it and never lost
        after it. The event method called after the store call then tells only this process."""
        return outbox.sending(self.origin, events) if self.origin is not None else nullcontext()

    # Each event below wakes this process's waiters; the other processes hear of it from the store's
    # transaction (`in_txn`), and the broadcast applies their events here through these same methods.
    def jobs_queued(self, endpoint_id: str, count: int = 1) -> None:
        self.dispatch.wake_takers(endpoint_id, count)

    def jobs_submitted(self, endpoint_id: str) -> None:
        """A client queued a job: wake the takes waiting on its endpoint, and the scaler when the
        endpoint has no worker (the first job on an endpoint at zero starts one at once)."""
        self.jobs_queued(endpoint_id)
        if not self.presence.has_live(endpoint_id):
            self.poke_scaler()

    def job_finished(
        self,
        job_id: str,
        record: str | None = None,
        *,
        webhook: bool = True,
    ) -> bool:
        """A job reached a final state: hand `record` (its final record's JSON text, when known) to its
        runsync waiter, and let the webhook loop look (unless the job is known to have no webhook).
        True when the waiter's client was sent the record at once (`Dispatcher.finished`)."""
        answered = self.dispatch.finished(job_id, record)
        if webhook:
            self.webhooks.set()
        return answered

    def stop_wanted(self, worker_id: str) -> None:
        """A job held by `worker_id` should stop (cancelled, timed out, expired): end its job-stop poll
        now, if the worker holds it open here."""
        self.stops.wake(worker_id)

    def retire(self, worker_id: str) -> None:
        """A worker takes no new job: end its held job-take now."""
        self.stops.wake("retire:" + worker_id)
        self.dispatch.release(worker_id)

    def host_ordered(self, host_id: str) -> None:
        """An order for the host was queued: end its agent's held order poll, if it is held here."""
        self.orders.wake("host:" + host_id)

    def order_answered(self, order_id: int) -> None:
        """A host's agent answered an order: wake whoever waits for it here."""
        self.orders.wake(f"order:{order_id}")

    def on_caches_changed(self, forget: Callable[[str], None]) -> None:
        """`forget(what)` is called when cached `what` may be stale (the API's key and endpoint caches)."""
        self._forgetting.append(forget)

    def caches_changed(self, what: str) -> None:
        """Cached `what` ("keys", "endpoints", "sessions") may be stale: every cache here forgets it."""
        for forget in self._forgetting:
            forget(what)

    def poke_scaler(self) -> None:
        self.scale.set()
        self.reconcile.set()
