"""The billing meter: turns recorded worker-state intervals into charges (per second, `core.billing`),
appends them to the ledger and debits balances. Idempotent per interval: a cursor per worker records
how far it has been billed, with the fraction of a second carried to the next run. Network volumes are
billed per GB-month of provisioned size, per whole second, with their own cursors (`kind="volume"`)."""

from __future__ import annotations

import logging

from ember.control.clock import Clock
from ember.core.billing import Billed, PriceTable, bill, intervals_for, volume_charge
from ember.core.workers import WorkerState
from ember.store.accounts import Charge
from ember.store.facade import Store
from ember.store.volumes import VolumeCharge

log = logging.getLogger("ember.meter")
DEFAULT_VOLUME_PRICE_MICROS = 70_000  # $0.07 per GB and month of provisioned size


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
            billed = Billed(
                worker["id"], worker["endpoint_id"], worker["type"], worker["gpu_type"], worker["gpu_count"]
            )
            transitions = [(e["at"], e["to_state"]) for e in events]
            result = bill(
                intervals_for(billed, transitions, since, until), self.prices, {worker["id"]: carry}
            )
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
