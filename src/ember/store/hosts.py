"""Hosts (GPU machines whose agents connect in) and the orders their agents take: a host is added
with a token (its hash kept), reports its GPUs and workers, and is marked LOST when silent too long;
orders are queued by any process, taken by the host's agent through any process, and answered."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping, Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ember.core.hosts import HostState, OrderState
from ember.store import outbox
from ember.store.accounts import hash_key
from ember.store.db import Repository
from ember.store.rows import HostOrderRow, HostRow
from ember.store.schema import host_orders, hosts

H = hosts.c
O = host_orders.c  # noqa: E741


class HostStore(Repository):
    def create(self, *, id: str, name: str, token: str, now: float) -> bool:
        """Add a host that its agent will join with `token`; False when one is so named already."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(hosts).values(
                        id=id,
                        name=name,
                        token_hash=hash_key(token),
                        state=HostState.NEW.value,
                        slots="{}",
                        backends="",
                        observed="[]",
                        hostname="",
                        last_seen_at=None,
                        created_at=now,
                    )
                )
        except IntegrityError:
            return False
        return True

    def list(self) -> Sequence[HostRow]:
        return self._rows(HostRow, select(hosts).order_by(H.created_at, H.id))

    def get(self, ref: str) -> HostRow | None:
        """A host by id or name."""
        return self._first(HostRow, select(hosts).where((H.id == ref) | (H.name == ref)))

    def by_token(self, token: str) -> HostRow | None:
        return self._first(HostRow, select(hosts).where(H.token_hash == hash_key(token)))

    def delete(self, host_id: str) -> bool:
        with self.engine.begin() as conn:
            conn.execute(delete(host_orders).where(O.host_id == host_id))
            return bool(conn.execute(delete(hosts).where(H.id == host_id)).rowcount)

    def report(
        self,
        host_id: str,
        *,
        slots: dict[str, builtins.list[str]],
        backends: Sequence[str],
        observed: Sequence[dict[str, object]],
        hostname: str,
        now: float,
    ) -> str | None:
        """The agent's report: its GPUs, runtimes and workers as of `now`; the host is READY. The state
        it had before (LOST: it is back), or None for an unknown host."""
        with self.engine.begin() as conn:
            row = conn.execute(self._lock(select(H.state).where(H.id == host_id))).first()
            if row is None:
                return None
            conn.execute(
                update(hosts)
                .where(H.id == host_id)
                .values(
                    state=HostState.READY.value,
                    slots=json.dumps(slots, sort_keys=True),
                    backends=",".join(backends),
                    observed=json.dumps(list(observed)),
                    hostname=hostname[:200],
                    last_seen_at=now,
                )
            )
            return str(row[0])

    def mark_lost(self, host_id: str, silent_since: float) -> bool:
        """LOST, unless it reported after `silent_since` meanwhile (compare-and-set: a report racing
        this wins). Whether it was marked."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(hosts)
                .where(H.id == host_id, H.state == HostState.READY.value, H.last_seen_at <= silent_since)
                .values(state=HostState.LOST.value, observed="[]")
            )
            return bool(res.rowcount)

    # Orders ----------------------------------------------------------------------------------------

    def order(self, host_id: str, kind: str, body: Mapping[str, object], now: float) -> int:
        """Queue an order for the host's agent; its id."""
        with self.engine.begin() as conn:
            res = conn.execute(
                insert(host_orders).values(
                    host_id=host_id,
                    kind=kind,
                    body=json.dumps(body),
                    state=OrderState.QUEUED.value,
                    result=None,
                    created_at=now,
                )
            )
            key = res.inserted_primary_key
            assert key is not None
            outbox.add("h", host_id)
            return int(key[0])

    def take_orders(self, host_id: str, now: float, limit: int = 50) -> builtins.list[HostOrderRow]:
        """The host's queued orders, oldest first, now SENT (each is handed to one poll only)."""
        with self.engine.begin() as conn:
            pick = (
                select(host_orders)
                .where(O.host_id == host_id, O.state == OrderState.QUEUED.value)
                .order_by(O.id)
                .limit(limit)
            )
            if self.pg:
                pick = pick.with_for_update(skip_locked=True)
            rows = self._rows(HostOrderRow, pick, conn)
            if rows:
                conn.execute(
                    update(host_orders)
                    .where(O.id.in_([r["id"] for r in rows]))
                    .values(state=OrderState.SENT.value, sent_at=now)
                )
            return rows

    def answer(self, host_id: str, order_id: int, result: Mapping[str, object]) -> bool:
        """The agent's answer to one of its orders; False when it is not that host's, or answered."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(host_orders)
                .where(O.id == order_id, O.host_id == host_id, O.state != OrderState.DONE.value)
                .values(state=OrderState.DONE.value, result=json.dumps(result))
            )
            if res.rowcount:
                outbox.add("o", str(order_id))
            return bool(res.rowcount)

    def result(self, order_id: int) -> dict[str, object] | None:
        """An answered order's result (and the order is gone), or None while it waits."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(O.result).where(O.id == order_id, O.state == OrderState.DONE.value)
            ).first()
            if row is None:
                return None
            conn.execute(delete(host_orders).where(O.id == order_id))
        value = json.loads(row[0] or "{}")
        return value if isinstance(value, dict) else {}

    def drop_order(self, order_id: int) -> None:
        """An order nobody waits for any more (its waiter gave up)."""
        with self.engine.begin() as conn:
            conn.execute(delete(host_orders).where(O.id == order_id))

    def requeue_unheard(self, host_id: str, working: Sequence[int], sent_before: float) -> int:
        """Orders handed to a poll before `sent_before` that the agent, in its latest report, neither
        answered nor says it is carrying out (`working`) never reached it (its poll's answer was lost):
        they go to it again. How many."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(host_orders)
                .where(
                    O.host_id == host_id,
                    O.state == OrderState.SENT.value,
                    O.sent_at < sent_before,
                    O.id.not_in(list(working)),
                )
                .values(state=OrderState.QUEUED.value)
            )
            if res.rowcount:
                outbox.add("h", host_id)
            return int(res.rowcount)

    def requeue_sent(self, host_id: str) -> int:
        """An agent that restarted lost the orders it had taken: launches and stops (idempotent) go to
        it again; an exec or a log read is answered as failed (it is not run twice). How many went."""
        lost = json.dumps({"error": "the host's agent restarted before answering"})
        with self.engine.begin() as conn:
            sent = (O.host_id == host_id) & (O.state == OrderState.SENT.value)
            res = conn.execute(
                update(host_orders)
                .where(sent, O.kind.in_(["launch", "stop"]))
                .values(state=OrderState.QUEUED.value)
            )
            conn.execute(update(host_orders).where(sent).values(state=OrderState.DONE.value, result=lost))
            if res.rowcount:
                outbox.add("h", host_id)
            return int(res.rowcount)
