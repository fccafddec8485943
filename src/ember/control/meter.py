"""The billing meter: turns recorded worker-state intervals into charges (per second, `core.billing`),
appends them to the ledger and debits balances. Idempotent per interval: a cursor per worker records
how far it has been billed, with the fraction of a second carried to the next run. Network volumes are
billed per GB-month of provisioned size, per whole second, with their own cursors (`kind="volume"`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ember.control.clock import Clock
from ember.core.billing import Interval, PriceTable, bill
from ember.core.workers import WorkerState, WorkerType
from ember.store.accounts import Charge
from ember.store.facade import Store
from ember.store.rows import WorkerEvent, WorkerRow
from ember.store.volumes import VolumeCharge

log = logging.getLogger("ember.meter")
MONTH_S = 30 * 24 * 3600
DEFAULT_VOLUME_PRICE_MICROS = 70_000  # $0.07 per GB and month of provisioned size


def volume_charge(size_gb: int, price_micros_per_gb_month: int, seconds: int, carry: int) -> tuple[int, int]:
    """(micro-dollars, new carry) for `seconds` of a `size_gb` volume. Exact in integers: the carry is
    the remainder in micro-dollar-seconds-per-month units (always < MONTH_S), so nothing is lost."""
    return divmod(size_gb * price_micros_per_gb_month * seconds + carry, MONTH_S)


def intervals_for(
    worker: WorkerRow, events: Sequence[WorkerEvent], since_at: float, until_at: float
) -> list[Interval]:
    """The worker's state intervals clipped to [since_at, until_at). `events` are its transitions in
    order; each state lasts until the next transition (the current one until `until_at`)."""
    out: list[Interval] = []
    for i, ev in enumerate(events):
        start = ev["at"]
        end = events[i + 1]["at"] if i + 1 < len(events) else until_at
        start, end = max(start, since_at), min(end, until_at)
        if end <= start:
            continue
        state = WorkerState(ev["to_state"])
        out.append(
            Interval(
                worker_id=worker["id"],
                endpoint_id=worker["endpoint_id"],
                state=state,
                worker_type=WorkerType(worker["type"]),
                gpu_type=worker["gpu_type"],
                gpu_count=max(1, worker["gpu_count"] or 1),
                start_at=start,
                end_at=end,
                # Outdated workers are kept only while they finish a job (idle ones stop at once).
                processing=state == WorkerState.OUTDATED,
            )
        )
    return out


class Meter:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        prices: PriceTable,
        volume_price_micros: int = DEFAULT_VOLUME_PRICE_MICROS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.prices = prices
        self.volume_price_micros = volume_price_micros

    async def tick(self) -> int:
        """Bill everything up to now; returns the number of ledger rows written."""
        now = self.clock.now()
        return await self.store.run_background(self._bill, now) + await self.store.run_background(
            self._bill_volumes, now
        )

    def _bill_volumes(self, now: float) -> int:
        written = 0
        for vol, cursor, carry in self.store.volumes.meter_candidates():
            since = cursor if cursor is not None else vol["created_at"]
            until = now if vol["deleted_at"] is None else min(now, vol["deleted_at"])
            seconds = int(until - since)
            if seconds <= 0:
                if vol["deleted_at"] is not None and until > since:
                    self.store.volumes.save_meter(vol["id"], until, carry, None)  # close it out
                continue
            amount, carry = volume_charge(int(vol["size_gb"]), self.volume_price_micros, seconds, carry)
            to_at = since + seconds
            charge = VolumeCharge(
                vol["account_id"], vol["id"], int(vol["size_gb"]), seconds, amount, since, to_at
            )
            self.store.volumes.save_meter(vol["id"], to_at, carry, charge)
            written += 1
        return written

    def _bill(self, now: float) -> int:
        s = self.store
        written = 0
        for worker, cursor, carry in s.metering.meter_candidates():
            events = s.workers.events_from(worker["id"], cursor)
            if not events:
                continue
            since = cursor if cursor is not None else events[0]["at"]
            until = now if worker["state"] != WorkerState.STOPPED.value else min(now, worker["state_since"])
            if until <= since:
                continue
            result = bill(intervals_for(worker, events, since, until), self.prices, {worker["id"]: carry})
            charges = [
                Charge(
                    account_id=worker["account_id"],
                    endpoint_id=c.endpoint_id,
                    worker_id=c.worker_id,
                    state=c.state.value,
                    worker_type=c.worker_type.value,
                    gpu_type=c.gpu_type,
                    seconds=c.seconds,
                    amount_micros=c.cost_micros,
                    from_at=c.start_at,
                    to_at=c.end_at,
                )
                for c in result.charges
                if c.seconds or c.cost_micros
            ]
            carry_after = result.carry_ms.get(worker["id"], carry)
            seen = max(ev["id"] for ev in events)
            if s.metering.save_meter(
                worker["id"], cursor, until, carry_after, charges, now, s.accounts, seen_event_id=seen
            ):
                written += len(charges)
        return written
