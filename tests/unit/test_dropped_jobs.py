"""`core.jobs.dropped_jobs`: a job the store says a worker holds is dropped only when the worker's pings,
received after the job started, keep leaving it out for the grace period."""

from __future__ import annotations

from ember.core.jobs import dropped_jobs

GRACE = 10.0


def test_no_ping_condemns_nothing() -> None:
    assert dropped_jobs({"j1": 0.0}, None, {}, GRACE) == ([], {})


def test_a_listed_job_is_fine_and_a_ping_older_than_the_job_proves_nothing() -> None:
    assert dropped_jobs({"j1": 5.0}, (6.0, frozenset({"j1"})), {}, GRACE) == ([], {})
    assert dropped_jobs({"j1": 5.0}, (4.0, frozenset()), {}, GRACE) == ([], {})


def test_a_job_left_out_is_dropped_only_after_the_grace_between_pings() -> None:
    dropped, since = dropped_jobs({"j1": 5.0, "j2": 5.0}, (6.0, frozenset({"j2"})), {}, GRACE)
    assert dropped == [] and since == {"j1": 6.0}
    dropped, since = dropped_jobs({"j1": 5.0, "j2": 5.0}, (15.0, frozenset({"j2"})), since, GRACE)
    assert dropped == [] and since == {"j1": 6.0}
    dropped, since = dropped_jobs({"j1": 5.0, "j2": 5.0}, (16.0, frozenset({"j2"})), since, GRACE)
    assert dropped == ["j1"] and since == {}


def test_a_job_listed_again_is_forgiven() -> None:
    _, since = dropped_jobs({"j1": 5.0}, (6.0, frozenset()), {}, GRACE)
    _, since = dropped_jobs({"j1": 5.0}, (8.0, frozenset({"j1"})), since, GRACE)
    assert since == {}
    dropped, since = dropped_jobs({"j1": 5.0}, (17.0, frozenset()), since, GRACE)
    assert dropped == [] and since == {"j1": 17.0}
