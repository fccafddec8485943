"""Read-only aggregates for `/metrics`, taken when Prometheus scrapes: live endpoints with their desired
worker counts, workers by endpoint, state and type, and billed usage by endpoint read from the ledger a
few rows at a time (it is append-only, so a scrape reads only the rows added since the last one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from ember.core.workers import TERMINAL
from ember.store.db import Repository
from ember.store.rows import LiveEndpoint
from ember.store.schema import endpoints, ledger, workers

E = endpoints.c
L = ledger.c
W = workers.c
_ENDED = [s.value for s in TERMINAL]


@dataclass
class Usage:
    """Billed usage of one endpoint: seconds and micro-dollars."""

    seconds: int = 0
    micros: int = 0

    def add(self, seconds: int, micros: int) -> None:
        self.seconds += seconds
        self.micros += micros


@dataclass
class UsageRead:
    """Usage rows after a cursor: `settled` covers the ids up to `cursor` (inclusive; the caller adds it to
    its totals and reads after `cursor` next time), `recent` the newer rows (read again next time: a row
    written less than the settle window ago may still be committed below a higher id seen already)."""

    cursor: int
    settled: dict[str, Usage] = field(default_factory=dict)
    recent: dict[str, Usage] = field(default_factory=dict)


class MetricsQueries(Repository):
    def endpoints(self) -> Sequence[LiveEndpoint]:
        """Live endpoints: id, name, account_id, desired_workers."""
        live = select(E.id, E.name, E.account_id, E.desired_workers).where(E.deleted_at.is_(None))
        return self._rows(LiveEndpoint, live)

    def workers(self) -> dict[tuple[str, str, str], int]:
        """(endpoint id, state, type) -> number of workers not yet STOPPED."""
        query = (
            select(W.endpoint_id, W.state, W.type, func.count())
            .where(W.state.not_in(_ENDED))
            .group_by(W.endpoint_id, W.state, W.type)
        )
        with self.reader.connect() as conn:
            return {(ep, state, kind): int(n) for ep, state, kind, n in conn.execute(query)}

    def usage_after(self, after_id: int, settled_before: float) -> UsageRead:
        """Ledger usage rows with id > `after_id`, summed by endpoint. Rows created before
        `settled_before` and below the first newer row are settled (see `UsageRead`)."""
        with self.reader.connect() as conn:
            top = conn.execute(select(func.max(L.id)).where(L.id > after_id)).scalar()
            if top is None:
                return UsageRead(after_id)
            first_recent = conn.execute(
                select(func.min(L.id)).where(L.id > after_id, L.created_at >= settled_before)
            ).scalar()
            cursor = int(top) if first_recent is None else int(first_recent) - 1
            read = UsageRead(cursor)
            if cursor > after_id:
                read.settled = _sums(conn, after_id, cursor)
            if cursor < top:
                read.recent = _sums(conn, cursor, None)
            return read


def _sums(conn: Connection, after_id: int, up_to: int | None) -> dict[str, Usage]:
    query = select(L.endpoint_id, func.sum(L.seconds), func.sum(L.amount_micros)).where(
        L.id > after_id, L.kind == "usage", L.endpoint_id.is_not(None)
    )
    if up_to is not None:
        query = query.where(L.id <= up_to)
    out: dict[str, Usage] = {}
    for endpoint_id, seconds, micros in conn.execute(query.group_by(L.endpoint_id)):
        out[endpoint_id] = Usage(int(seconds or 0), int(micros or 0))
    return out
