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


def test_transitions_are_stamped_in_order_and_never_inside_a_billed_span(store: Store) -> None:
    """Processes take `now` before their transaction and commit in any order: a transition whose `now`
    is older than the worker's last transition, or than what the meter has billed, is stamped at that
    point instead, so the worker's history stays in order and billing recomputed from it is what the
    meter charged."""
    add_worker(store, WorkerState.IDLE)  # since 1.0
    assert store.workers.start_running("wk-1", 5.0, "took a job")
    assert store.workers.transition("wk-1", WorkerState.UNHEALTHY, 4.0, "lost")  # its now was older
    assert store.workers.transition("wk-1", WorkerState.THROTTLED, 6.0, "restart")
    assert store.workers.transition("wk-1", WorkerState.INITIALIZING, 7.0, "starting")
    assert store.workers.start_running("wk-1", 8.0, "took a job")
    assert store.metering.save_meter("wk-1", None, 12.0, 0, [], 12.0, store.accounts, seen_event_id=10**9)
    assert store.workers.settle_if_idle("wk-1", 11.0)  # a settle whose now the meter billed past
    stamps = [(e["to_state"], e["at"]) for e in store.workers.history("wk-1")]
    assert stamps[-6:] == [
        (WorkerState.RUNNING, 5.0),
        (WorkerState.UNHEALTHY, 5.0),
        (WorkerState.THROTTLED, 6.0),
        (WorkerState.INITIALIZING, 7.0),
        (WorkerState.RUNNING, 8.0),
        (WorkerState.IDLE, 12.0),
    ]
    row = store.workers.get("wk-1")
    assert row is not None and row["state_since"] == 12.0
