"""Wake-ups between the processes on one PostgreSQL database, over LISTEN/NOTIFY.

Each process's `Signals` wake only its own waiters: a job queued through one process must also reach a
job-take held open on another, and a job finished on one must reach a `runsync` waiting on another.
Each event is sent in the store transaction that makes its change (`Signals.in_txn`, `store.outbox`):
PostgreSQL delivers it at that commit, so none arrives before the change and none is lost after it.
`Broadcast` listens and applies the other processes' events to this process's `Signals`.

A lost event (while a listener reconnects) only delays work, never loses it: the store is the truth
and every waiter looks at it again within its poll slice. Events: `q <endpoint>` jobs were queued;
`f <job> [record]` a job reached a final state (with its final record when it fits in a notification,
so a runsync waiting elsewhere answers without reading the store); `r <worker>` a worker takes no new
job; `s <worker>` a job the worker holds should stop; `h <host>` an order was queued for a host's
agent; `o <order>` an agent answered an order; `c <what>` cached keys, endpoints or sessions changed.
SQLite has one process, and no broadcast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable

import psycopg

from ember.control.signals import Signals
from ember.store.outbox import CHANNEL

log = logging.getLogger("ember.broadcast")

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
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Listen, and name this process in the events its store transactions send (`Signals.in_txn`)."""
        self.signals.origin = self.origin
        self._tasks = [asyncio.create_task(self._keep(self._listen))]

    async def stop(self) -> None:
        self.signals.origin = None
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
            s.jobs_submitted(ident)
        elif kind == "f":
            job_id, _, record = ident.partition(" ")
            # Without the record, a waiter reads it.
            s.job_finished(job_id, record or None)
        elif kind == "r":
            s.retire(ident)
        elif kind == "s":
            s.stop_wanted(ident)
        elif kind == "c":
            s.caches_changed(ident)
        elif kind == "h":
            s.host_ordered(ident)
        elif kind == "o" and ident.isdigit():
            s.order_answered(int(ident))
