"""Wake-ups between the processes on one PostgreSQL database, over LISTEN/NOTIFY.

Each process's `Signals` wake only its own waiters: a job queued through one process must also reach a
job-take held open on another, and a job finished on one must reach a `runsync` waiting on another.
`Broadcast` sends each such event as a NOTIFY right after the commit that made it (from a connection of
its own, so no request waits on it) and applies the other processes' events to this process's `Signals`.

A lost event only delays work, never loses it (the store is the truth; every waiter looks at the store
again within its poll slice): a process that dies between a commit and its NOTIFY costs the others one
slice. Events: `q <endpoint>` jobs were queued; `f <job> [record]` a job reached a final state (with its
final record when it fits in a notification, so a runsync waiting elsewhere answers without reading the
store); `r <worker>` a worker takes no new job; `s <worker>` a job the worker holds should stop; `h <host>` an
order was queued for a host's agent; `o <order>` an agent answered an order.
SQLite has one process, and no broadcast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

import psycopg

from ember.control.signals import Signals

log = logging.getLogger("ember.broadcast")

CHANNEL = "ember_events"
PAYLOAD_MAX_BYTES = 7900  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
RETRY_S = (0.5, 1.0, 2.0, 5.0)


def libpq_url(url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL (`postgresql+psycopg://…` -> `postgresql://…`)."""
    scheme, sep, rest = url.partition("://")
    return "postgresql" + sep + rest if scheme.startswith("postgresql") else url


class Broadcast:
    def __init__(self, url: str, signals: Signals) -> None:
        self.url = libpq_url(url)
        self.signals = signals
        self.origin = secrets.token_hex(6)  # this process: its own events come back and are skipped
        self._out: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def publish(self, kind: str, ident: str) -> None:
        """Send an event to the other processes (queued here, sent by the sender task). A final record
        too large for a notification is left out: the waiter reads it from the store."""
        payload = f"{self.origin} {kind} {ident}"
        if len(payload.encode()) > PAYLOAD_MAX_BYTES:
            payload = f"{self.origin} {kind} {ident.partition(' ')[0]}"
        self._out.put_nowait(payload)

    def start(self) -> None:
        """Connect (sending and listening) and hook into this process's `Signals`."""
        self.signals.publish = self.publish
        self._tasks = [asyncio.create_task(self._keep(run)) for run in (self._send, self._listen)]

    async def stop(self) -> None:
        self.signals.publish = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []

    async def _keep(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run a connection's loop; reconnect after a failure, backing off."""
        failures = 0
        while True:
            try:
                await run()
                failures = 0
            except (psycopg.Error, OSError) as exc:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("broadcast_error error=%s retry_in_s=%s", exc, delay)
                await asyncio.sleep(delay)

    async def _send(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            while True:
                first = await self._out.get()
                batch = [first]
                while not self._out.empty() and len(batch) < 100:
                    batch.append(self._out.get_nowait())
                for payload in batch:
                    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            async for note in conn.notifies():
                self.apply(note.payload)

    def apply(self, payload: str) -> None:
        """Act on another process's event here (never sent on again)."""
        origin, _, rest = payload.partition(" ")
        kind, _, ident = rest.partition(" ")
        if origin == self.origin or not ident:
            return
        s = self.signals
        if kind == "q":
            # The takes held here look in the store; at zero workers the loop holder starts one.
            s.jobs_submitted(ident, tell_others=False)
        elif kind == "f":
            job_id, _, record = ident.partition(" ")
            # Without the record, a waiter reads it.
            s.job_finished(job_id, record or None, tell_others=False)
        elif kind == "r":
            s.retire(ident, tell_others=False)
        elif kind == "s":
            s.stop_wanted(ident, tell_others=False)
        elif kind == "h":
            s.host_ordered(ident, tell_others=False)
        elif kind == "o" and ident.isdigit():
            s.order_answered(int(ident), tell_others=False)
