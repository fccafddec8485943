"""Two meters (two control-plane replicas) billing one database at the same moments: every span of a
worker's time is billed once. The meter's cursor moves by compare-and-set with the span's charges."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from ember.control.clock import ManualClock
from ember.control.meter import Meter
from ember.core.billing import PriceTable
from ember.core.workers import WorkerState, WorkerType
from ember.store.accounts import Charge
from ember.store.facade import Store
from tests.integration.store_fixtures import add_worker

TICKS = 40


def test_two_meters_ticking_together_bill_each_second_once(store: Store) -> None:
    store.accounts.create(id="acct-1", name="a", is_admin=False, balance_micros=10**9, now=0.0)
    add_worker(store, WorkerState.RUNNING)  # RUNNING from t=1
    clock = ManualClock(start=1.0)
    meters = [Meter(store, clock, PriceTable()) for _ in range(2)]
    both = threading.Barrier(2)
    written = [0, 0]

    def replica(i: int) -> None:
        for _ in range(TICKS):
            both.wait(timeout=30)
            if i == 0:
                clock.advance(1.0)  # one second a tick, moved by one replica while both wait
            both.wait(timeout=30)
            written[i] += asyncio.run(meters[i].tick())  # both bill the same moment

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    with store.db.engine.connect() as conn:
        seconds, rows, spans = conn.execute(
            text(
                "SELECT sum(seconds), count(*), count(DISTINCT from_at) FROM ledger"
                " WHERE kind = 'usage' AND worker_id = 'wk-1'"
            )
        ).one()
    # t=1 to t=TICKS+1 is TICKS seconds of RUNNING: billed once, each span by one of the two meters.
    assert (seconds, rows, spans) == (TICKS, rows, rows)
    assert sum(written) == rows


def test_the_ledger_refuses_a_second_charge_for_an_interval_and_debits_once(store: Store) -> None:
    store.accounts.create(id="acct-1", name="a", is_admin=False, balance_micros=1_000_000, now=0.0)
    charge = Charge(
        account_id="acct-1",
        endpoint_id="ep-1",
        worker_id="wk-1",
        state=WorkerState.RUNNING.value,
        worker_type=WorkerType.FLEX.value,
        gpu_type=None,
        seconds=10,
        amount_micros=1_000,
        from_at=1.0,
        to_at=11.0,
    )
    store.accounts.record_charges([charge], now=12.0)
    with pytest.raises(IntegrityError):
        store.accounts.record_charges([charge], now=13.0)
    account = store.accounts.get("acct-1")
    assert account is not None and account["balance_micros"] == 999_000
    later = dataclasses.replace(charge, from_at=11.0, to_at=21.0)
    store.accounts.record_charges([later], now=22.0)  # the next interval is a row of its own
    account = store.accounts.get("acct-1")
    assert account is not None and account["balance_micros"] == 998_000
