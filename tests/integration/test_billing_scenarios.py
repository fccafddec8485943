"""Scripted billing scenarios on a manual clock (no sleeps): the real API, lifecycle, scaler and meter,
with the in-memory backend. Expected bills are computed by hand from the price table."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ember.build.archive import pack
from ember.core.billing import DEFAULT_GPU_MICROS_PER_S
from ember.core.money import format_dollars
from tests.support.harness import Harness, build

RATE = DEFAULT_GPU_MICROS_PER_S["TEST_GPU"]  # micro-dollars per second, flex


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def usage(h: Harness, **params: str) -> dict:  # type: ignore[type-arg]
    resp = await h.api.get("/v1/billing/usage", params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def seconds_by_state(report: dict) -> dict[str, int]:  # type: ignore[type-arg]
    out: dict[str, int] = {}
    for item in report["items"]:
        out[item["state"]] = out.get(item["state"], 0) + item["seconds"]
    return out


def test_flex_worker_initializing_3s_running_10s_idle_5s_is_billed_13s(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("flex", gpuTypeIds=["TEST_GPU"], workersMin=0, workersMax=1, idleTimeout=5)
        job = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"x": 1}})).json()
        await h.tick()  # cold start: one worker, placed and launched at t=0
        [worker] = await h.workers(ep["id"])
        assert worker["state"] == "INITIALIZING" and worker["type"] == "FLEX"

        h.clock.advance(3)
        taken = await h.take(ep["id"], worker["id"])
        assert taken.status_code == 200 and taken.json()["id"] == job["id"]
        h.clock.advance(10)
        assert (await h.done(ep["id"], worker["id"], job["id"], {"output": {"ok": True}})).status_code == 200
        h.clock.advance(5)
        await h.ping(ep["id"], worker["id"])
        await h.tick()  # idle for idleTimeout: scaled to zero
        [worker] = await h.workers(ep["id"])
        assert worker["state"] == "STOPPED"
        await h.meter()

        report = await usage(h, endpointId=ep["id"])
        assert seconds_by_state(report) == {"INITIALIZING": 3, "RUNNING": 10}
        assert report["totalCost"] == format_dollars(13 * RATE)
        history = (await h.api.get(f"/v1/workers/{worker['id']}/history")).json()
        assert [e["state"] for e in history] == ["THROTTLED", "INITIALIZING", "RUNNING", "IDLE", "STOPPED"]
        await h.api.aclose()

    run(scenario())


def test_a_meter_that_ticks_between_transitions_bills_what_one_tick_at_the_end_would(tmp_path: Path) -> None:
    """The meter reads a worker's events from its cursor on (the one in force there, then the later
    ones): ticks in the middle of RUNNING and IDLE spans, and on the instant of a transition, add up to
    the same seconds as the whole history billed at once."""

    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("flex", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1, idleTimeout=600)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        h.clock.advance(2)
        await h.ping(ep["id"], worker["id"])  # INITIALIZING 2 s, then IDLE
        await h.meter()
        for running_s, idle_s in ((4, 3), (5, 1), (2, 6)):
            job = (await h.api.post(f"/v2/{ep['id']}/run", json={"input": {"x": 1}})).json()
            assert (await h.take(ep["id"], worker["id"])).json()["id"] == job["id"]
            h.clock.advance(running_s / 2)
            await h.meter()  # in the middle of RUNNING
            h.clock.advance(running_s / 2)
            await h.meter()  # at the instant the job ends
            assert (await h.done(ep["id"], worker["id"], job["id"], {"output": 1})).status_code == 200
            h.clock.advance(idle_s)
            await h.meter()  # at the end of the IDLE span
        report = await usage(h, endpointId=ep["id"])
        assert seconds_by_state(report) == {"INITIALIZING": 2, "RUNNING": 11, "IDLE": 10}
        await h.api.aclose()

    run(scenario())


def test_active_worker_idle_for_an_hour_is_billed_3600s_at_the_active_rate(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("active", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        assert worker["type"] == "ACTIVE"
        await h.take(ep["id"], worker["id"])  # ready at once: IDLE (no job queued)
        [worker] = await h.workers(ep["id"])
        assert worker["state"] == "IDLE"
        for _ in range(360):  # an hour of pings every 10 s
            h.clock.advance(10)
            await h.ping(ep["id"], worker["id"])
        await h.tick()
        await h.meter()
        report = await usage(h, workerId=worker["id"])
        assert seconds_by_state(report) == {"IDLE": 3600}
        active_rate_cost = (3600 * RATE * 70 + 50) // 100  # 30 % discount, rounded half up
        assert report["totalCost"] == format_dollars(active_rate_cost)
        assert {i["workerType"] for i in report["items"]} == {"ACTIVE"}
        await h.api.aclose()

    run(scenario())


def test_throttled_worker_is_billed_nothing_while_it_waits_for_a_gpu(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path, gpus="TEST_GPU:1")
        a = await h.deploy("a", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        b = await h.deploy("b", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        await h.tick()
        states = {ep["name"]: (await h.workers(ep["id"]))[0]["state"] for ep in (a, b)}
        assert sorted(states.values()) == ["INITIALIZING", "THROTTLED"]
        waiting = a if states["a"] == "THROTTLED" else b
        h.clock.advance(600)
        await h.tick()
        await h.meter()
        [throttled] = await h.workers(waiting["id"])
        assert throttled["state"] == "THROTTLED"
        report = await usage(h, workerId=throttled["id"])
        assert report["items"] == [] and report["totalCost"] == format_dollars(0)
        await h.api.aclose()

    run(scenario())


def test_crash_looping_worker_is_billed_only_its_initializing_seconds(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("crashy", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        starts = []
        for _ in range(3):
            h.clock.advance(2)  # initializes 2 s, then crashes
            h.backend.crash(worker["id"], exit_code=1)
            await h.tick()
            [worker] = await h.workers(ep["id"])
            assert worker["state"] == "UNHEALTHY"
            starts.append(worker["nextAttemptAt"])
            h.clock.advance(1000)  # far past the backoff: exactly one restart
            await h.tick()
            [worker] = await h.workers(ep["id"])
            assert worker["state"] == "INITIALIZING"
        await h.meter()
        report = await usage(h, workerId=worker["id"])
        assert seconds_by_state(report) == {"INITIALIZING": 6}  # 3 attempts x 2 s; 3 x 1000 s unhealthy free
        await h.api.aclose()

    run(scenario())


def test_unhealthy_restarts_wait_for_a_growing_backoff(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("backoff", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        gaps = []
        for _ in range(4):
            h.backend.crash(worker["id"], exit_code=3)
            await h.tick()
            history_before = len((await h.api.get(f"/v1/workers/{worker['id']}/history")).json())
            waited = 0
            while True:  # advance one second at a time until the restart happens
                h.clock.advance(1)
                waited += 1
                await h.tick()
                [worker] = await h.workers(ep["id"])
                if worker["state"] == "INITIALIZING":
                    break
                assert waited < 10_000
            history = (await h.api.get(f"/v1/workers/{worker['id']}/history")).json()
            assert len(history) == history_before + 1  # one attempt per backoff step
            gaps.append(waited)
        assert gaps == [10, 20, 40, 80]
        assert "exited unexpectedly (exit code 3)" in history[-2]["reason"]
        await h.api.aclose()

    run(scenario())


def test_at_a_zero_balance_no_worker_starts_and_the_endpoint_says_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        acct = (await h.api.post("/v1/accounts", json={"name": "broke"})).json()
        key = {"Authorization": f"Bearer {acct['apiKey']}"}
        src = h.home / "src" / "broke"
        src.mkdir(parents=True)
        (src / "handler.py").write_text("def handler(job):\n    return 1\n")
        gz = {**key, "Content-Type": "application/gzip"}
        upload = (await h.api.post("/v1/sources", headers=gz, content=pack(src))).json()
        resp = await h.api.post(
            "/v1/endpoints", headers=key, json={"name": "broke", "sourceId": upload["id"]}
        )
        ep = resp.json()
        await h.api.post(f"/v2/{ep['id']}/run", headers=key, json={"input": {}})
        await h.tick()
        record = (await h.api.get(f"/v1/endpoints/{ep['id']}", headers=key)).json()
        assert record["workerCounts"] == {}
        assert record["scaling"]["reason"] == "zero_balance"
        assert "balance" in record["status"]
        assert (await h.api.get("/v1/accounts/me", headers=key)).json()["balance"] == "0.000000"
        await h.api.post(f"/v1/accounts/{acct['id']}/credits", json={"amount": "10.00"})
        await h.tick()
        workers = (await h.api.get(f"/v1/endpoints/{ep['id']}/workers", headers=key)).json()
        assert len(workers) == 1
        await h.api.aclose()

    run(scenario())


def test_usage_and_history_stay_readable_after_the_endpoint_is_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = build(tmp_path)
        ep = await h.deploy("gone", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        h.clock.advance(5)
        await h.api.delete(f"/v1/endpoints/{ep['id']}")
        await h.tick()
        await h.meter()
        assert (await h.api.get(f"/v1/endpoints/{ep['id']}")).status_code == 404
        report = await usage(h, endpointId=ep["id"])
        assert seconds_by_state(report) == {"INITIALIZING": 5}
        history = (await h.api.get(f"/v1/workers/{worker['id']}/history")).json()
        assert [e["state"] for e in history][-1] == "STOPPED"
        balance_before = (await h.api.get("/v1/accounts/me")).json()["balance"]
        await h.meter()  # metering again never charges twice
        assert (await h.api.get("/v1/accounts/me")).json()["balance"] == balance_before
        await h.api.aclose()

    run(scenario())
