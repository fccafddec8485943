"""GET /v1/endpoints/{ref}/traffic (what `ember simulate` replays) and PREDICTIVE scaling in the real
lifecycle, on a manual clock with the in-memory backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ember.core.billing import DEFAULT_GPU_MICROS_PER_S
from ember.core.scaler import memory_from_json
from tests.support.harness import Harness, build


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def traffic(h: Harness, ref: str, key: str | None = None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return await h.api.get(f"/v1/endpoints/{ref}/traffic", params=params, headers=headers)


def test_traffic_gives_the_owner_job_times_cold_starts_and_the_worker_price(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("traffic", gpuTypeIds=["TEST_GPU"], workersMax=1, idleTimeout=5)
        t0 = h.clock.now()
        job = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {}})).json()
        await h.tick()
        [worker] = await h.workers(ep["id"])
        h.clock.advance(3)  # a 3 s cold start
        assert (await h.take(ep["id"], worker["id"])).json()["id"] == job["id"]
        h.clock.advance(2)
        assert (await h.done(ep["id"], worker["id"], job["id"], {"output": 1})).status_code == 200
        h.clock.advance(1)
        queued = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {}})).json()

        resp = await traffic(h, ep["id"])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["jobs"] == [
            {"createdAt": t0, "startedAt": t0 + 3, "completedAt": t0 + 5},
            {"createdAt": t0 + 6, "startedAt": None, "completedAt": None},
        ]
        assert body["coldStartsS"] == [3.0] and body["coldStartMedianS"] == 3.0
        assert body["price"] == {
            "gpuTypeId": "TEST_GPU",
            "gpuCount": 1,
            "flexMicrosPerS": DEFAULT_GPU_MICROS_PER_S["TEST_GPU"],
            "activeDiscountPct": 30,
        }
        assert body["server"] == {"tickS": 0.5, "takeHoldS": 0.05}  # what the simulator mirrors
        # By name too; a window and a limit narrow it (the newest jobs are kept).
        narrow = (await traffic(h, "traffic", limit=1)).json()
        assert [j["createdAt"] for j in narrow["jobs"]] == [t0 + 6]
        assert queued["id"]

        bad = await traffic(h, ep["id"], seconds=0)
        assert bad.status_code == 400 and "seconds" in bad.text
        assert (await traffic(h, ep["id"], limit="many")).status_code == 400

        other = await h.api.post("/v1/accounts", json={"name": "other"})
        stranger = other.json()["apiKey"]
        assert (await traffic(h, ep["id"], key=stranger)).status_code == 404
        await h.api.aclose()

    run(scenario())


def test_a_predictive_endpoint_scales_on_its_forecast_and_keeps_it_in_its_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("predict", workersMax=5, idleTimeout=5, scalerType="PREDICTIVE", scalerValue=2)
        assert ep["scalerType"] == "PREDICTIVE"
        # An old memory row (target and last_up_at only) still decodes.
        h.store.endpoints.set_scaling(ep["id"], 0, "hold", {"target": 0, "last_up_at": None})
        for _ in range(3):
            await h.api.post(f"/v2/{ep['id']}/run", json={"input": {}})
        await h.tick()
        record = (await h.api.get(f"/v1/endpoints/{ep['id']}")).json()
        # No execution time known yet: one worker per job.
        assert record["scaling"] == {"desiredWorkers": 3, "reason": "cold_start"}
        row = h.store.endpoints.get(ep["id"])
        assert row is not None
        mem = memory_from_json(json.loads(row["scale_memory"]))
        assert mem.target == 3 and mem.forecast_at == h.clock.now()
        assert mem.rate_per_s == 3 / 10  # three arrivals in the 10 s window
        await h.api.aclose()

    run(scenario())
