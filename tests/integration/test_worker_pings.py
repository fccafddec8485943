"""Workers' heartbeats where several processes share one database: the process a worker pings records
the ping, and the process that runs the lifecycle sees it in its snapshot (the jobs the worker holds
included), so it judges a worker by its pings whichever process they reached."""

from __future__ import annotations

import asyncio

from ember.control.fleet import Fleet
from ember.control.lifecycle import snapshot
from ember.control.signals import Signals
from ember.core.workers import Ping, WorkerState
from ember.store.facade import Store
from tests.integration.store_fixtures import add_worker


def test_the_latest_ping_wins_whatever_order_they_are_recorded_in(store: Store) -> None:
    store.pings.record("wk-1", 5.0, frozenset({"job-b", "job-a"}))
    store.pings.record("wk-1", 4.0, frozenset())  # an older ping, recorded late by another process
    store.pings.record("wk-2", 3.0, frozenset())
    assert store.pings.latest(["wk-1", "wk-2", "wk-3"]) == {
        "wk-1": Ping(5.0, frozenset({"job-a", "job-b"})),
        "wk-2": Ping(3.0, frozenset()),
    }
    store.pings.record("wk-1", 6.0, frozenset({"job-c"}))
    store.pings.forget("wk-2")
    assert store.pings.latest(["wk-1", "wk-2"]) == {"wk-1": Ping(6.0, frozenset({"job-c"}))}
    assert store.pings.latest([]) == {}


def test_the_lifecycle_s_snapshot_merges_pings_that_reached_another_process(store: Store) -> None:
    add_worker(store, WorkerState.RUNNING)
    store.pings.record("wk-1", 7.0, frozenset({"job-1"}))  # what the process the worker pinged wrote

    async def look() -> Ping | None:
        signals = Signals()  # the process that runs the lifecycle: no ping reached it
        signals.presence.pinged("wk-1", 6.0, frozenset())  # an older one did
        await snapshot.take(store, Fleet({}), signals, 8.0, frozenset())
        return signals.presence.last_ping("wk-1")

    seen = asyncio.run(look())
    if store.inline:  # one process (SQLite): every ping reaches it, nothing is read back
        assert seen == Ping(6.0, frozenset())
    else:
        assert seen == Ping(7.0, frozenset({"job-1"}))


def test_a_failed_start_up_check_reported_to_another_process_reaches_the_lifecycle(store: Store) -> None:
    """The worker said why it fails (a start-up check) to one process and exited; the process that runs
    the lifecycle records that reason, not "exited"; a report from an earlier run of the worker id is
    not taken for this run's."""
    store.pings.failed_check("wk-1", "failed its start-up check cuda: no device", 0.5)  # an earlier run
    assert store.pings.failed_checks({"wk-1": 1.0}) == {}
    store.pings.record("wk-1", 1.5, frozenset())
    store.pings.failed_check("wk-1", "failed its start-up check cuda: no device", 2.0)
    assert store.pings.failed_checks({"wk-1": 1.0, "wk-2": 0.0}) == {
        "wk-1": "failed its start-up check cuda: no device"
    }
    if store.inline:
        return  # one process: the check stays in its memory (`Presence`), as before
    add_worker(store, WorkerState.INITIALIZING)

    async def look() -> str | None:
        signals = Signals()
        await snapshot.take(store, Fleet({}), signals, 3.0, frozenset())
        return signals.presence.take_failed_check("wk-1")

    assert asyncio.run(look()) == "failed its start-up check cuda: no device"
    store.pings.forget("wk-1")
    assert store.pings.failed_checks({"wk-1": 0.0}) == {}
