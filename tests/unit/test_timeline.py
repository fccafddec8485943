"""The worker-state timeline: transitions become lanes of segments clipped to the window."""

from __future__ import annotations

import pytest

from ember.core.timeline import Lane, Segment, Transition, WorkerNow, fraction, lanes

START, END = 1000.0, 4600.0


def states(lane: Lane) -> list[tuple[str, float, float]]:
    return [(s.state, s.start, s.end) for s in lane.segments]


def test_a_worker_born_inside_the_window_starts_where_it_was_created() -> None:
    events = [
        Transition("w1", None, "INITIALIZING", 2000.0, "launched"),
        Transition("w1", "INITIALIZING", "RUNNING", 2010.0, "took a job"),
        Transition("w1", "RUNNING", "IDLE", 2015.0, "finished its jobs"),
    ]
    (lane,) = lanes([WorkerNow("w1", "IDLE", 2015.0, "finished its jobs", "FLEX")], events, START, END)
    assert lane.worker_id == "w1" and lane.type == "FLEX"
    assert states(lane) == [
        ("INITIALIZING", 2000.0, 2010.0),
        ("RUNNING", 2010.0, 2015.0),
        ("IDLE", 2015.0, END),
    ]
    assert [s.reason for s in lane.segments] == ["launched", "took a job", "finished its jobs"]
    assert [s.open for s in lane.segments] == [False, False, True]


def test_the_state_before_the_window_comes_from_the_first_event_inside_it() -> None:
    events = [Transition("w1", "IDLE", "RUNNING", 3000.0, "took a job")]
    (lane,) = lanes([WorkerNow("w1", "RUNNING", 3000.0)], events, START, END)
    assert states(lane) == [("IDLE", START, 3000.0), ("RUNNING", 3000.0, END)]


def test_an_event_before_the_window_gives_the_state_at_its_start() -> None:
    events = [
        Transition("w1", None, "INITIALIZING", 10.0, "launched"),
        Transition("w1", "INITIALIZING", "IDLE", 20.0, "ready"),
        Transition("w1", "IDLE", "STOPPED", 2000.0, "idle timeout"),
    ]
    (lane,) = lanes([WorkerNow("w1", "STOPPED", 2000.0, "idle timeout")], events, START, END)
    assert states(lane) == [("IDLE", START, 2000.0), ("STOPPED", 2000.0, END)]
    assert lane.segments[0].reason == "ready"
    assert not lane.segments[-1].open  # STOPPED is where it ends, not a state it is still in


def test_a_worker_without_events_in_the_window_held_its_state_throughout() -> None:
    (lane,) = lanes([WorkerNow("w1", "IDLE", 100.0, "ready")], [], START, END)
    assert lane.segments == (Segment("IDLE", START, END, "ready", open=True),)


def test_workers_stopped_before_the_window_have_no_lane() -> None:
    stopped = WorkerNow("w1", "STOPPED", 500.0, "idle timeout")
    assert lanes([stopped], [], START, END) == []
    events = [Transition("w1", "IDLE", "STOPPED", 500.0, "idle timeout")]
    assert lanes([stopped], events, START, END) == []


def test_events_after_the_window_are_left_out() -> None:
    events = [
        Transition("w1", None, "INITIALIZING", 2000.0),
        Transition("w1", "INITIALIZING", "IDLE", 5000.0),
    ]
    (lane,) = lanes([WorkerNow("w1", "IDLE", 5000.0)], events, START, END)
    assert states(lane) == [("INITIALIZING", 2000.0, END)]
    assert lane.segments[0].open


def test_the_current_reason_replaces_the_last_events_while_the_state_is_the_same() -> None:
    events = [Transition("w1", None, "INITIALIZING", 2000.0, "launched")]
    worker = WorkerNow("w1", "INITIALIZING", 2000.0, "installing requirements")
    (lane,) = lanes([worker], events, START, END)
    assert lane.segments[0].reason == "installing requirements"


def test_events_in_any_order_and_simultaneous_ones_keep_their_given_order() -> None:
    events = [
        Transition("w1", "INITIALIZING", "RUNNING", 2000.0, "took a job"),
        Transition("w1", "RUNNING", "IDLE", 2000.0, "finished its jobs"),
        Transition("w1", None, "INITIALIZING", 1500.0, "launched"),
    ]
    (lane,) = lanes([WorkerNow("w1", "IDLE", 2000.0)], events, START, END)
    assert [s.state for s in lane.segments] == ["INITIALIZING", "RUNNING", "IDLE"]
    assert lane.segments[1].duration_s == 0.0


def test_lanes_are_ordered_by_first_appearance_and_events_of_unlisted_workers_ignored() -> None:
    events = [
        Transition("late", None, "INITIALIZING", 3000.0),
        Transition("early", None, "INITIALIZING", 1500.0),
        Transition("ghost", None, "INITIALIZING", 1200.0),
    ]
    workers = [WorkerNow("late", "INITIALIZING", 3000.0), WorkerNow("early", "INITIALIZING", 1500.0)]
    assert [lane.worker_id for lane in lanes(workers, events, START, END)] == ["early", "late"]


def test_every_segment_lies_inside_the_window_and_they_tile_the_lane() -> None:
    events = [
        Transition("w1", None, "INITIALIZING", 0.0),
        Transition("w1", "INITIALIZING", "IDLE", 900.0),
        Transition("w1", "IDLE", "RUNNING", 1200.0),
        Transition("w1", "RUNNING", "UNHEALTHY", 1300.0, "no ping for 7 s"),
        Transition("w1", "UNHEALTHY", "STOPPED", 1310.0, "lost"),
    ]
    (lane,) = lanes([WorkerNow("w1", "STOPPED", 1310.0)], events, START, END)
    assert all(START <= s.start <= s.end <= END for s in lane.segments)
    assert all(a.end == b.start for a, b in zip(lane.segments, lane.segments[1:], strict=False))
    assert [s.state for s in lane.segments] == ["IDLE", "RUNNING", "UNHEALTHY", "STOPPED"]


def test_a_window_that_ends_before_it_starts_is_an_error() -> None:
    with pytest.raises(ValueError):
        lanes([], [], END, START)


def test_fraction_is_clamped_to_the_window() -> None:
    assert fraction(START, START, END) == 0.0
    assert fraction(END, START, END) == 1.0
    assert fraction(2800.0, START, END) == 0.5
    assert fraction(-5.0, START, END) == 0.0
    assert fraction(9999.0, START, END) == 1.0
    assert fraction(5.0, 10.0, 10.0) == 0.0
