"""Hosts and their orders in the store, on both databases: a host is found by its token (kept hashed),
its agent's report makes it READY, a silent one is marked LOST only if it did not report meanwhile;
each order is handed to one poll, answered once, and read back once; an agent that restarted gets its
launches and stops again, and its execs answered as failed (never run twice)."""

from __future__ import annotations

import json

from ember.core.hosts import HostState
from ember.store.facade import Store


def test_a_host_is_found_by_its_token_and_its_report_makes_it_ready(store: Store) -> None:
    assert store.hosts.create(id="host-1", name="gpu-a", token="eh_secret", now=1.0)
    assert not store.hosts.create(id="host-2", name="gpu-a", token="eh_other", now=1.0)  # name taken
    row = store.hosts.by_token("eh_secret")
    assert row is not None and row["id"] == "host-1" and row["state"] == HostState.NEW
    assert "eh_secret" not in json.dumps(dict(row))  # only its hash is kept
    assert store.hosts.by_token("eh_wrong") is None
    before = store.hosts.report(
        "host-1",
        slots={"TEST_GPU": ["0", "1"]},
        backends=["local"],
        observed=[{"worker_id": "wk-1"}],
        hostname="box",
        now=5.0,
    )
    assert before == HostState.NEW
    row = store.hosts.get("gpu-a")
    assert row is not None and row["state"] == HostState.READY and row["last_seen_at"] == 5.0
    assert json.loads(row["slots"]) == {"TEST_GPU": ["0", "1"]} and row["backends"] == "local"
    assert store.hosts.report("host-9", slots={}, backends=[], observed=[], hostname="", now=5.0) is None


def test_a_host_is_lost_only_if_it_did_not_report_meanwhile(store: Store) -> None:
    store.hosts.create(id="host-1", name="gpu-a", token="eh_t", now=1.0)
    store.hosts.report("host-1", slots={}, backends=["local"], observed=[{"x": 1}], hostname="", now=5.0)
    store.hosts.report("host-1", slots={}, backends=["local"], observed=[], hostname="", now=9.0)
    assert not store.hosts.mark_lost("host-1", silent_since=5.0)  # it reported at 9 since
    assert store.hosts.mark_lost("host-1", silent_since=9.0)
    row = store.hosts.get("host-1")
    assert row is not None and row["state"] == HostState.LOST and row["observed"] == "[]"
    assert store.hosts.report("host-1", slots={}, backends=[], observed=[], hostname="", now=20.0) == "LOST"


def test_orders_are_taken_once_answered_once_and_read_once(store: Store) -> None:
    store.hosts.create(id="host-1", name="gpu-a", token="eh_t", now=1.0)
    store.hosts.create(id="host-2", name="gpu-b", token="eh_u", now=1.0)
    first = store.hosts.order("host-1", "launch", {"spec": {"worker_id": "wk-1"}}, 2.0)
    second = store.hosts.order("host-1", "exec", {"worker_id": "wk-1"}, 3.0)
    store.hosts.order("host-2", "stop", {"worker_id": "wk-9"}, 3.0)
    taken = store.hosts.take_orders("host-1", 5.0)
    assert [o["id"] for o in taken] == [first, second] and taken[0]["kind"] == "launch"
    assert store.hosts.take_orders("host-1", 5.0) == []  # each is handed out once
    assert store.hosts.result(first) is None  # not answered yet
    assert not store.hosts.answer("host-2", first, {})  # another host cannot answer it
    assert store.hosts.answer("host-1", first, {"ok": True})
    assert not store.hosts.answer("host-1", first, {"ok": False})  # answered once
    assert store.hosts.result(first) == {"ok": True}
    assert store.hosts.result(first) is None  # read once: the order is gone
    # The agent restarts before answering the exec: it is answered as failed, not run again.
    launch = store.hosts.order("host-1", "launch", {}, 4.0)
    assert [o["id"] for o in store.hosts.take_orders("host-1", 5.0)] == [launch]
    assert store.hosts.requeue_sent("host-1") == 1
    assert [o["id"] for o in store.hosts.take_orders("host-1", 5.0)] == [launch]
    assert store.hosts.result(second) == {"error": "the host's agent restarted before answering"}
    # An order whose poll answer never reached the agent (it is not in its report) goes out again,
    # once it has been out longer than an answer takes; one the agent lists as in hand does not.
    lost, in_hand = store.hosts.order("host-1", "stop", {}, 6.0), store.hosts.order("host-1", "exec", {}, 6.0)
    assert [o["id"] for o in store.hosts.take_orders("host-1", 7.0)] == [lost, in_hand]
    assert store.hosts.requeue_unheard("host-1", [launch, in_hand], sent_before=6.5) == 0  # too recent
    assert store.hosts.requeue_unheard("host-1", [launch, in_hand], sent_before=17.0) == 1
    assert [o["id"] for o in store.hosts.take_orders("host-1", 18.0)] == [lost]
    assert store.hosts.delete("host-1") and store.hosts.take_orders("host-1", 20.0) == []
