"""Worker records on the real databases: what a worker's start reports without a state change."""

from __future__ import annotations

from ember.core.workers import WorkerState
from ember.store.facade import Store


def _initializing(store: Store, worker_id: str = "wk-1") -> None:
    store.workers.create(
        id=worker_id,
        endpoint_id="ep-1",
        account_id="acct-1",
        release=1,
        type="FLEX",
        state=WorkerState.INITIALIZING,
        now=1.0,
        reason="starting",
        gpu_type=None,
        gpu_count=0,
        gpu_devices="",
        backend="local",
        launched=True,
    )


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
