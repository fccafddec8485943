"""Observations made on the job path are queued and counted when the registry is read (or when too
many wait), before the instruments they feed are collected."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest

from ember.control.metrics import Deferred, Instruments


def test_queued_observations_are_counted_when_the_registry_is_read() -> None:
    metrics = Instruments()
    metrics.job_finished("ep-1", "COMPLETED", 0.01, 0.02)
    metrics.job_finished("ep-1", "FAILED")
    text = generate_latest(metrics.registry).decode()
    assert 'ember_jobs_finished_total{endpoint_id="ep-1",status="COMPLETED"} 1.0' in text
    assert 'ember_jobs_finished_total{endpoint_id="ep-1",status="FAILED"} 1.0' in text
    assert 'ember_job_execution_seconds_count{endpoint_id="ep-1"} 1.0' in text
    assert (
        metrics.registry.get_sample_value(
            "ember_jobs_finished_total", {"endpoint_id": "ep-1", "status": "FAILED"}
        )
        == 1
    )


def test_too_many_waiting_are_applied_at_once() -> None:
    target = CollectorRegistry()  # read without collecting the one the observations wait in
    counter = Counter("things", "things", registry=target)
    deferred = Deferred(CollectorRegistry(), lambda n: counter.inc(n), limit=3)
    for _ in range(3):
        deferred.add(1)
    assert target.get_sample_value("things_total") == 0  # waiting
    deferred.add(1)
    assert target.get_sample_value("things_total") == 4  # the fourth went over the limit: all applied
