"""The console's endpoint and job pages through the real app (SQLite, the in-memory backend, a manual
clock): the worker-state timeline drawn from the worker's transitions, the scaler's decisions, recent
jobs with their filters, a job's own timeline, and what another account may see (a 404 page)."""

from __future__ import annotations

import asyncio
import html
import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.support.harness import ADMIN_KEY, Harness, build

NAME = "aurora-7"


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def browser(h: Harness, key: str) -> httpx.AsyncClient:
    """A client signed in to the console with `key` (a session cookie, no API key)."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://ember.test")
    resp = await client.post("/console/login", data={"key": key})
    assert resp.status_code == 303 and resp.headers["location"] == "/console/", resp.text
    return client


def lanes(page: str) -> dict[str, list[str]]:
    """worker id -> the states of its lane's segments, in order."""
    out = {}
    for worker, body in re.findall(r'<g class="lane" data-worker="([^"]+)"(.*?)</g>', page, re.S):
        out[worker] = re.findall(r'<rect class="seg [^"]*" data-state="([A-Z_]+)"', body)
    return out


def job_rows(page: str) -> list[tuple[str, str, str]]:
    """(job id, status, worker id) of each row of the jobs list."""
    return re.findall(r'<tr class="job" data-job="([^"]+)" data-status="([^"]+)" data-worker="([^"]*)"', page)


async def served_job(h: Harness) -> tuple[dict[str, Any], str, str]:
    """A flex worker started for a job, ran it and went idle: (endpoint, worker id, job id)."""
    ep = await h.deploy(NAME, workersMin=0, workersMax=2, idleTimeout=900)
    job = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"n": 1}})).json()
    h.clock.advance(1)
    await h.tick()
    [worker] = await h.workers(ep["id"])
    assert worker["state"] == "INITIALIZING"
    h.clock.advance(4)
    taken = await h.take(ep["id"], worker["id"])
    assert taken.status_code == 200 and taken.json()["id"] == job["id"]
    h.clock.advance(2)
    resp = await h.done(ep["id"], worker["id"], job["id"], {"output": {"ok": True}})
    assert resp.status_code == 200, resp.text
    h.clock.advance(3)
    await h.tick()
    return ep, worker["id"], job["id"]


def test_the_timeline_shows_a_workers_states_and_the_jobs_list_its_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker_id, job_id = await served_job(h)
        admin = await browser(h, ADMIN_KEY)
        resp = await admin.get(f"/console/endpoints/{ep['id']}")
        assert resp.status_code == 200, resp.text
        page = resp.text
        # A new worker waits for its placement (THROTTLED) before it starts.
        assert lanes(page)[worker_id] == ["THROTTLED", "INITIALIZING", "RUNNING", "IDLE"]
        assert "took a job" in page and "finished its jobs" in page  # the reasons, on hover
        assert job_rows(page) == [(job_id, "COMPLETED", worker_id)]
        assert 'class="decision"' in page  # the scaler's decision to start a worker for the job
        assert 'data-release="1" data-status="READY" data-serving="yes"' in page
        assert 'name="workersMax" inputmode="numeric" value="2"' in page
        assert 'name="idleTimeout" inputmode="numeric" value="900"' in page
        # Zoomed in to the last five minutes, the filters kept: the same lane, ticks each minute.
        zoomed = (await admin.get(f"/console/endpoints/{ep['id']}", params={"span": "5m"})).text
        assert lanes(zoomed)[worker_id] == lanes(page)[worker_id]
        assert len(re.findall(r'<text class="tick-label"', zoomed)) == 5
        assert f'href="/console/endpoints/{ep["id"]}?span=15m"' in zoomed
        await admin.aclose()
        await h.api.aclose()

    run(scenario())


def test_jobs_filter_by_status_and_worker_and_refuse_an_unknown_status(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker_id, job_id = await served_job(h)
        queued = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"n": 2}})).json()["id"]
        admin = await browser(h, ADMIN_KEY)
        base = f"/console/endpoints/{ep['id']}"
        assert {j for j, _, _ in job_rows((await admin.get(base)).text)} == {job_id, queued}
        done = job_rows((await admin.get(base, params={"status": "COMPLETED"})).text)
        assert done == [(job_id, "COMPLETED", worker_id)]
        waiting = job_rows((await admin.get(base, params={"status": "IN_QUEUE"})).text)
        assert waiting == [(queued, "IN_QUEUE", "")]
        by_worker = job_rows((await admin.get(base, params={"worker": worker_id})).text)
        assert by_worker == [(job_id, "COMPLETED", worker_id)]
        bad = await admin.get(base, params={"status": "DONE"})
        assert bad.status_code == 400 and "status must be one of" in bad.text
        bad = await admin.get(base, params={"span": "2d"})
        assert bad.status_code == 400 and "span must be one of 5m, 15m, 1h" in bad.text
        await admin.aclose()
        await h.api.aclose()

    run(scenario())


def test_a_jobs_page_shows_when_it_was_queued_taken_and_done(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, worker_id, job_id = await served_job(h)
        admin = await browser(h, ADMIN_KEY)
        resp = await admin.get(f"/console/endpoints/{ep['id']}/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        page = resp.text
        assert re.findall(r'<li data-step="(\w+)">', page) == ["queued", "taken", "done"]
        assert f"by {worker_id}" in page
        assert '<td id="job-delay">5.0 s</td>' in page  # queued at t, taken at t+5
        assert '<td id="job-execution">2.0 s</td>' in page
        payloads = dict(re.findall(r'<pre class="payload" id="job-(\w+)">(.*?)</pre>', page, re.S))
        assert json.loads(html.unescape(payloads["input"])) == {"n": 1}
        assert json.loads(html.unescape(payloads["output"])) == {"ok": True}
        await admin.aclose()
        await h.api.aclose()

    run(scenario())


def test_another_accounts_endpoint_and_job_are_404_pages_and_the_admin_sees_all(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep, _, job_id = await served_job(h)
        resp = await h.api.post("/v1/accounts", json={"name": "other"})
        other_key = resp.json()["apiKey"]
        other = await browser(h, other_key)
        for path in (f"/console/endpoints/{ep['id']}", f"/console/endpoints/{ep['id']}/jobs/{job_id}"):
            resp = await other.get(path)
            assert resp.status_code == 404, path
            assert "was not found" in resp.text and NAME not in resp.text
        listing = await other.get("/console/")
        assert ep["id"] not in listing.text
        # The other account's own endpoint: shown to it, and to the admin with a note that edits are
        # the owner's (the API edits only the caller's own endpoints).
        mine = (
            await h.api.post(
                "/v1/endpoints",
                json={"name": "theirs", "imageName": "example/theirs:1"},
                headers={"Authorization": f"Bearer {other_key}"},
            )
        ).json()
        assert (await other.get(f"/console/endpoints/{mine['id']}")).status_code == 200
        admin = await browser(h, ADMIN_KEY)
        seen = await admin.get(f"/console/endpoints/{mine['id']}")
        assert seen.status_code == 200 and 'data-owner="no"' in seen.text
        assert "<fieldset disabled>" in seen.text and 'id="log-tail"' not in seen.text
        assert (await admin.get(f"/console/endpoints/{ep['id']}/jobs/job-unknown")).status_code == 404
        for client in (other, admin, h.api):
            await client.aclose()

    run(scenario())


def test_a_signed_out_browser_is_sent_to_sign_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("page", workersMin=0)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=h.app), base_url="http://ember.test")
        resp = await client.get(f"/console/endpoints/{ep['id']}")
        assert resp.status_code == 303 and resp.headers["location"] == "/console/login"
        await client.aclose()
        await h.api.aclose()

    run(scenario())
