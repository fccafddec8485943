"""Traces for the simulator: CSV in and out, recorded jobs and cold starts, seeded synthetic shapes."""

from __future__ import annotations

import pytest

from ember.core.errors import InvalidInput
from ember.core.traces import (
    Draws,
    Job,
    Shape,
    Trace,
    cold_starts,
    median,
    parse_csv,
    synthetic,
    trace_from_jobs,
)


def test_csv_skips_its_header_comments_and_blank_lines_and_sorts_by_arrival() -> None:
    text = "arrival_s,execution_s\n# a comment\n\n2.5, 1\n0,0.25  # inline\n"
    assert parse_csv(text) == Trace((Job(0.0, 0.25), Job(2.5, 1.0)), 2.5)


def test_csv_names_every_bad_line() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_csv("0,1\nx,1\n1\n-1,2\n3,nan\n")
    assert [p.field for p in caught.value.problems] == ["line 2", "line 3", "line 4", "line 5"]
    assert "4 bad lines" in caught.value.message


def test_csv_round_trips() -> None:
    t = synthetic(Shape(kind="steady", duration_s=30, rate_per_s=2, seed=3))
    assert parse_csv(t.to_csv()).jobs == t.jobs


def test_recorded_jobs_become_offsets_and_execution_times_leaving_out_unfinished_ones() -> None:
    rows = [(100.0, 101.0, 103.5), (99.0, 99.5, 100.0), (104.0, None, None), (105.0, 105.0, None)]
    t = trace_from_jobs(rows)
    assert t.jobs == (Job(0.0, 0.5), Job(1.0, 2.5))
    assert t.duration_s == 6.0
    assert trace_from_jobs([]) == Trace((), 0.0)


def test_cold_starts_pair_each_start_with_its_first_ready_state() -> None:
    events = [
        ("w1", "THROTTLED", 0.0),
        ("w1", "INITIALIZING", 1.0),
        ("w2", "INITIALIZING", 2.0),
        ("w1", "IDLE", 3.5),  # 2.5 s
        ("w2", "RUNNING", 2.75),  # 0.75 s
        ("w3", "INITIALIZING", 4.0),
        ("w3", "UNHEALTHY", 9.0),  # a failed start is not a cold start
        ("w3", "INITIALIZING", 10.0),
        ("w3", "IDLE", 11.0),  # 1 s
        ("w1", "RUNNING", 20.0),
    ]
    assert cold_starts(events) == [2.5, 0.75, 1.0]
    assert median([2.5, 0.75, 1.0]) == 1.0 and median([1.0, 2.0]) == 1.5 and median([]) is None


def test_the_generator_is_seeded_and_uniform() -> None:
    a, b = Draws(42), Draws(42)
    first = [a.uniform() for _ in range(1000)]
    assert first == [b.uniform() for _ in range(1000)]
    assert all(0 <= x < 1 for x in first)
    assert 0.45 < sum(first) / len(first) < 0.55
    assert first != [Draws(43).uniform() for _ in range(1000)]


def test_steady_arrivals_come_at_the_rate_asked() -> None:
    t = synthetic(Shape(kind="steady", duration_s=1000, rate_per_s=2, execution_s=1, spread=0.5, seed=1))
    assert 1800 < len(t.jobs) < 2200
    assert all(0.5 <= j.execution_s <= 1.5 for j in t.jobs)
    assert t.duration_s == 1000
    assert t == synthetic(Shape(kind="steady", duration_s=1000, rate_per_s=2, execution_s=1, seed=1))


def test_bursty_arrivals_crowd_into_the_on_windows() -> None:
    shape = Shape(kind="bursty", duration_s=1200, rate_per_s=5, on_s=30, off_s=90, off_rate_per_s=0.1)
    t = synthetic(shape)
    on = sum(1 for j in t.jobs if j.arrival_s % 120 < 30)
    off = len(t.jobs) - on
    assert 1300 < on < 1700  # 10 bursts x 30 s x 5/s
    assert 50 < off < 130  # 10 x 90 s x 0.1/s


def test_diurnal_arrivals_peak_in_the_first_half_of_the_period() -> None:
    t = synthetic(Shape(kind="diurnal", duration_s=2000, rate_per_s=2, amplitude=0.8, seed=5))
    first = sum(1 for j in t.jobs if j.arrival_s < 1000)
    assert first > 2 * (len(t.jobs) - first)


def test_a_bad_shape_names_what_is_wrong() -> None:
    with pytest.raises(InvalidInput) as caught:
        synthetic(Shape(kind="spiky", duration_s=0, rate_per_s=-1))
    assert {p.field for p in caught.value.problems} == {"synthetic", "duration", "rate"}
    with pytest.raises(InvalidInput):
        synthetic(Shape(duration_s=7 * 24 * 3600, rate_per_s=10_000))  # far too many jobs
