"""`control.presence.Presence`: what workers said of themselves, kept for the lifecycle loop."""

from ember.control.presence import Presence
from ember.core.workers import Ping


def test_the_latest_ping_counts_unless_it_predates_the_workers_launch() -> None:
    p = Presence()
    assert p.last_ping("wk-1") is None
    p.pinged("wk-1", 10.0, frozenset({"job-1"}))
    p.pinged("wk-1", 12.0, frozenset())
    assert p.last_ping("wk-1") == Ping(12.0, frozenset())
    assert p.last_ping("wk-1", since=11.0) == Ping(12.0, frozenset())
    assert p.last_ping("wk-1", since=13.0) is None  # from the worker id's previous run


def test_a_failed_check_is_taken_once_and_forgetting_a_worker_drops_what_it_said() -> None:
    p = Presence()
    p.failed_check("wk-1", "failed its start-up check gpu: no device")
    assert p.take_failed_check("wk-1") == "failed its start-up check gpu: no device"
    assert p.take_failed_check("wk-1") is None
    p.pinged("wk-1", 1.0, frozenset())
    p.failed_check("wk-1", "again")
    p.forget("wk-1")
    assert p.last_ping("wk-1") is None and p.take_failed_check("wk-1") is None


def test_live_workers_are_as_last_counted() -> None:
    p = Presence()
    assert not p.has_live("ep-1")
    p.counted({"ep-1": 2, "ep-2": 0})
    assert p.has_live("ep-1") and not p.has_live("ep-2")
    p.counted({})
    assert not p.has_live("ep-1")
