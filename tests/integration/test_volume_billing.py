"""Network volumes are billed per GB-month of provisioned size, per whole second, into the ledger
(`kind="volume"`), by the real meter over a real SQLite store on a manual clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.control.clock import ManualClock
from ember.control.meter import Meter
from ember.core.billing import MONTH_S, PriceTable, volume_charge
from ember.store.facade import Store

PRICE_MICROS = 70_000  # $0.07 per GB-month


@given(
    size_gb=st.integers(1, 4096),
    chunks=st.lists(st.integers(0, 10 * 24 * 3600), min_size=1, max_size=20),
)
def test_billing_in_chunks_charges_exactly_what_one_bill_would(size_gb: int, chunks: list[int]) -> None:
    total, carry = 0, 0
    for seconds in chunks:
        amount, carry = volume_charge(size_gb, PRICE_MICROS, seconds, carry)
        total += amount
        assert 0 <= carry < MONTH_S
    assert total == volume_charge(size_gb, PRICE_MICROS, sum(chunks), 0)[0]


def test_a_month_of_ten_gb_costs_ten_times_the_price() -> None:
    assert volume_charge(10, PRICE_MICROS, MONTH_S, 0) == (700_000, 0)


@pytest.fixture
def store(tmp_path: Path):
    s = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")
    yield s
    s.close()


def test_meter_bills_provisioned_size_until_deletion_and_debits_the_balance(store: Store) -> None:
    clock = ManualClock()
    t0 = clock.now()
    store.accounts.create(id="acct-1", name="a", is_admin=False, balance_micros=10_000_000, now=t0)
    store.volumes.create(id="vol-1", account_id="acct-1", name="data", size_gb=100, now=t0)
    # $25.92 per GB-month is 10 micro-dollars per GB-second: 100 GB cost 1000 micro-dollars a second.
    meter = Meter(store, clock, PriceTable(), volume_price_micros=25_920_000)

    clock.advance(10.5)
    asyncio.run(meter.tick())
    assert store.volumes.billed(["vol-1"]) == {"vol-1": (10, 10_000)}
    asyncio.run(meter.tick())  # idempotent: nothing new to bill
    assert store.volumes.billed(["vol-1"]) == {"vol-1": (10, 10_000)}

    clock.advance(5)  # 15.5 s in: deleted now, then metered later
    store.volumes.delete("vol-1", clock.now())
    clock.advance(100)
    asyncio.run(meter.tick())
    asyncio.run(meter.tick())
    assert store.volumes.billed(["vol-1"]) == {"vol-1": (15, 15_000)}
    assert store.accounts.get("acct-1")["balance_micros"] == 10_000_000 - 15_000
    assert not [r for r in store.volumes.meter_candidates() if r[0]["id"] == "vol-1"]
