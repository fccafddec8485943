"""The job path's hand-offs: a job submitted while a job-take waits goes straight to that worker; a
job-done with `take=N` (Ember's SDK) is answered with the next queued jobs; a runsync gets the final
record from the job-done that finished its job. The store stays the truth in every case."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from sqlalchemy import text

from ember.control.handoff import DEFER_S
from ember.core.jobs import JobState
from ember.core.workers import WorkerState
from ember.store.facade import Store
from ember.store.jobs import NewJob
from tests.integration.store_fixtures import add_worker
from tests.support.harness import Harness, build


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def ready_worker(h: Harness, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An endpoint with one IDLE worker (started, then its first take found nothing)."""
    ep = await h.deploy("dispatch", workersMin=1, workersMax=1, **fields)
    await h.tick()
    [worker] = await h.workers(ep["id"])
    assert (await h.take(ep["id"], worker["id"])).status_code == 204
    [worker] = await h.workers(ep["id"])
    assert worker["state"] == "IDLE"
    return ep, worker


async def until(holds: Callable[[], Any], what: str) -> None:
    """Wait (at most 5 s) until `holds()` is true."""
    for _ in range(500):
        if holds():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def held_open(h: Harness, endpoint_id: str) -> None:
    """Until a job-take (or a job-done asking for more) waits on the endpoint."""
    dispatch = h.app.state.runtime.signals.dispatch
    await until(lambda: dispatch.takers(endpoint_id), "a held job-take")


async def waiting_take(h: Harness, endpoint_id: str, worker_id: str) -> asyncio.Task[Any]:
    h.app.state.runtime.limits.take_hold_s = 10.0
    task = asyncio.ensure_future(h.take(endpoint_id, worker_id))
    await held_open(h, endpoint_id)
    return task


async def done(
    h: Harness, ep: dict[str, Any], worker: dict[str, Any], job_id: str, body: Any, take: Any
) -> Any:
    """A worker's job-done that asks for its next jobs (`take`), as Ember's SDK sends it."""
    url = f"/v2/{ep['id']}/job-done/{worker['id']}/{job_id}?isStream=false&take={take}"
    return await h.api.post(url, json=body, headers=h.worker_headers(worker["id"]))


async def queue(h: Harness, ep: dict[str, Any], count: int) -> list[str]:
    """Queue `count` jobs with inputs {"i": 0}, {"i": 1}, …; returns their ids."""
    return [
        (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"i": i}})).json()["id"] for i in range(count)
    ]


def history(h: Harness, worker_id: str) -> list[tuple[str, str]]:
    return [(e["to_state"], e["reason"]) for e in h.store.workers.history(worker_id)]


def test_a_job_submitted_while_a_take_waits_is_handed_to_that_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        take = await waiting_take(h, ep["id"], worker["id"])
        h.clock.advance(2)
        job = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"n": 7}})).json()
        taken = await asyncio.wait_for(take, 5)
        assert taken.status_code == 200
        assert taken.json() == {"id": job["id"], "input": {"n": 7}}
        row = h.store.jobs.get(job["id"])
        assert row is not None
        assert row["state"] == "IN_PROGRESS" and row["worker_id"] == worker["id"]
        assert row["started_at"] == row["created_at"]  # no time in the queue
        assert row["deadline_at"] == row["started_at"] + row["execution_timeout_ms"] / 1000
        assert history(h, worker["id"])[-1] == ("RUNNING", "took a job")
        status = (await h.api.get(f"/v2/{ep['id']}/status/{job['id']}")).json()
        assert status["status"] == "IN_PROGRESS" and status["delayTime"] == 0
        await h.api.aclose()

    run(scenario())


def test_a_runsync_gets_the_record_the_job_done_finished_it_with(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        take = await waiting_take(h, ep["id"], worker["id"])
        sync = asyncio.ensure_future(h.api.post(f"/v2/{ep['id']}/runsync", json={"input": {"n": 1}}))
        job = (await asyncio.wait_for(take, 5)).json()
        h.clock.advance(1.5)
        done = await h.done(ep["id"], worker["id"], job["id"], {"output": {"sum": 3}})
        assert done.json() == {"status": "ok"}
        answer = (await asyncio.wait_for(sync, 5)).json()
        status = (await h.api.get(f"/v2/{ep['id']}/status/{job['id']}")).json()
        assert answer == status
        assert answer == {
            "id": job["id"],
            "status": "COMPLETED",
            "delayTime": 0,
            "executionTime": 1500,
            "workerId": worker["id"],
            "output": {"sum": 3},
        }
        await h.api.aclose()

    run(scenario())


def test_job_done_with_take_answers_with_the_next_queued_jobs(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        ids = await queue(h, ep, 3)
        first = (await h.take(ep["id"], worker["id"])).json()
        assert first["id"] == ids[0]
        answer = (await done(h, ep, worker, ids[0], {"output": 1}, 2)).json()
        assert answer["status"] == "ok"
        assert [j["id"] for j in answer["jobs"]] == ids[1:]
        assert [j["input"] for j in answer["jobs"]] == [{"i": 1}, {"i": 2}]
        assert [h.store.jobs.get(i)["state"] for i in ids] == ["COMPLETED", "IN_PROGRESS", "IN_PROGRESS"]
        # It went straight on to its next jobs: Running throughout, no Idle in between.
        assert history(h, worker["id"])[-1] == ("RUNNING", "took a job")
        answer = (await done(h, ep, worker, ids[1], {"output": 2}, 1)).json()
        assert answer == {"status": "ok"}  # nothing queued; it still holds ids[2]
        assert h.store.workers.get(worker["id"])["state"] == "RUNNING"
        # A repeated report is ignored and hands out nothing.
        answer = (await done(h, ep, worker, ids[1], {"output": 2}, 1)).json()
        assert answer == {"status": "ignored"}
        answer = (await done(h, ep, worker, ids[2], {"output": 3}, 1)).json()
        assert answer == {"status": "ok"}
        assert h.store.workers.get(worker["id"])["state"] == "IDLE"
        await h.api.aclose()

    run(scenario())


def test_a_worker_that_asks_to_stop_is_handed_nothing_more(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        ids = await queue(h, ep, 2)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == ids[0]
        answer = (await done(h, ep, worker, ids[0], {"output": 1, "stopPod": True}, 1)).json()
        assert answer == {"status": "ok"}
        assert h.store.jobs.get(ids[1])["state"] == "IN_QUEUE"
        await h.api.aclose()

    run(scenario())


def test_a_worker_that_asks_to_stop_is_replaced_at_once_within_workers_max(tmp_path: Path) -> None:
    """stopPod from a worker that then keeps polling (the runpod SDK's way): its waiting take ends empty,
    and the next lifecycle pass stops it and starts a replacement for the queued job, on workersMax 1."""

    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("recycle", workersMax=1)
        [job_id, queued_id] = await queue(h, ep, 2)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == job_id
        answer = await done(h, ep, worker, job_id, {"output": 1, "stopPod": True}, 0)
        assert answer.json() == {"status": "ok"}
        assert h.store.workers.get(worker["id"])["recycle"]  # type: ignore[index]
        assert (await h.take(ep["id"], worker["id"])).status_code == 204
        await h.tick()
        workers = {w["id"]: w for w in await h.workers(ep["id"])}
        assert workers[worker["id"]]["state"] == "STOPPED"
        assert "stopPod" in history(h, worker["id"])[-1][1]
        [fresh] = [w for w in workers.values() if w["state"] != "STOPPED"]
        assert (await h.take(ep["id"], fresh["id"])).json()["id"] == queued_id
        await h.api.aclose()

    run(scenario())


def test_bad_take_values_are_clear_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        job = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {}})).json()
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == job["id"]
        resp = await done(h, ep, worker, job["id"], {"output": 1}, "lots")
        assert resp.status_code == 400 and "take must be an integer" in resp.json()["error"]
        assert h.store.jobs.get(job["id"])["state"] == "IN_PROGRESS"  # nothing recorded
        await h.api.aclose()

    run(scenario())


def _job(i: int) -> NewJob:
    return NewJob(f"job-{i}", "ep-1", "acct-1", "{}", None, None, False, 60_000, 600_000, False)


def _worker(store: Store, state: WorkerState, worker_id: str = "wk-1") -> None:
    add_worker(store, state, worker_id)


def test_hand_over_records_the_job_taken_and_the_worker_running(store: Store) -> None:
    _worker(store, WorkerState.IDLE)
    assert store.hand_over(_job(1), "wk-1", 5.0) is True
    row = store.jobs.get("job-1")
    assert row is not None and row["state"] == "IN_PROGRESS" and row["worker_id"] == "wk-1"
    assert row["started_at"] == 5.0 and row["deadline_at"] == 65.0
    worker = store.workers.get("wk-1")
    assert worker is not None and worker["state"] == "RUNNING" and worker["last_seen_at"] == 5.0
    assert store.jobs.held_by("wk-1") == ["job-1"]
    report = store.report(
        "job-1", "wk-1", JobState.COMPLETED, "1", None, 6.0, 1800, 60, take_endpoint="ep-1", take=1
    )
    assert report.outcome == "done" and not report.next_jobs
    assert (
        report.finished is not None and report.finished.started_at == 5.0 and not report.finished.has_webhook
    )
    # It asked for more and may take them: it stays RUNNING until the route settles it, as of the finish.
    assert report.may_take and store.workers.get("wk-1")["state"] == "RUNNING"  # type: ignore[index]
    assert store.workers.settle_late("wk-1", 6.0) is True
    worker = store.workers.get("wk-1")
    assert worker is not None and worker["state"] == "IDLE" and worker["state_since"] == 6.0
    assert [(e["to_state"], e["at"]) for e in store.workers.history("wk-1")][-1] == ("IDLE", 6.0)


def test_a_result_with_a_take_claims_its_endpoints_queued_jobs_and_only_then(store: Store) -> None:
    _worker(store, WorkerState.IDLE)
    store.hand_over(_job(1), "wk-1", 5.0)
    # Nothing queued: the result says so, and no claim is tried.
    report = store.report(
        "job-1", "wk-1", JobState.COMPLETED, "1", None, 6.0, 1800, 60, take_endpoint="ep-1", take=2
    )
    assert report.finished is not None and not report.finished.queued and report.next_jobs == ()
    store.hand_over(_job(2), "wk-1", 7.0)
    for i in (3, 4, 5):
        store.jobs.submit(_job(i), 7.0 + i / 10)  # queued on ep-1
    other = NewJob("job-9", "ep-2", "acct-1", "{}", None, None, False, 60_000, 600_000, False)
    store.jobs.submit(other, 7.0)  # and one on another endpoint
    report = store.report(
        "job-2", "wk-1", JobState.COMPLETED, "2", None, 8.0, 1800, 60, take_endpoint="ep-1", take=2
    )
    assert report.finished is not None and report.finished.queued
    assert [c.id for c in report.next_jobs] == ["job-3", "job-4"]
    assert store.jobs.get("job-5")["state"] == "IN_QUEUE"  # type: ignore[index]
    assert store.jobs.get("job-9")["state"] == "IN_QUEUE"  # type: ignore[index]


def test_a_result_without_a_take_settles_the_worker_at_once(store: Store) -> None:
    _worker(store, WorkerState.IDLE)
    store.hand_over(_job(1), "wk-1", 5.0)
    report = store.report("job-1", "wk-1", JobState.COMPLETED, "1", None, 6.0, 1800, 60)
    assert report.outcome == "done" and not report.may_take
    assert store.workers.get("wk-1")["state"] == "IDLE"  # type: ignore[index]


def test_a_late_settle_keeps_transitions_in_order_and_billed_spans_unchanged(store: Store) -> None:
    _worker(store, WorkerState.IDLE)
    store.hand_over(_job(1), "wk-1", 5.0)
    store.report("job-1", "wk-1", JobState.COMPLETED, "1", None, 6.0, 1800, 60, take_endpoint="ep-1", take=1)
    seen = max(e["id"] for e in store.workers.history("wk-1"))
    # A meter billed the worker up to 7.0 (as RUNNING) before the settle came: the settle is stamped there.
    assert store.metering.save_meter("wk-1", None, 7.0, 0, [], 7.0, store.accounts, seen_event_id=seen)
    assert store.workers.settle_late("wk-1", 6.0) is True
    assert store.workers.get("wk-1")["state_since"] == 7.0  # type: ignore[index]
    # A settle already made (or no longer RUNNING) changes nothing.
    assert store.workers.settle_late("wk-1", 6.0) is False


def test_the_meter_does_not_save_a_span_that_a_late_transition_landed_in(store: Store) -> None:
    _worker(store, WorkerState.IDLE)
    store.hand_over(_job(1), "wk-1", 5.0)
    store.report("job-1", "wk-1", JobState.COMPLETED, "1", None, 6.0, 1800, 60, take_endpoint="ep-1", take=1)
    seen = max(e["id"] for e in store.workers.history("wk-1"))
    # The meter read the events (worker RUNNING), then the late settle committed IDLE as of 6.0.
    assert store.workers.settle_late("wk-1", 6.0) is True
    assert not store.metering.save_meter("wk-1", None, 8.0, 0, [], 8.0, store.accounts, seen_event_id=seen)
    # Read again, the span saves; a transition after the span does not stop it.
    seen = max(e["id"] for e in store.workers.history("wk-1"))
    store.hand_over(_job(2), "wk-1", 9.0)
    assert store.metering.save_meter("wk-1", None, 8.0, 0, [], 8.0, store.accounts, seen_event_id=seen)


def test_hand_over_to_a_worker_that_may_no_longer_take_queues_the_job(store: Store) -> None:
    _worker(store, WorkerState.OUTDATED)
    assert store.hand_over(_job(1), "wk-1", 5.0) is False
    row = store.jobs.get("job-1")
    assert row is not None and row["state"] == "IN_QUEUE" and row["worker_id"] is None
    assert store.workers.get("wk-1")["state"] == "OUTDATED"  # type: ignore[index]
    assert store.take("ep-1", "wk-1", 1, 6.0, mark_running=False) == []
    _worker(store, WorkerState.IDLE, "wk-2")
    assert store.take("ep-1", "wk-2", 1, 6.0, mark_running=False)[0].id == "job-1"


def test_a_job_already_delivered_is_recorded_as_the_workers_whatever_its_state(store: Store) -> None:
    # The SQLite path hands the job to the waiting take before it commits it: the commit then records
    # what happened, even if the worker may no longer be handed jobs, so that the job runs only once.
    _worker(store, WorkerState.OUTDATED)
    assert store.hand_over(_job(1), "wk-1", 5.0, delivered=True) is False
    row = store.jobs.get("job-1")
    assert row is not None and row["state"] == "IN_PROGRESS" and row["worker_id"] == "wk-1"
    assert store.take("ep-1", "wk-2", 1, 6.0, mark_running=False) == []
    assert store.workers.get("wk-1")["state"] == "OUTDATED"  # type: ignore[index]


def test_a_recycled_worker_is_neither_handed_nor_claims_a_job(store: Store) -> None:
    _worker(store, WorkerState.IDLE)
    assert store.hand_over(_job(1), "wk-1", 5.0) is True
    report = store.report(
        "job-1",
        "wk-1",
        JobState.COMPLETED,
        "1",
        None,
        6.0,
        1800,
        60,
        take_endpoint="ep-1",
        take=1,
        recycle=True,
    )
    assert report.outcome == "done" and not report.may_take and not report.next_jobs
    assert store.workers.get("wk-1")["recycle"]  # type: ignore[index]
    assert store.hand_over(_job(2), "wk-1", 7.0) is False
    assert store.take("ep-1", "wk-1", 1, 8.0, mark_running=True) == []
    assert store.jobs.get("job-2")["state"] == "IN_QUEUE"  # type: ignore[index]


def test_a_job_handed_over_but_never_received_is_requeued_once_the_pings_leave_it_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        ids = await queue(h, ep, 2)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == ids[0]
        # The answer to this job-done (with the next job) is lost: the worker never sees ids[1].
        resp = await done(h, ep, worker, ids[0], {"output": 1}, 1)
        assert [j["id"] for j in resp.json()["jobs"]] == [ids[1]]
        grace = h.app.state.lifecycle.cfg.dropped_grace_s
        h.clock.advance(1)
        await h.ping(ep["id"], worker["id"])  # holds nothing, it says
        await h.tick()
        assert h.store.jobs.get(ids[1])["state"] == "IN_PROGRESS"  # not yet: a result may be on its way
        h.clock.advance(grace)
        await h.ping(ep["id"], worker["id"])
        await h.tick()
        row = h.store.jobs.get(ids[1])
        assert row["state"] == "IN_QUEUE" and row["worker_id"] is None and row["requeues"] == 1
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == ids[1]
        await h.api.aclose()

    run(scenario())


def test_a_job_done_asking_for_more_is_held_and_handed_the_next_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        [first] = await queue(h, ep, 1)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == first
        h.app.state.runtime.limits.take_hold_s = 10.0
        held = asyncio.ensure_future(done(h, ep, worker, first, {"output": 1}, 1))
        await held_open(h, ep["id"])
        finished = h.store.jobs.get(first)
        assert finished["state"] == "COMPLETED"  # recorded before the hold
        # Not billed while it waits: IDLE after the grace, as of the job's finish.
        await until(lambda: h.store.workers.get(worker["id"])["state"] == "IDLE", "the worker to settle")
        assert h.store.workers.get(worker["id"])["state_since"] == finished["completed_at"]
        [second] = await queue(h, ep, 1)
        answer = (await asyncio.wait_for(held, 5)).json()
        assert answer["status"] == "ok" and [j["id"] for j in answer["jobs"]] == [second]
        assert h.store.jobs.get(second)["worker_id"] == worker["id"]
        assert h.store.workers.get(worker["id"])["state"] == "RUNNING"
        await h.api.aclose()

    run(scenario())


def test_a_job_handed_within_the_settle_grace_keeps_the_worker_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        [first] = await queue(h, ep, 1)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == first
        h.app.state.runtime.limits.settle_grace_s = 30.0
        events_before = len(h.store.workers.history(worker["id"]))
        held = asyncio.ensure_future(done(h, ep, worker, first, {"output": 1}, 1))
        await held_open(h, ep["id"])
        assert h.store.workers.get(worker["id"])["state"] == "RUNNING"
        [second] = await queue(h, ep, 1)
        answer = (await asyncio.wait_for(held, 5)).json()
        assert [j["id"] for j in answer["jobs"]] == [second]
        # No IDLE and RUNNING pair was written for the gap between the two jobs.
        assert len(h.store.workers.history(worker["id"])) == events_before
        assert h.store.workers.get(worker["id"])["state"] == "RUNNING"
        await h.api.aclose()

    run(scenario())


def test_a_held_job_done_ends_when_the_worker_is_retired(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        [first] = await queue(h, ep, 1)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == first
        h.app.state.runtime.limits.take_hold_s = 30.0
        held = asyncio.ensure_future(done(h, ep, worker, first, {"output": 1}, 1))
        signals = h.app.state.runtime.signals
        await held_open(h, ep["id"])
        h.store.workers.update(worker["id"], recycle=True)
        signals.retire(worker["id"])
        answer = (await asyncio.wait_for(held, 5)).json()
        assert answer == {"status": "ok"}
        [second] = await queue(h, ep, 1)
        assert h.store.jobs.get(second)["state"] == "IN_QUEUE"
        await h.api.aclose()

    run(scenario())


def test_a_worker_still_reporting_a_cancelled_job_is_told_again_to_stop_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        [job] = await queue(h, ep, 1)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == job
        assert (await h.api.post(f"/v2/{ep['id']}/cancel/{job}")).json()["status"] == "CANCELLED"
        stop_url = f"/v2/{ep['id']}/job-stop/{worker['id']}"
        headers = h.worker_headers(worker["id"])
        assert (await h.api.get(stop_url, headers=headers)).json() == {"jobsToStop": [job]}
        # That stop reached the worker before it had the job running, so it still runs it and says so.
        ping = f"/v2/{ep['id']}/ping/{worker['id']}?job_id={job}"
        assert (await h.api.get(ping, headers=headers)).status_code == 200
        assert (await h.api.get(stop_url, headers=headers)).json() == {"jobsToStop": [job]}
        # Once it no longer lists the job, nothing more is said.
        assert (await h.api.get(f"/v2/{ep['id']}/ping/{worker['id']}", headers=headers)).status_code == 200
        assert (await h.api.get(stop_url, headers=headers)).status_code == 204
        await h.api.aclose()

    run(scenario())


def _sync_job(i: int) -> NewJob:
    return NewJob(f"sync-{i}", "ep-1", "acct-1", "{}", None, None, False, 60_000, 600_000, True)


def test_a_deferred_hand_over_commits_with_the_result_or_on_its_own(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")
    other = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")  # another connection: sees only commits
    try:
        _worker(store, WorkerState.RUNNING)
        store.hand_over_later(_sync_job(1), "wk-1", 5.0)
        since = store.raw.deferred_since
        store.hand_over_later(_sync_job(2), "wk-1", 5.0)
        assert store.raw.deferred == 2 and store.raw.deferred_since == since  # the oldest one's time
        # The caller's timer commits them once the oldest has waited its time; until then, it says
        # how much longer to wait.
        assert 3500 < store.flush_due(3600.0) <= 3600
        assert store.raw.deferred == 2 and other.jobs.get("sync-1") is None
        # The result's transaction records the job first, then its end: one commit for both.
        report = store.report("sync-1", "wk-1", JobState.COMPLETED, "1", None, 6.0, 1800, 60)
        assert report.outcome == "done"
        done = other.jobs.get("sync-1")
        assert done is not None and done["state"] == "COMPLETED" and done["started_at"] == 5.0
        job = other.jobs.get("sync-2")  # it went with that transaction too
        assert job is not None and job["state"] == "IN_PROGRESS" and job["worker_id"] == "wk-1"
        # A read on the connection sees a deferred write (it is committed first); `flush` commits one.
        store.hand_over_later(_sync_job(3), "wk-1", 7.0)
        assert store.jobs.get("sync-3") is not None and other.jobs.get("sync-3") is not None
        store.hand_over_later(_sync_job(4), "wk-1", 7.0)
        store.raw.flush()
        assert other.jobs.get("sync-4") is not None
        # A transaction that rolls back keeps the deferred writes it took for the next one.
        store.hand_over_later(_sync_job(5), "wk-1", 8.0)
        since = store.raw.deferred_since
        with pytest.raises(RuntimeError), store.raw.write():
            raise RuntimeError("the caller's transaction fails")
        assert other.jobs.get("sync-5") is None
        assert store.raw.deferred == 1 and store.raw.deferred_since == since  # as old as it was
        assert store.flush_due(0.0) == 0.0  # due: committed now
        assert other.jobs.get("sync-5") is not None and store.raw.deferred == 0
        # One that fails (its job id is taken) is dropped, and the others still commit.
        store.hand_over_later(_sync_job(5), "wk-1", 9.0)
        store.hand_over_later(_sync_job(6), "wk-1", 9.0)
        store.raw.flush()
        assert other.jobs.get("sync-6") is not None and other.jobs.get("sync-5")["started_at"] == 8.0  # type: ignore[index]
        # Closing the store commits what is still deferred.
        store.hand_over_later(_sync_job(7), "wk-1", 10.0)
        store.close()
        assert other.jobs.get("sync-7") is not None
    finally:
        other.close()
        store.close()


def test_a_reader_inside_another_open_write_transaction_goes_on_without_the_deferred_writes(
    tmp_path: Path,
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")
    try:
        _worker(store, WorkerState.RUNNING)
        with store.jobs.engine.begin() as conn:  # another connection holds the database's write lock
            conn.execute(text("SELECT 1"))
            store.hand_over_later(_sync_job(1), "wk-1", 5.0)
            began = time.monotonic()
            # A read on the engine does not wait for that lock to commit them (SQLite would wait 30 s
            # for it, then fail): it reads without them, as a reader in another process would.
            assert "IN_PROGRESS" not in store.jobs.counts("ep-1")
            assert time.monotonic() - began < 10 and store.raw.deferred == 1
        assert store.jobs.counts("ep-1").get("IN_PROGRESS") == 1 and store.raw.deferred == 0
    finally:
        store.close()


def test_a_queued_runsync_job_is_written_by_the_claim_that_takes_it(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")
    other = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")  # another connection: sees only commits
    try:
        _worker(store, WorkerState.RUNNING)
        assert store.hand_over(_sync_job(0), "wk-1", 4.0)  # the worker runs job 0
        store.queue_later(_sync_job(1), 5.0)
        assert store.raw.deferred == 1 and other.jobs.get("sync-1") is None
        # The worker's result asks for more: its transaction writes the queued job, then claims it.
        report = store.report(
            "sync-0", "wk-1", JobState.COMPLETED, "0", None, 6.0, 1800, 60, take_endpoint="ep-1", take=1
        )
        assert [job.id for job in report.next_jobs] == ["sync-1"]
        row = other.jobs.get("sync-1")
        assert row is not None and row["state"] == "IN_PROGRESS" and row["worker_id"] == "wk-1"
        # A look at the queue (a take's) writes a job queued there first, and finds it.
        store.queue_later(_sync_job(2), 7.0)
        assert store.jobs.any_queued("ep-1") and store.raw.deferred == 0
        row = other.jobs.get("sync-2")
        assert row is not None and row["state"] == "IN_QUEUE"
    finally:
        other.close()
        store.close()


def test_a_queued_runsync_job_waits_its_whole_moment_for_a_claim_before_it_is_written_alone(
    tmp_path: Path,
) -> None:
    # One timer commits what is deferred, once the oldest deferred write has waited its time: a write
    # that another transaction took first (as each result's claim does under load) leaves that timer
    # nothing to commit early, and a job deferred after it still gets its whole moment.
    async def scenario() -> None:
        h = build(tmp_path)
        other = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")  # another connection: sees only commits
        handoff, raw = h.app.runtime.handoff, h.store.raw
        handoff.defer_s = 1.0
        try:
            ep, _ = await ready_worker(h)  # no take waits: runsync jobs are queued
            url = f"/v2/{ep['id']}/runsync?wait=20000"
            first = asyncio.ensure_future(h.api.post(url, json={"input": {"i": 0}}))
            await until(lambda: raw.deferred == 1, "the first job queued, deferred")
            first_at = raw.deferred_since
            assert h.store.jobs.any_queued(ep["id"]) and raw.deferred == 0  # a look at the queue took it
            first.cancel()  # its client leaves (a waiting runsync looks at its job each second: a read)
            await asyncio.sleep(0.3)
            second = asyncio.ensure_future(h.api.post(url, json={"input": {"i": 1}}))
            await until(lambda: raw.deferred == 1, "the second job queued, deferred")
            second_at = raw.deferred_since
            await asyncio.sleep(max(0.0, first_at + 1.2 - time.monotonic()))  # the timer set for the first
            waited = time.monotonic() - second_at
            if waited < 1.0:  # the loop runs this check; a commit of the second needs its whole second
                assert raw.deferred == 1 and other.jobs.counts(ep["id"]).get("IN_QUEUE") == 1
            await until(lambda: raw.deferred == 0, "the second job written on its own")
            assert time.monotonic() - second_at >= 1.0
            assert other.jobs.counts(ep["id"]).get("IN_QUEUE") == 2
            second.cancel()
        finally:
            other.close()
            await h.api.aclose()

    run(scenario())


def test_the_deferred_writes_timer_runs_on_the_servers_event_loop(tmp_path: Path) -> None:
    # uvloop (the server's loop) sets a timer due at once as a plain handle, which has no due time.
    async def scenario() -> None:
        h = build(tmp_path)
        other = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")  # another connection: sees only commits
        h.app.runtime.handoff.defer_s = 0.0
        try:
            ep, _ = await ready_worker(h)  # no take waits: runsync jobs are queued
            url = f"/v2/{ep['id']}/runsync?wait=20000"
            waiting = [asyncio.ensure_future(h.api.post(url, json={"input": {"i": i}})) for i in range(3)]
            await until(lambda: other.jobs.counts(ep["id"]).get("IN_QUEUE") == 3, "three jobs written")
            assert not any(w.done() for w in waiting)  # none failed
            for w in waiting:
                w.cancel()
        finally:
            other.close()
            await h.api.aclose()

    uvloop.run(scenario())


def test_a_runsync_job_handed_to_a_running_worker_is_recorded_with_its_result(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        # What is deferred is looked at below: its flush, 5 ms later in real time, must not come first
        # on a busy machine (a write or a read commits it as well).
        h.app.runtime.handoff.defer_s = 60.0
        ep, worker = await ready_worker(h)
        take = await waiting_take(h, ep["id"], worker["id"])
        first = asyncio.ensure_future(h.api.post(f"/v2/{ep['id']}/runsync", json={"input": {"i": 0}}))
        job = (await take).json()
        # The worker is RUNNING now and asks for more with its result: the next runsync job is
        # handed to that held job-done, and recorded only with its result.
        answer = asyncio.ensure_future(done(h, ep, worker, job["id"], {"output": 0}, 1))
        assert (await first).json()["output"] == 0
        await held_open(h, ep["id"])
        second = asyncio.ensure_future(h.api.post(f"/v2/{ep['id']}/runsync", json={"input": {"i": 1}}))
        nxt = (await answer).json()["jobs"][0]
        assert h.store.raw.deferred == 1  # handed over, not yet written
        more = asyncio.ensure_future(done(h, ep, worker, nxt["id"], {"output": 1}, 0))
        answered = (await second).json()
        assert answered["id"] == nxt["id"] and answered["output"] == 1
        # The client had its answer before any write: the hand-over and the result wait together.
        assert (await more).status_code == 200 and h.store.raw.deferred == 2
        # Every reader of the process sees them: the engine's connections commit them first.
        assert h.store.jobs.counts(ep["id"]).get("COMPLETED") == 2 and h.store.raw.deferred == 0
        row = h.store.jobs.get(nxt["id"])
        assert row is not None and row["state"] == "COMPLETED" and row["worker_id"] == worker["id"]
        assert row["output"] == "1" and row["completed_at"] is not None
        worker_row = h.store.workers.get(worker["id"])
        assert worker_row is not None and worker_row["state"] == "IDLE"  # it asked for no more
        # One not answered within the moment is written on its own.
        h.app.runtime.handoff.defer_s = DEFER_S
        take = await waiting_take(h, ep["id"], worker["id"])
        third = asyncio.ensure_future(h.api.post(f"/v2/{ep['id']}/runsync", json={"input": {"i": 2}}))
        job = (await take).json()
        await until(lambda: h.store.jobs.get(job["id"]) is not None, "the job written")
        await done(h, ep, worker, job["id"], {"output": 2}, 0)
        assert (await third).json()["output"] == 2
        await h.api.aclose()

    run(scenario())


def test_a_worker_failed_while_its_take_waits_is_handed_no_new_job(tmp_path: Path) -> None:
    # On SQLite the hand-off trusts the waiting takes: each state that takes no job is told to the
    # dispatcher as it is recorded, so a failed worker's held take waits no more for a job, and the
    # next job is queued.
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        take = await waiting_take(h, ep["id"], worker["id"])
        row = h.store.workers.get(worker["id"])
        assert row is not None
        await h.app.state.lifecycle.ops.fail(row, "it stopped answering", h.clock.now())
        assert not h.app.state.runtime.signals.dispatch.takers(ep["id"])
        [job] = await queue(h, ep, 1)
        assert h.store.jobs.get(job)["state"] == "IN_QUEUE"  # type: ignore[index]
        assert h.store.workers.get(worker["id"])["state"] == "UNHEALTHY"  # type: ignore[index]
        await asyncio.sleep(0.1)
        assert not take.done()  # held to the end of its hold, then answered with no job
        take.cancel()
        await h.api.aclose()

    run(scenario())


def test_a_worker_failed_while_its_result_waits_for_more_is_handed_no_new_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker = await ready_worker(h)
        [first] = await queue(h, ep, 1)
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == first
        limits = h.app.state.runtime.limits
        limits.take_hold_s, limits.settle_grace_s = 10.0, 5.0  # held, the worker still RUNNING
        held = asyncio.ensure_future(done(h, ep, worker, first, {"output": 1}, 1))
        await held_open(h, ep["id"])
        row = h.store.workers.get(worker["id"])
        assert row is not None and row["state"] == "RUNNING"
        await h.app.state.lifecycle.ops.fail(row, "it stopped answering", h.clock.now())
        await asyncio.sleep(0.05)  # the held result looks again before the next job comes
        [second] = await queue(h, ep, 1)
        answer = (await asyncio.wait_for(held, 5)).json()
        assert answer["status"] == "ok" and "jobs" not in answer
        assert h.store.jobs.get(second)["state"] == "IN_QUEUE"  # type: ignore[index]
        await h.api.aclose()

    run(scenario())
