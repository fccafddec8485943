"""Webhooks reach only the addresses the outbound rule allows (`control.outbound`, `core.outbound`):
real loopback receivers, the tests' allow list (127.0.0.1, ::1), and 127.0.0.2 as the address outside it.
The job's owner sees why a webhook was not delivered; a refused one is not tried again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.control.outbound import guarded_client
from ember.core.errors import OutboundRefused
from ember.core.outbound import parse_allow
from tests.support.harness import LOOPBACK_ALLOW, Harness, build
from tests.support.webhook_sink import webhook_sink


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def finish(h: Harness, endpoint_id: str, worker_id: str, webhook: str) -> str:
    """Submit a job with `webhook` and complete it as the worker; returns its id."""
    submitted = await h.api.post(f"/v2/{endpoint_id}/run", json={"input": {"n": 1}, "webhook": webhook})
    assert submitted.status_code == 200, submitted.text
    taken = await h.take(endpoint_id, worker_id)
    assert taken.status_code == 200 and taken.json()["id"] == submitted.json()["id"], taken.text
    done = await h.done(endpoint_id, worker_id, submitted.json()["id"], {"output": {"ok": True}})
    assert done.status_code == 200, done.text
    return str(submitted.json()["id"])


async def status(h: Harness, endpoint_id: str, job_id: str) -> dict[str, Any]:
    resp = await h.api.get(f"/v2/{endpoint_id}/status/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def listed(h: Harness, job_id: str) -> dict[str, Any]:
    rows = (await h.api.get("/v1/jobs")).json()
    return next(r for r in rows if r["id"] == job_id)  # type: ignore[no-any-return]


def test_a_webhook_outside_the_allow_list_fails_on_the_job_and_one_inside_is_delivered(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        h = build(tmp_path)
        reaper = h.app.state.runner.reaper
        try:
            with webhook_sink(host="127.0.0.1") as near, webhook_sink(host="127.0.0.2") as far:
                ep = await h.deploy("hooks", workersMin=1, workersMax=1)
                await h.tick()
                [worker] = await h.workers(ep["id"])
                delivered = await finish(h, ep["id"], worker["id"], near.url + "/hook")
                refused = await finish(h, ep["id"], worker["id"], far.url + "/hook")
                assert await reaper.deliver_webhooks() == 2

                assert [d.body["id"] for d in near.received()] == [delivered]
                assert near.received()[0].body == await status(h, ep["id"], delivered)
                assert far.received() == []
                failed = await status(h, ep["id"], refused)
                assert failed["status"] == "COMPLETED" and failed["output"] == {"ok": True}
                assert failed["webhookError"].startswith("webhook refused: 127.0.0.2 is a loopback address")
                assert "EMBER_OUTBOUND_ALLOW" in failed["webhookError"]
                assert (await listed(h, refused))["webhook"] == {
                    "state": "FAILED",
                    "attempts": 1,
                    "error": failed["webhookError"],
                }
                assert (await listed(h, delivered))["webhook"] == {"state": "DELIVERED", "attempts": 1}

                # A refusal is final: later passes send nothing more.
                h.clock.advance(60)
                assert await reaper.deliver_webhooks() == 0
                assert far.received() == [] and len(near.received()) == 1
        finally:
            await reaper.aclose()
            await h.api.aclose()

    run(main())


def test_a_failed_delivery_shows_why_until_a_later_attempt_succeeds(tmp_path: Path) -> None:
    async def main() -> None:
        h = build(tmp_path)
        reaper = h.app.state.runner.reaper
        try:
            with webhook_sink({"/flaky": [500]}) as sink:
                ep = await h.deploy("flaky", workersMin=1, workersMax=1)
                await h.tick()
                [worker] = await h.workers(ep["id"])
                job_id = await finish(h, ep["id"], worker["id"], sink.url + "/flaky")
                assert await reaper.deliver_webhooks() == 1
                first = await status(h, ep["id"], job_id)
                assert first["webhookError"] == "webhook not delivered: the receiver answered HTTP 500"
                assert (await listed(h, job_id))["webhook"]["state"] == "PENDING"

                h.clock.advance(10)
                assert await reaper.deliver_webhooks() == 1
                assert [d.answered for d in sink.received()] == [500, 200]
                assert "webhookError" not in await status(h, ep["id"], job_id)
                assert (await listed(h, job_id))["webhook"] == {"state": "DELIVERED", "attempts": 2}
        finally:
            await reaper.aclose()
            await h.api.aclose()

    run(main())


def test_the_client_checks_the_address_a_name_resolves_to_when_it_connects() -> None:
    """`localhost` resolves to 127.0.0.1 (and ::1): allowed by the tests' list, refused by one that
    names only 127.0.0.2, although the URL holds no address at all."""

    async def main() -> None:
        with webhook_sink() as sink:
            port = sink.url.rsplit(":", 1)[1]
            async with guarded_client(parse_allow(LOOPBACK_ALLOW), 5) as client:
                resp = await client.post(f"http://localhost:{port}/named", content=b"{}")
                assert resp.status_code == 200
            async with guarded_client(parse_allow("127.0.0.2/32"), 5) as client:
                with pytest.raises(
                    OutboundRefused, match=r"webhook refused: localhost resolves to (127\.0\.0\.1|::1)"
                ):
                    await client.post(f"http://localhost:{port}/named", content=b"{}")
            assert [d.path for d in sink.received()] == ["/named"]

    run(main())


def test_the_client_follows_no_redirect_and_uses_no_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver's redirect is its answer (not followed); HTTP_PROXY would make the proxy the only
    address checked, so it is ignored."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.2:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.2:9")

    async def main() -> None:
        with webhook_sink({"/moved": [307]}) as sink:
            async with guarded_client(parse_allow(LOOPBACK_ALLOW), 5) as client:
                resp = await client.post(sink.url + "/moved", content=b"{}")
                assert resp.status_code == 307
                with pytest.raises(httpx.ConnectError):  # nothing listens there: a retryable failure
                    await client.post("http://127.0.0.1:9/closed", content=b"{}")
            assert [d.path for d in sink.received()] == ["/moved"]

    run(main())
