"""`/metrics` after a scripted run on a manual clock (the real app, lifecycle and meter, the in-memory
backend, each real database): the jobs, timings, workers, desired counts, billed usage and HTTP requests
it shows are those the run produced; only the metrics token or the admin's key may read it."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ember.control.metrics import Instruments
from ember.core.errors import ModelError
from ember.models.cache import ModelCache
from ember.store.facade import Store
from tests.support.fakehub import FakeHub
from tests.support.harness import Harness, build

TOKEN = "metrics-token-test"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(h: Harness, key: str = TOKEN) -> Samples:
    resp = await h.api.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


async def finish(
    h: Harness, ep_id: str, worker_id: str, body: dict[str, Any], wait_s: float, run_s: float
) -> str:
    """The worker takes the next job `wait_s` after now and reports `body` `run_s` later: its id."""
    h.clock.advance(wait_s)
    taken = await h.take(ep_id, worker_id)
    assert taken.status_code == 200, taken.text
    job_id = str(taken.json()["id"])
    h.clock.advance(run_s)
    assert (await h.done(ep_id, worker_id, job_id, body)).status_code == 200
    return job_id


async def billed(h: Harness, ep_id: str) -> tuple[int, Decimal]:
    report = (await h.api.get("/v1/billing/usage", params={"endpointId": ep_id})).json()
    return sum(i["seconds"] for i in report["items"]), Decimal(report["totalCost"])


def test_metrics_match_a_scripted_run(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store, metrics_token=TOKEN)
        ep = await h.deploy("busy", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        idle = await h.deploy("parked", workersMin=0, workersMax=0)
        for n in range(4):
            assert (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"n": n}})).status_code == 200
        for n in range(2):
            assert (await h.api.post(f"/v2/{idle['id']}/run", json={"input": {"n": n}})).status_code == 200
        await h.tick()
        [worker] = await h.workers(ep["id"])
        await finish(h, ep["id"], worker["id"], {"output": {"ok": 1}}, wait_s=2, run_s=1)
        await finish(h, ep["id"], worker["id"], {"error": "boom"}, wait_s=0.5, run_s=0.25)
        await finish(h, ep["id"], worker["id"], {"output": {"ok": 3}}, wait_s=0.5, run_s=4)
        left = await h.api.get("/v1/jobs", params={"endpointId": ep["id"], "state": "IN_QUEUE"})
        [queued] = [j["id"] for j in left.json()]
        assert (await h.api.post(f"/v2/{ep['id']}/cancel/{queued}")).status_code == 200
        assert (await h.api.post(f"/v2/{ep['id']}/cancel/{queued}")).status_code == 200  # counted once
        assert (await h.api.get("/no/such/route")).status_code == 404
        h.clock.advance(1)
        await h.ping(ep["id"], worker["id"])
        await h.tick()
        await h.meter()

        m = await scrape(h)
        e = ep["id"]
        assert value(m, "ember_jobs_finished_total", endpoint_id=e, status="COMPLETED") == 2
        assert value(m, "ember_jobs_finished_total", endpoint_id=e, status="FAILED") == 1
        assert value(m, "ember_jobs_finished_total", endpoint_id=e, status="CANCELLED") == 1
        # Each job was queued at the start: taken 2 s, 3.5 s and 4.25 s in; run 1 s, 0.25 s and 4 s.
        assert value(m, "ember_job_delay_seconds_count", endpoint_id=e) == 3
        assert value(m, "ember_job_delay_seconds_sum", endpoint_id=e) == 2 + 3.5 + 4.25
        assert value(m, "ember_job_execution_seconds_sum", endpoint_id=e) == 1 + 0.25 + 4
        assert value(m, "ember_job_execution_seconds_bucket", endpoint_id=e, le="0.25") == 1
        assert value(m, "ember_jobs_queued", endpoint_id=e) == 0
        assert value(m, "ember_jobs_queued", endpoint_id=idle["id"]) == 2
        assert value(m, "ember_jobs_in_progress", endpoint_id=e) == 0
        live = {(w["state"], w["type"]): 1 for w in await h.workers(e, include_stopped=False)}
        assert live == {("IDLE", "ACTIVE"): 1}
        for labels in matching(m, "ember_workers"):
            expected = live.get((labels["state"], labels["type"]), 0) if labels["endpoint_id"] == e else 0
            assert value(m, "ember_workers", **labels) == expected, labels
        assert value(m, "ember_workers_desired", endpoint_id=e) == 1
        assert value(m, "ember_workers_desired", endpoint_id=idle["id"]) == 0
        admin_id = (await h.api.get("/v1/accounts/me")).json()["id"]
        assert value(m, "ember_endpoint_info", endpoint_id=e, name="busy", account_id=admin_id) == 1

        seconds, dollars = await billed(h, e)
        assert seconds > 0
        assert value(m, "ember_billed_seconds_total", endpoint_id=e) == seconds
        assert Decimal(str(value(m, "ember_billed_dollars_total", endpoint_id=e))) == dollars

        run_route = {"method": "POST", "route": "/v2/{endpoint_id}/run", "code": "200"}
        assert value(m, "ember_http_requests_total", **run_route) == 6
        done_route = "/v2/{endpoint_id}/job-done/{worker_id}/{job_id}"
        assert value(m, "ember_http_requests_total", method="POST", route=done_route, code="200") == 3
        assert value(m, "ember_http_requests_total", method="GET", route="unmatched", code="404") == 1
        routes = {labels["route"] for labels in matching(m, "ember_http_requests_total")}
        assert not any(e in r or worker["id"] in r for r in routes), routes
        assert value(m, "ember_http_request_duration_seconds_count", method="POST", route=done_route) == 3

        # Later scrapes read the ledger incrementally: the totals neither drop nor count a row twice.
        h.clock.advance(120)
        await h.ping(ep["id"], worker["id"])
        first = await scrape(h)
        assert value(first, "ember_billed_seconds_total", endpoint_id=e) == seconds
        await h.meter()
        again = await scrape(h, key=h.api.headers["Authorization"].split()[1])  # the admin's key
        seconds, dollars = await billed(h, e)
        assert value(again, "ember_billed_seconds_total", endpoint_id=e) == seconds
        assert Decimal(str(value(again, "ember_billed_dollars_total", endpoint_id=e))) == dollars
        await h.api.aclose()

    asyncio.run(scenario())


def test_metrics_need_the_metrics_token_or_the_admin_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path, metrics_token=TOKEN)
        created = await h.api.post("/v1/accounts", json={"name": "tenant"})
        tenant_key = created.json()["apiKey"]
        async with httpx.AsyncClient(transport=h.api._transport, base_url=str(h.api.base_url)) as anon:
            for headers, status in (
                ({}, 401),
                ({"Authorization": "Bearer not-the-token"}, 401),
                ({"Authorization": f"Bearer {tenant_key}"}, 403),
                ({"Authorization": f"Bearer {TOKEN}"}, 200),
            ):
                resp = await anon.get("/metrics", headers=headers)
                assert resp.status_code == status, (headers, resp.text)
                if status != 200:
                    assert resp.json()["error"], resp.text
        await h.api.aclose()

    asyncio.run(scenario())


def test_model_downloads_are_counted_by_result_with_their_bytes(tmp_path: Path) -> None:
    metrics = Instruments()
    files = {"config.json": b"{}", "weights.bin": b"w" * 300_000}
    with FakeHub({"org/tiny": files}) as hub:
        cache = ModelCache(tmp_path / "cache", endpoint_url=hub.url, on_download=metrics.model_downloaded)
        cache.ensure("org/tiny")
        cache.ensure("org/tiny")  # cached: no download
        with pytest.raises(ModelError):
            cache.ensure("org/missing")
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in family.samples
    }
    assert samples[("ember_model_downloads_total", frozenset({("result", "ok")}))] == 1
    assert samples[("ember_model_downloads_total", frozenset({("result", "failed")}))] == 1
    assert samples[("ember_model_download_bytes_total", frozenset())] == 2 + 300_000
