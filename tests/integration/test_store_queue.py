"""The durable queue against the real databases (SQLite and PostgreSQL): claim order and exclusivity,
idempotent results, late results after cancel, lost-worker re-queues, and a Hypothesis state machine."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ember.core.jobs import JobState
from ember.store.facade import Store
from ember.store.jobs import NewJob
from tests.conftest import need
from tests.integration.store_fixtures import fresh_pg, pg_available

EP = "ep-1"
ACCT = "acct-1"


def job(i: int, low: bool = False) -> NewJob:
    return NewJob(f"job-{i}", EP, ACCT, f'{{"i": {i}}}', None, None, low, 600_000, 86_400_000, False)


def finish(s: Store, job_id: str, worker: str, now: float, state: JobState = JobState.COMPLETED) -> str:
    return s.jobs.finish(job_id, worker, state, "1", None, now, 1800, 60)[0]


def test_claims_normal_priority_first_then_oldest_first(store: Store) -> None:
    store.jobs.submit(job(1, low=True), 1.0)
    store.jobs.submit(job(2), 2.0)
    store.jobs.submit(job(3), 3.0)
    assert [c.id for c in store.jobs.claim(EP, "wk-a", 1, 10.0)] == ["job-2"]
    assert [c.id for c in store.jobs.claim(EP, "wk-a", 5, 10.0)] == ["job-3", "job-1"]
    assert store.jobs.claim(EP, "wk-a", 5, 10.0) == []


def test_claim_never_hands_out_more_than_asked(store: Store) -> None:
    for i in range(10):
        store.jobs.submit(job(i), float(i))
    assert len(store.jobs.claim(EP, "wk-a", 3, 20.0)) == 3
    assert store.sweeps.queue_stats()[EP].queued == 7


def test_concurrent_claimers_never_get_the_same_job(store: Store) -> None:
    for i in range(200):
        store.jobs.submit(job(i), float(i))
    got: dict[str, list[str]] = {}

    def claimer(name: str) -> None:
        mine: list[str] = []
        while True:
            batch = store.jobs.claim(EP, name, 3, 1000.0)
            if not batch:
                break
            mine.extend(c.id for c in batch)
        got[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"wk-{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [j for ids in got.values() for j in ids]
    assert len(everything) == 200 and len(set(everything)) == 200


def test_result_is_idempotent_and_a_late_result_after_cancel_is_ignored(store: Store) -> None:
    store.jobs.submit(job(1), 1.0)
    store.jobs.submit(job(2), 1.0)
    store.jobs.claim(EP, "wk-a", 2, 2.0)
    assert finish(store, "job-1", "wk-a", 3.0) == "done"
    assert finish(store, "job-1", "wk-a", 4.0) == "final"
    cancelled = store.jobs.cancel("job-2", ACCT, EP, 3.0, 1800)
    assert cancelled is not None and cancelled["state"] == "CANCELLED" and cancelled["stop_requested"]
    assert finish(store, "job-2", "wk-a", 5.0) == "final"
    assert store.jobs.get("job-2")["state"] == "CANCELLED"
    assert store.jobs.take_stops("wk-a") == ["job-2"]
    assert store.jobs.take_stops("wk-a") == []


def test_a_worker_reporting_a_job_it_does_not_hold_is_refused(store: Store) -> None:
    store.jobs.submit(job(1), 1.0)
    store.jobs.claim(EP, "wk-a", 1, 2.0)
    assert finish(store, "job-1", "wk-b", 3.0) == "not_held"
    assert finish(store, "job-404", "wk-a", 3.0) == "unknown"


def test_jobs_of_a_lost_worker_are_requeued_once_then_failed_with_the_reason(store: Store) -> None:
    store.jobs.submit(job(1), 1.0)
    store.jobs.claim(EP, "wk-a", 1, 2.0)
    again, failed = store.sweeps.release_worker_jobs("wk-a", "worker wk-a exited", 1, 3.0, 1800)
    assert (again, failed) == (["job-1"], [])
    assert store.jobs.get("job-1")["state"] == "IN_QUEUE"
    store.jobs.claim(EP, "wk-b", 1, 4.0)
    again, failed = store.sweeps.release_worker_jobs("wk-b", "worker wk-b exited", 1, 5.0, 1800)
    assert (again, failed) == ([], ["job-1"])
    row = store.jobs.get("job-1")
    assert row["state"] == "FAILED" and "worker wk-b exited" in row["error"]


def test_retry_requeues_failed_jobs_only_and_clears_their_output(store: Store) -> None:
    store.jobs.submit(job(1), 1.0)
    store.jobs.claim(EP, "wk-a", 1, 2.0)
    store.jobs.finish("job-1", "wk-a", JobState.FAILED, '"partial"', "boom", 3.0, 1800, 60)
    assert store.jobs.retry("job-1", ACCT, EP, 4.0) == "IN_QUEUE"
    row = store.jobs.get("job-1")
    assert row["output"] is None and row["error"] is None and row["retried"] == 1
    store.jobs.claim(EP, "wk-a", 1, 5.0)
    finish(store, "job-1", "wk-a", 6.0)
    assert store.jobs.retry("job-1", ACCT, EP, 7.0) == "COMPLETED"  # not retryable: state unchanged


def test_stream_chunks_are_read_once_in_order(store: Store) -> None:
    store.jobs.submit(job(1), 1.0)
    store.jobs.claim(EP, "wk-a", 1, 2.0)
    for i in range(3):
        assert store.streams.stream_chunk("job-1", "wk-a", str(i)) == "done"
    _, first = store.streams.read_stream("job-1", ACCT, EP)
    _, second = store.streams.read_stream("job-1", ACCT, EP)
    assert first == ["0", "1", "2"] and second == []


class QueueMachine(RuleBasedStateMachine):
    """Random sequences of queue operations keep every job in exactly one consistent state."""

    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.store = QueueMachine.factory()
        self.n = 0
        self.now = 1.0
        self.finals: dict[str, str] = {}

    def tick(self) -> float:
        self.now += 1.0
        return self.now

    @rule(low=st.booleans())
    def submit(self, low: bool) -> None:
        self.n += 1
        self.store.jobs.submit(job(self.n, low), self.tick())

    @rule(worker=st.sampled_from(["wk-a", "wk-b"]), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        for c in self.store.jobs.claim(EP, worker, limit, self.tick()):
            assert c.id not in self.finals

    @rule(worker=st.sampled_from(["wk-a", "wk-b"]), ok=st.booleans())
    def finish_one(self, worker: str, ok: bool) -> None:
        held = self.store.jobs.held_by(worker)
        if held:
            state = JobState.COMPLETED if ok else JobState.FAILED
            assert finish(self.store, held[0], worker, self.tick(), state) == "done"
            self.finals[held[0]] = state.value

    @rule(i=st.integers(1, 30))
    def cancel(self, i: int) -> None:
        row = self.store.jobs.cancel(f"job-{i}", ACCT, EP, self.tick(), 1800)
        if row is not None and row["state"] == "CANCELLED":
            self.finals.setdefault(f"job-{i}", "CANCELLED")

    @rule(worker=st.sampled_from(["wk-a", "wk-b"]))
    def lose_worker(self, worker: str) -> None:
        _, failed = self.store.sweeps.release_worker_jobs(worker, "lost", 1, self.tick(), 1800)
        for j in failed:
            self.finals[j] = "FAILED"

    @invariant()
    def states_are_consistent(self) -> None:
        rows = self.store.jobs.list(ACCT, EP, limit=1000)
        assert len(rows) == self.n
        for r in rows:
            if r["state"] == "IN_PROGRESS":
                assert r["worker_id"] is not None
            if r["state"] == "IN_QUEUE":
                assert r["worker_id"] is None
            if r["id"] in self.finals:
                assert r["state"] == self.finals[r["id"]], r["id"]

    def teardown(self) -> None:
        self.store.close()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_queue_state_machine(db: str, tmp_path: Path) -> None:
    counter = iter(range(10**6))
    if db == "postgres":
        ok, why = pg_available()
        need("postgres", ok, why)
        QueueMachine.factory = staticmethod(fresh_pg)  # type: ignore[attr-defined]
    else:
        QueueMachine.factory = staticmethod(  # type: ignore[attr-defined]
            lambda: Store.open(f"sqlite:///{tmp_path / f'q{next(counter)}.db'}")
        )
    runner = QueueMachine.TestCase
    runner.settings = settings(
        max_examples=25 if db == "sqlite" else 10,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    runner("runTest").runTest()
