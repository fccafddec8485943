"""Events for the other control-plane processes on a PostgreSQL database, sent in the transaction that
makes the change: inside `sending(origin, events)`, every transaction the store commits also runs
`pg_notify` for them, so PostgreSQL delivers them at that commit, never before the change is visible
and never lost once it is committed (a process that dies after its commit has told the others).
`control.broadcast` listens and applies them; SQLite has one process and nothing to send.

The events ride a context variable from the async caller into the store's thread (`Store.run` copies
the caller's context), so a store method needs no parameter for them; methods whose event depends on
what the transaction found add it themselves (`add`)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

CHANNEL = "ember_events"
PAYLOAD_MAX_BYTES = 7900  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more


class _Sends(Protocol):
    def execute(self, query: str, params: Sequence[object]) -> object: ...


_origin: contextvars.ContextVar[str | None] = contextvars.ContextVar("ember_outbox_origin", default=None)
_pending: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ember_outbox", default=())


def payload(origin: str, kind: str, ident: str) -> str:
    """`<origin> <kind> <ident>`; an ident too long for a notification keeps only its first word (a
    final record is left out: the waiter reads it from the store)."""
    text = f"{origin} {kind} {ident}"
    if len(text.encode()) > PAYLOAD_MAX_BYTES:
        text = f"{origin} {kind} {ident.partition(' ')[0]}"
    return text


@contextmanager
def sending(origin: str, events: Iterable[tuple[str, str]]) -> Iterator[None]:
    """Within: each commit also notifies `events` ((kind, id) pairs) from the process `origin`."""
    tokens = (
        _origin.set(origin),
        _pending.set(_pending.get() + tuple(payload(origin, k, i) for k, i in events)),
    )
    try:
        yield
    finally:
        _pending.reset(tokens[1])
        _origin.reset(tokens[0])


def add(kind: str, ident: str) -> None:
    """An event the transaction now running makes (a job it finished, with its record; jobs it
    queued): sent at its commit, when inside `sending` (else nobody is to be told)."""
    origin = _origin.get()
    if origin is not None:
        _pending.set(_pending.get() + (payload(origin, kind, ident),))


def active() -> bool:
    """Whether the caller is inside `sending` (a store method then adds the events it finds)."""
    return _origin.get() is not None


def flush(cursor: _Sends) -> None:
    """Run the pending notifications in the transaction `cursor` is in (just before its commit)."""
    for text in _pending.get():
        cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, text))
