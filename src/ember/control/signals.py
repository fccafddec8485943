"""In-process wake-ups between the API and the loops: jobs arrived, a job finished, a stop is wanted,
the autoscaler should look now. Losing a wake-up only delays work until the next tick, never loses it:
the store is the truth, these only shorten waits. Jobs and results themselves are handed over by the
`Dispatcher`."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

from ember.control.dispatch import Dispatcher
from ember.control.metrics import Instruments
from ember.control.presence import Presence


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
        # Sends an event (kind, id) to the other processes on the database (`control.broadcast`); None
        # when there are none to tell (SQLite).
        self.publish: Callable[[str, str], None] | None = None

    # Each event below also goes to the other processes (`publish`), unless `tell_others` is False: the
    # broadcast applies the others' events here with it so.
    def jobs_queued(self, endpoint_id: str, count: int = 1, *, tell_others: bool = True) -> None:
        self.dispatch.wake_takers(endpoint_id, count)
        if tell_others and self.publish is not None:
            self.publish("q", endpoint_id)

    def jobs_submitted(self, endpoint_id: str, *, tell_others: bool = True) -> None:
        """A client queued a job: wake the takes waiting on its endpoint, and the scaler when the
        endpoint has no worker (the first job on an endpoint at zero starts one at once)."""
        self.jobs_queued(endpoint_id, tell_others=tell_others)
        if not self.presence.has_live(endpoint_id):
            self.poke_scaler()

    def job_finished(
        self,
        job_id: str,
        record: str | None = None,
        *,
        webhook: bool = True,
        tell_others: bool = True,
    ) -> None:
        """A job reached a final state: hand `record` (its final record's JSON text, when known) to its
        runsync waiter, and let the webhook loop look (unless the job is known to have no webhook)."""
        self.dispatch.finished(job_id, record)
        if webhook:
            self.webhooks.set()
        if tell_others and self.publish is not None:
            self.publish("f", job_id if record is None else f"{job_id} {record}")

    def stop_wanted(self, worker_id: str, *, tell_others: bool = True) -> None:
        """A job held by `worker_id` should stop (cancelled, timed out, expired): end its job-stop poll
        now, wherever the worker holds it open."""
        self.stops.wake(worker_id)
        if tell_others and self.publish is not None:
            self.publish("s", worker_id)

    def retire(self, worker_id: str, *, tell_others: bool = True) -> None:
        """A worker takes no new job: end its held job-take now."""
        self.stops.wake("retire:" + worker_id)
        self.dispatch.release(worker_id)
        if tell_others and self.publish is not None:
            self.publish("r", worker_id)

    def host_ordered(self, host_id: str, *, tell_others: bool = True) -> None:
        """An order for the host was queued: end its agent's held order poll, wherever it is held."""
        self.orders.wake("host:" + host_id)
        if tell_others and self.publish is not None:
            self.publish("h", host_id)

    def order_answered(self, order_id: int, *, tell_others: bool = True) -> None:
        """A host's agent answered an order: wake whoever waits for it, in whichever process."""
        self.orders.wake(f"order:{order_id}")
        if tell_others and self.publish is not None:
            self.publish("o", str(order_id))

    def poke_scaler(self) -> None:
        self.scale.set()
        self.reconcile.set()
