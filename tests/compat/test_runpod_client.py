"""Client-side compatibility: the unmodified `runpod` client (sync `Endpoint` and `AsyncioEndpoint`)
against a real Ember server: jobs, cancel, retry, purge, health, ttl, webhooks, keys, body limits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.compat.conftest import Endpoints, job_status, post_raw, wait_final, worker_key
from tests.support.live import LiveServer, wait_for
from tests.support.webhook_sink import webhook_sink

MB = 1024 * 1024


@pytest.fixture(scope="module")
def queue_only(endpoints: Endpoints) -> str:
    """An endpoint that never gets a worker (workersMax 0): its jobs stay IN_QUEUE."""
    return endpoints.get("echo", "runpod", workersMax=0)


@pytest.fixture(scope="module", autouse=True)
def _deploy_all_first(endpoints: Endpoints, queue_only: str) -> None:
    for fixture in ("echo", "raises", "generator", "async_generator", "fails_once"):
        endpoints.get(fixture, "runpod")


def _health(server: LiveServer, endpoint_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v2/{endpoint_id}/health")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


# ---- sync client -----------------------------------------------------------------------------------
def test_sync_endpoint_run_status_output_and_run_sync(
    server: LiveServer, endpoints: Endpoints, rp: Any
) -> None:
    ep = rp.Endpoint(endpoints.get("echo", "runpod"))
    job = ep.run({"prompt": "hi"})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert job.output(timeout=60) == {"echo": {"prompt": "hi"}, "keys": ["id", "input"]}
    assert job.status() == "COMPLETED"
    assert ep.run_sync({"prompt": "x"}, timeout=60) == {"echo": {"prompt": "x"}, "keys": ["id", "input"]}


def test_run_passes_a_full_body_through_and_wraps_a_falsy_input_again(
    server: LiveServer, endpoints: Endpoints, rp: Any
) -> None:
    ep = rp.Endpoint(endpoints.get("echo", "runpod"))
    full = ep.run({"input": {"x": 1}, "policy": {"executionTimeout": 60000, "ttl": 600000}})
    assert full.output(timeout=60)["echo"] == {"x": 1}
    wrapped = ep.run({"input": {}})  # the SDK sends {"input": {"input": {}}} (spec §6.21)
    assert wrapped.output(timeout=60)["echo"] == {"input": {}}


def test_run_sync_of_a_raising_handler_returns_none_and_status_keeps_the_error(
    server: LiveServer, endpoints: Endpoints, rp: Any
) -> None:
    endpoint_id = endpoints.get("raises", "runpod")
    before = _health(server, endpoint_id)["jobs"]["failed"]
    assert rp.Endpoint(endpoint_id).run_sync({"a": 1}, timeout=60) is None
    job = rp.Endpoint(endpoint_id).run({"a": 2})
    rec = wait_final(server, endpoint_id, job.job_id)
    assert rec["status"] == "FAILED" and "boom" in rec["error"]
    assert job.status() == "FAILED"
    assert _health(server, endpoint_id)["jobs"]["failed"] == before + 2


def test_health_counts_completed_queued_and_workers(
    server: LiveServer, endpoints: Endpoints, rp: Any, queue_only: str
) -> None:
    endpoint_id = endpoints.get("echo", "runpod")
    before = rp.Endpoint(endpoint_id).health()
    for i in range(2):
        assert rp.Endpoint(endpoint_id).run_sync({"i": i}, timeout=60)["echo"] == {"i": i}
    after = rp.Endpoint(endpoint_id).health()
    assert after["jobs"]["completed"] == before["jobs"]["completed"] + 2
    assert after["jobs"]["inQueue"] == 0 and after["jobs"]["inProgress"] == 0
    assert after["workers"]["idle"] + after["workers"]["running"] == 1

    rp.Endpoint(queue_only).purge_queue()
    for i in range(3):
        rp.Endpoint(queue_only).run({"q": i})
    assert rp.Endpoint(queue_only).health()["jobs"]["inQueue"] == 3
    assert rp.Endpoint(queue_only).health()["workers"] == {
        "idle": 0,
        "running": 0,
        "initializing": 0,
        "throttled": 0,
        "outdated": 0,
        "unhealthy": 0,
    }


def test_purge_queue_removes_only_queued_jobs_and_counts_them(
    server: LiveServer, rp: Any, queue_only: str
) -> None:
    ep = rp.Endpoint(queue_only)
    ep.purge_queue()
    jobs = [ep.run({"n": i}) for i in range(4)]
    jobs[0].cancel()
    assert ep.purge_queue() == {"removed": 3, "status": "completed"}
    assert ep.health()["jobs"]["inQueue"] == 0
    assert ep.purge_queue() == {"removed": 0, "status": "completed"}
    for job in jobs[1:]:
        assert job_status(server, queue_only, job.job_id)["status"] == "CANCELLED"


def test_cancel_of_a_queued_job_is_final_and_it_never_runs(
    server: LiveServer, rp: Any, queue_only: str
) -> None:
    job = rp.Endpoint(queue_only).run({"never": True})
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    assert job.status() == "CANCELLED"
    rec = job_status(server, queue_only, job.job_id)
    assert rec["status"] == "CANCELLED"
    assert rec.get("workerId") is None
    again = server.api("POST", f"/v2/{queue_only}/cancel/{job.job_id}")
    assert again.status_code == 200 and again.json()["status"] == "CANCELLED"


def test_retry_requeues_a_failed_job_under_the_same_id(
    server: LiveServer, endpoints: Endpoints, rp: Any, tmp_path: Path
) -> None:
    endpoint_id = endpoints.get("fails_once", "runpod")
    job = rp.Endpoint(endpoint_id).run({"dir": str(tmp_path)})
    first = wait_final(server, endpoint_id, job.job_id)
    assert first["status"] == "FAILED" and "first attempt fails" in first["error"]
    retried_before = _health(server, endpoint_id)["jobs"]["retried"]

    resp = server.api("POST", f"/v2/{endpoint_id}/retry/{job.job_id}")
    assert resp.status_code == 200 and resp.json() == {"id": job.job_id, "status": "IN_QUEUE"}
    second = wait_final(server, endpoint_id, job.job_id)
    assert second["status"] == "COMPLETED" and second["output"] == {"attempt": 2}
    assert "error" not in second  # the old error is cleared
    assert _health(server, endpoint_id)["jobs"]["retried"] == retried_before + 1

    again = server.api("POST", f"/v2/{endpoint_id}/retry/{job.job_id}")
    assert again.status_code == 409 and "COMPLETED" in again.json()["error"]


@pytest.mark.slow
def test_ttl_expiry_times_out_a_queued_job_and_then_forgets_it(
    server: LiveServer, rp: Any, queue_only: str
) -> None:
    started = time.monotonic()
    job_id = rp.Endpoint(queue_only).run({"input": {"late": True}, "policy": {"ttl": 10_000}}).job_id
    seen: set[str] = set()

    def gone() -> bool:
        resp = server.api("GET", f"/v2/{queue_only}/status/{job_id}")
        if resp.status_code == 404:
            return True
        assert resp.status_code == 200, resp.text
        seen.add(resp.json()["status"])
        return False

    wait_for(gone, 40, interval_s=0.25, what="the expired job to be forgotten (404)")
    assert time.monotonic() - started >= 10.0
    assert seen <= {"IN_QUEUE", "TIMED_OUT"} and "IN_QUEUE" in seen


@pytest.mark.slow
def test_webhook_is_delivered_once_and_retried_after_a_500(
    server: LiveServer, endpoints: Endpoints, rp: Any
) -> None:
    endpoint_id = endpoints.get("echo", "runpod")
    with webhook_sink({"/flaky": [500]}) as sink:
        ok = rp.Endpoint(endpoint_id).run({"input": {"w": "ok"}, "webhook": sink.url + "/ok"})
        flaky = rp.Endpoint(endpoint_id).run({"input": {"w": "flaky"}, "webhook": sink.url + "/flaky"})
        wait_for(lambda: len(sink.received("/flaky")) >= 2, 40, what="the webhook retry after a 500")
        got_ok, got_flaky = sink.received("/ok"), sink.received("/flaky")
    assert [d.answered for d in got_flaky] == [500, 200]
    assert got_flaky[1].at - got_flaky[0].at >= 5.0  # retried later, not hammered
    assert len(got_ok) == 1, "a webhook answered 200 must not be sent again"
    for delivery, job in ((got_ok[0], ok), (got_flaky[1], flaky)):
        assert delivery.content_type.startswith("application/json")
        assert delivery.body["id"] == job.job_id
        assert delivery.body["status"] == "COMPLETED"
        assert delivery.body["output"]["echo"] == {"w": delivery.body["output"]["echo"]["w"]}
        assert delivery.body == job_status(server, endpoint_id, job.job_id)


def test_a_webhook_outside_the_allow_list_is_refused_with_the_reason_on_the_job(
    server: LiveServer, endpoints: Endpoints, rp: Any
) -> None:
    """The server's allow list is 127.0.0.1 and ::1 (tests.support.live); 127.0.0.2 is loopback too,
    so refused. The job itself completes; its status says why the webhook went nowhere."""
    endpoint_id = endpoints.get("echo", "runpod")
    with webhook_sink(host="127.0.0.2") as far, webhook_sink() as near:
        refused = rp.Endpoint(endpoint_id).run({"input": {"w": "far"}, "webhook": far.url + "/far"})
        delivered = rp.Endpoint(endpoint_id).run({"input": {"w": "near"}, "webhook": near.url + "/near"})
        wait_for(lambda: near.received("/near"), 60, what="the webhook inside the allow list")
        record = wait_for(
            lambda: (r := job_status(server, endpoint_id, refused.job_id)).get("webhookError") and r,
            60,
            what="the refused webhook's reason on its job",
        )
        assert far.received() == []
    assert record["status"] == "COMPLETED" and record["output"]["echo"] == {"w": "far"}
    assert record["webhookError"].startswith("webhook refused: 127.0.0.2 is a loopback address")
    assert refused.status() == "COMPLETED"  # the SDK reads a status with Ember's extra field
    assert [d.body["id"] for d in near.received("/near")] == [delivered.job_id]
    assert "webhookError" not in job_status(server, endpoint_id, delivered.job_id)


def test_wrong_keys_get_401(server: LiveServer, endpoints: Endpoints, rp: Any) -> None:
    endpoint_id = endpoints.get("echo", "runpod")
    with pytest.raises(RuntimeError, match="401"):
        rp.Endpoint(endpoint_id, api_key="ek_not_a_key").health()
    with pytest.raises(RuntimeError, match="401"):
        rp.Endpoint(endpoint_id, api_key="ek_not_a_key").run({"a": 1})
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer ek_nope"}):
        resp = httpx.get(f"{server.url}/v2/{endpoint_id}/health", headers=headers)
        assert resp.status_code == 401 and resp.json()["error"], resp.text
    # A worker's own key is no client key, even for its own endpoint.
    wk = endpoints.wait_ready(endpoint_id)[0]["id"]
    resp = server.api("GET", f"/v2/{endpoint_id}/health", key=worker_key(server, wk))
    assert resp.status_code == 401
    # The bare key (no "Bearer") is accepted, as RunPod's docs show.
    bare = httpx.get(f"{server.url}/v2/{endpoint_id}/health", headers={"Authorization": server.admin_key})
    assert bare.status_code == 200


def test_bodies_above_10_mb_on_run_and_20_mb_on_runsync_get_413(
    server: LiveServer, rp: Any, queue_only: str
) -> None:
    def body(size_bytes: int) -> bytes:
        head, tail = b'{"input": {"blob": "', b'"}}'
        return head + b"x" * (size_bytes - len(head) - len(tail)) + tail

    too_big = post_raw(server, f"/v2/{queue_only}/run", body(10 * MB + 1))
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]
    fits = post_raw(server, f"/v2/{queue_only}/run", body(10 * MB))
    assert fits.status_code == 200 and fits.json()["status"] == "IN_QUEUE"

    too_big_sync = post_raw(server, f"/v2/{queue_only}/runsync?wait=1000", body(20 * MB + 1))
    assert too_big_sync.status_code == 413 and too_big_sync.json()["error"]
    fits_sync = post_raw(server, f"/v2/{queue_only}/runsync?wait=1000", body(15 * MB))
    assert fits_sync.status_code == 200 and fits_sync.json()["status"] == "IN_QUEUE"
    assert rp.Endpoint(queue_only).purge_queue()["removed"] >= 2


# ---- asyncio client --------------------------------------------------------------------------------
def test_asyncio_endpoint_run_status_output_and_health(
    server: LiveServer, endpoints: Endpoints, rp: Any
) -> None:
    endpoint_id = endpoints.get("echo", "runpod")

    async def scenario() -> tuple[str, Any, dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            ep = rp.AsyncioEndpoint(endpoint_id, session)
            job = await ep.run({"prompt": "async"})
            first = await job.status()
            assert first in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
            out = await job.output(timeout=60)
            return await job.status(), out, await ep.health()

    status, out, health = asyncio.run(scenario())
    assert status == "COMPLETED"
    assert out == {"echo": {"prompt": "async"}, "keys": ["id", "input"]}
    assert set(health["jobs"]) >= {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert health["jobs"]["completed"] >= 1


@pytest.mark.parametrize(
    ("fixture", "expected"), [("generator", [{"i": 0}, {"i": 1}, {"i": 2}]), ("async_generator", [0, 1, 2])]
)
def test_asyncio_job_stream_yields_each_chunk_once(
    server: LiveServer, endpoints: Endpoints, rp: Any, fixture: str, expected: list[Any]
) -> None:
    endpoint_id = endpoints.get(fixture, "runpod")

    async def scenario() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            job = await rp.AsyncioEndpoint(endpoint_id, session).run({"n": 3})
            return [chunk async for chunk in job.stream()]

    assert asyncio.run(scenario()) == expected


def test_asyncio_cancel_and_purge_queue(server: LiveServer, rp: Any, queue_only: str) -> None:
    async def scenario() -> tuple[dict[str, Any], str, dict[str, Any], dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            ep = rp.AsyncioEndpoint(queue_only, session)
            await ep.purge_queue()
            job = await ep.run({"c": 1})
            cancelled = await job.cancel()
            status = await job.status()
            for i in range(2):
                await ep.run({"p": i})
            return cancelled, status, await ep.purge_queue(), await ep.health()

    cancelled, status, purged, health = asyncio.run(scenario())
    assert cancelled["status"] == "CANCELLED" and cancelled["id"]
    assert status == "CANCELLED"
    assert purged == {"removed": 2, "status": "completed"}
    assert health["jobs"]["inQueue"] == 0


def test_unknown_job_is_404_for_the_sync_client(server: LiveServer, endpoints: Endpoints, rp: Any) -> None:
    import requests
    from runpod.endpoint.runner import Job, RunPodClient

    endpoint_id = endpoints.get("echo", "runpod")
    ghost = Job(endpoint_id, "job-doesnotexist", RunPodClient())
    with pytest.raises(requests.HTTPError) as info:
        ghost.status()
    assert info.value.response.status_code == 404
    assert json.loads(info.value.response.text)["error"]
