"""/run with an `Idempotency-Key`: a retried submit returns the first job instead of queuing another,
per account and endpoint, for a day; on each real database, through the real app on a manual clock."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

from ember.core.jobs import IDEMPOTENCY_WINDOW_S, RETENTION_RUN_S
from ember.store.facade import Store
from ember.store.jobs import NewJob
from tests.support.harness import Harness, build


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def submit(h: Harness, endpoint_id: str, key: str | None, n: int = 1) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await h.api.post(f"/v2/{endpoint_id}/run", json={"input": {"n": n}}, headers=headers)


async def queued(h: Harness, endpoint_id: str) -> int:
    return int((await h.api.get(f"/v2/{endpoint_id}/health")).json()["jobs"]["inQueue"])


def test_the_same_key_returns_the_first_job_and_queues_nothing_more(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        ep = await h.deploy("idem", workersMax=0)
        first = await submit(h, ep["id"], "order-17")
        again = await submit(h, ep["id"], "order-17", n=2)  # a retry; its body is not looked at
        assert first.status_code == again.status_code == 200
        assert again.json() == {"id": first.json()["id"], "status": "IN_QUEUE"}
        other = await submit(h, ep["id"], "order-18")
        plain = await submit(h, ep["id"], None)
        assert len({first.json()["id"], other.json()["id"], plain.json()["id"]}) == 3
        assert await queued(h, ep["id"]) == 3
        # The key belongs to the endpoint: the same key elsewhere queues a job there.
        ep2 = await h.deploy("idem2", workersMax=0)
        elsewhere = await submit(h, ep2["id"], "order-17")
        assert elsewhere.json()["id"] != first.json()["id"] and await queued(h, ep2["id"]) == 1
        # A day later the key is free again (and the reaper forgets it).
        h.clock.advance(IDEMPOTENCY_WINDOW_S + 1)
        await h.app.state.runner.reaper.tick()
        later = await submit(h, ep["id"], "order-17")
        assert later.json()["id"] != first.json()["id"]
        await h.api.aclose()

    run(scenario())


def test_a_key_whose_job_record_expired_is_a_conflict_not_a_new_job(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        ep = await h.deploy("idem", workersMin=1, workersMax=1)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        job = (await submit(h, ep["id"], "k1")).json()
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == job["id"]
        assert (await h.done(ep["id"], worker["id"], job["id"], {"output": 1})).status_code == 200
        done = await submit(h, ep["id"], "k1")
        assert done.json() == {"id": job["id"], "status": "COMPLETED"}
        h.clock.advance(RETENTION_RUN_S + 1)
        await h.app.state.runner.reaper.tick()  # the job's record is purged; the key is kept a day
        gone = await submit(h, ep["id"], "k1")
        assert gone.status_code == 409 and job["id"] in gone.json()["error"], gone.text
        assert await queued(h, ep["id"]) == 0
        await h.api.aclose()

    run(scenario())


def test_a_bad_key_is_a_400_that_queues_nothing(store: Store, tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        ep = await h.deploy("idem", workersMax=0)
        for bad in ("x" * 256, "two words", "tab\there"):
            resp = await submit(h, ep["id"], bad)
            assert resp.status_code == 400, resp.text
            body = resp.json()
            assert body["code"] == "invalid_input" and body["problems"][0]["field"] == "Idempotency-Key"
        assert await queued(h, ep["id"]) == 0
        await h.api.aclose()

    run(scenario())


def new_job(job_id: str, account_id: str = "acct-1") -> NewJob:
    return NewJob(job_id, "ep-1", account_id, "{}", None, None, False, 600_000, 60_000, False)


def test_concurrent_submits_with_one_key_queue_one_job(store: Store) -> None:
    """Eight threads (each its own connection on PostgreSQL) race one key: one job, one id for all."""
    ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def one() -> None:
        job = NewJob(
            f"job-{uuid.uuid4().hex}", "ep-1", "acct-1", "{}", None, None, False, 600_000, 60_000, False
        )
        start.wait()
        first = store.idempotency.submit_once(job, "same", 1000.0, IDEMPOTENCY_WINDOW_S)
        with lock:
            ids.append(first or job.id)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(ids) == 8 and len(set(ids)) == 1
    assert store.jobs.counts("ep-1").get("IN_QUEUE") == 1
    # Another account's key of the same name is its own.
    job = new_job("job-other", "acct-2")
    assert store.idempotency.submit_once(job, "same", 1000.0, IDEMPOTENCY_WINDOW_S) is None
