"""Unusual but valid JSON (NUL and emoji escapes, nesting near the limit, huge integers) goes through
the job path on SQLite and PostgreSQL and comes back exactly; a worker's error text with NUL is kept
(as U+FFFD); a result the server refuses (a lone surrogate) leaves its job running, not lost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ember.core.json_body import MAX_DEPTH
from ember.store.facade import Store
from tests.support.harness import Harness, build


def _odd_value() -> dict[str, Any]:
    deep: Any = "bottom"
    for _ in range(MAX_DEPTH - 8):
        deep = [deep]
    return {
        "nul": "a\x00b",
        "emoji": "\U0001f600",
        "text": "\\ud800 is only text here",
        "big": 10**40,
        "small": -1.5e-300,
        "deep": deep,
    }


async def _ready(h: Harness) -> tuple[str, str]:
    ep = (await h.deploy("odd", workersMin=1, workersMax=1))["id"]
    await h.tick()
    [worker] = await h.workers(ep)
    assert (await h.take(ep, worker["id"])).status_code == 204
    return ep, worker["id"]


async def _taken(h: Harness, ep: str, worker: str, body: bytes) -> dict[str, Any]:
    job_id = (await h.api.post(f"/v2/{ep}/run", content=body)).json()["id"]
    taken = await h.take(ep, worker)
    assert taken.status_code == 200, taken.text
    job: dict[str, Any] = taken.json()
    assert job["id"] == job_id
    return job


def test_odd_but_valid_json_round_trips_through_the_store(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        ep, worker = await _ready(h)
        value = _odd_value()
        raw = json.dumps({"input": value}, ensure_ascii=True).encode()  # emoji as a surrogate pair
        job = await _taken(h, ep, worker, raw)
        assert job["input"] == value
        done = await h.done(ep, worker, job["id"], {"output": value})
        assert done.status_code == 200, done.text
        record = (await h.api.get(f"/v2/{ep}/status/{job['id']}")).json()
        assert record["status"] == "COMPLETED" and record["output"] == value
        await h.api.aclose()

    asyncio.run(scenario())


def test_a_worker_error_with_nul_is_kept_and_a_refused_result_loses_no_job(
    tmp_path: Path, store: Store
) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        ep, worker = await _ready(h)
        job = await _taken(h, ep, worker, b'{"input": {}}')
        done = await h.done(ep, worker, job["id"], {"error": "bad\x00thing"})
        assert done.status_code == 200, done.text
        record = (await h.api.get(f"/v2/{ep}/status/{job['id']}")).json()
        assert record["status"] == "FAILED" and record["error"] == "bad\ufffdthing"

        job = await _taken(h, ep, worker, b'{"input": {}}')
        url = f"/v2/{ep}/job-done/{worker}/{job['id']}"
        refused = await h.api.post(url, content=b'{"output": "\\ud800"}', headers=h.worker_headers(worker))
        assert refused.status_code == 400 and refused.json()["problems"][0]["field"] == "output"
        record = (await h.api.get(f"/v2/{ep}/status/{job['id']}")).json()
        assert record["status"] == "IN_PROGRESS"
        assert (await h.done(ep, worker, job["id"], {"output": "fixed"})).status_code == 200
        record = (await h.api.get(f"/v2/{ep}/status/{job['id']}")).json()
        assert record["status"] == "COMPLETED" and record["output"] == "fixed"
        await h.api.aclose()

    asyncio.run(scenario())


def test_printable_names_of_any_script_are_stored_as_given(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        h = build(tmp_path, store=store)
        name = "Modèle 模型 (v2) ✓"
        made = await h.api.post("/v1/templates", json={"name": name, "imageName": "busybox"})
        assert made.status_code == 201, made.text
        assert (await h.api.get(f"/v1/templates/{made.json()['id']}")).json()["name"] == name
        account = await h.api.post("/v1/accounts", json={"name": name})
        assert account.status_code == 201 and account.json()["name"] == name
        for bad in ("a\x00b", "x" * 129):
            refused = await h.api.post("/v1/accounts", json={"name": bad})
            assert refused.status_code == 400 and refused.json()["problems"][0]["field"] == "name"
        await h.api.aclose()

    asyncio.run(scenario())
