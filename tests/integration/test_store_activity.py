"""The console's activity reads on each real database: a window's workers and transitions (bounded,
newest kept), and an endpoint's recent jobs with their filters."""

from __future__ import annotations

import json

from ember.core.workers import WorkerState
from ember.store.facade import Store
from ember.store.jobs import NewJob


def worker(store: Store, worker_id: str, at: float, endpoint_id: str = "ep-1") -> None:
    store.workers.create(
        id=worker_id,
        endpoint_id=endpoint_id,
        account_id="acct-1",
        release=1,
        type="FLEX",
        state=WorkerState.INITIALIZING,
        now=at,
        reason="launched",
        gpu_type=None,
        gpu_count=0,
        gpu_devices="",
        backend="local",
        launched=True,
    )


def test_a_window_holds_the_workers_alive_in_it_and_their_transitions(store: Store) -> None:
    worker(store, "old", 100.0)
    store.workers.transition("old", WorkerState.STOPPED, 200.0, "idle timeout")
    worker(store, "w1", 900.0)
    store.workers.transition("w1", WorkerState.IDLE, 1100.0, "ready")
    worker(store, "w2", 1200.0)
    worker(store, "elsewhere", 1200.0, endpoint_id="ep-2")
    window = store.activity.window("ep-1", 1000.0, max_workers=10, max_events=100)
    assert window.since == 1000.0 and not window.more
    assert [w.worker_id for w in window.workers] == ["w2", "w1"]  # newest first; "old" stopped before
    assert [(e.worker_id, e.from_state, e.to_state) for e in window.events] == [
        ("w1", "INITIALIZING", "IDLE"),
        ("w2", None, "INITIALIZING"),
    ]


def test_a_window_keeps_the_newest_and_says_what_it_left_out(store: Store) -> None:
    for i in range(3):
        worker(store, f"w{i}", 1000.0 + i)
        store.workers.transition(f"w{i}", WorkerState.IDLE, 1010.0 + i, "ready")
    window = store.activity.window("ep-1", 500.0, max_workers=2, max_events=3)
    assert window.more and [w.worker_id for w in window.workers] == ["w2", "w1"]
    # The three newest transitions are kept, so the window starts at the oldest of them.
    assert window.since == 1010.0
    assert [(e.worker_id, e.to_state) for e in window.events] == [("w1", "IDLE"), ("w2", "IDLE")]


def submit(store: Store, job_id: str, at: float) -> None:
    job = NewJob(
        job_id, "ep-1", "acct-1", json.dumps({"big": "x" * 1000}), None, None, False, 60_000, 60_000, False
    )
    store.jobs.submit(job, at)


def test_recent_jobs_are_newest_first_filtered_and_bounded(store: Store) -> None:
    worker(store, "w1", 1.0)
    for i in range(5):
        submit(store, f"job-{i}", 10.0 + i)
    claimed = store.take("ep-1", "w1", 2, 20.0, mark_running=True)
    assert [c.id for c in claimed] == ["job-0", "job-1"]
    lines = store.activity.recent_jobs("ep-1", limit=3)
    assert [j.id for j in lines] == ["job-4", "job-3", "job-2"]
    running = store.activity.recent_jobs("ep-1", state="IN_PROGRESS")
    assert [(j.id, j.worker_id, j.started_at) for j in running] == [
        ("job-1", "w1", 20.0),
        ("job-0", "w1", 20.0),
    ]
    assert [j.id for j in store.activity.recent_jobs("ep-1", worker_id="w1")] == ["job-1", "job-0"]
    assert store.activity.recent_jobs("ep-2") == []
