"""Worker records on the real databases: what a worker's start reports without a state change."""

from __future__ import annotations

from ember.core.workers import WorkerState
from ember.store.facade import Store
from tests.integration.store_fixtures import add_worker


def _initializing(store: Store, worker_id: str = "wk-1") -> None:
    add_worker(store, WorkerState.INITIALIZING, worker_id, reason="starting")


def test_a_starting_reason_changes_only_the_reason_of_an_initializing_worker(store: Store) -> None:
    _initializing(store)
    assert store.workers.set_starting_reason("wk-1", "installing requirements") is True
    row = store.workers.get("wk-1")
    assert row is not None
    assert (row["state"], row["reason"], row["state_since"]) == (
        "INITIALIZING",
        "installing requirements",
        1.0,
    )
    assert [(e["to_state"], e["reason"]) for e in store.workers.history("wk-1")] == [
        ("INITIALIZING", "starting")
    ]


def test_a_late_starting_reason_never_overwrites_a_later_state(store: Store) -> None:
    _initializing(store)
    assert store.workers.transition("wk-1", WorkerState.IDLE, 2.0, "ready") == "INITIALIZING"
    assert store.workers.set_starting_reason("wk-1", "starting handler") is False
    row = store.workers.get("wk-1")
    assert row is not None and (row["state"], row["reason"]) == ("IDLE", "ready")
    assert store.workers.set_starting_reason("wk-unknown", "starting handler") is False
