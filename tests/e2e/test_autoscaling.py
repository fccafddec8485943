"""Autoscaling, worker states, rollouts, backoff, GPU throttling and account limits, end to end on the
local backend with real worker processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import LiveServer, handler_dir, live_server, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"EMBER_GPUS": "TEST_GPU:2", "EMBER_BACKOFF_BASE_S": "1"}
    with live_server(tmp_path_factory.mktemp("ember-scale"), env=env) as s:
        yield s


def run_jobs(server: LiveServer, endpoint_id: str, inputs: list[Any], key: str | None = None) -> list[str]:
    ids = []
    for body in inputs:
        resp = server.api("POST", f"/v2/{endpoint_id}/run", key, json={"input": body})
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["id"])
    return ids


def statuses(server: LiveServer, endpoint_id: str, ids: list[str], key: str | None = None) -> list[str]:
    return [server.api("GET", f"/v2/{endpoint_id}/status/{i}", key).json()["status"] for i in ids]


def history(server: LiveServer, worker_id: str, key: str | None = None) -> list[dict[str, Any]]:
    resp = server.api("GET", f"/v1/workers/{worker_id}/history", key)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def delete(server: LiveServer, endpoint_id: str, key: str | None = None) -> None:
    server.api("DELETE", f"/v1/endpoints/{endpoint_id}", key)
    wait_for(
        lambda: not server.workers(endpoint_id, key) if _exists(server, endpoint_id, key) else True,
        60,
        what="workers of a deleted endpoint to stop",
    )


def _exists(server: LiveServer, endpoint_id: str, key: str | None) -> bool:
    return server.api("GET", f"/v1/endpoints/{endpoint_id}", key).status_code == 200


def test_a_burst_scales_from_zero_to_max_and_back_to_zero(server: LiveServer, tmp_path: Path) -> None:
    ep = server.deploy(
        "burst", handler_dir(tmp_path, "slow"), workersMin=0, workersMax=3, idleTimeout=2, scalerValue=1
    )
    assert server.workers(ep["id"]) == []
    ids = run_jobs(server, ep["id"], [{"seconds": 0.5}] * 30)
    seen_states: set[str] = set()
    peak = 0

    def all_done() -> bool:
        nonlocal peak
        workers = server.workers(ep["id"])
        peak = max(peak, len(workers))
        seen_states.update(w["state"] for w in workers)
        return all(s == "COMPLETED" for s in statuses(server, ep["id"], ids))

    wait_for(all_done, 120, interval_s=0.2, what="30 jobs to complete")
    assert peak == 3
    assert "RUNNING" in seen_states  # INITIALIZING is brief: the histories below show it
    decisions = [line for line in server.log().splitlines() if f"endpoint={ep['id']}" in line]
    assert any("reason=cold_start" in line for line in decisions)  # the first job started a worker at once
    # Jobs waiting past scalerValue added the others, up to workersMax (then the cap is the reason).
    assert any(
        "target=3 reason=queue_delay" in line or "target=3 reason=max_workers" in line for line in decisions
    )
    wait_for(lambda: server.workers(ep["id"]) == [], 60, what="scale to zero after idleTimeout")
    stopped = server.workers(ep["id"], include_stopped=True)
    assert len(stopped) >= 3 and all(w["state"] == "STOPPED" for w in stopped)
    for w in stopped:
        states = [e["state"] for e in history(server, w["id"])]
        assert states[-1] == "STOPPED" and "INITIALIZING" in states
    record = server.api("GET", f"/v1/endpoints/{ep['id']}").json()
    assert record["scaling"] == {"desiredWorkers": 0, "reason": record["scaling"]["reason"]}
    delete(server, ep["id"])


def test_an_update_mid_burst_lets_outdated_workers_finish_their_jobs(
    server: LiveServer, tmp_path: Path
) -> None:
    ep = server.deploy("rollout", handler_dir(tmp_path, "slow"), workersMin=2, workersMax=2, idleTimeout=30)
    wait_for(
        lambda: sum(w["state"] == "IDLE" for w in server.workers(ep["id"])) == 2, 60, what="2 idle workers"
    )
    old = {w["id"] for w in server.workers(ep["id"])}
    ids = run_jobs(server, ep["id"], [{"seconds": 2}] * 6)
    wait_for(
        lambda: sum(w["state"] == "RUNNING" for w in server.workers(ep["id"])) == 2, 30, what="2 running"
    )
    resp = server.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"env": {"RELEASE": "2"}})
    assert resp.status_code == 200 and resp.json()["release"] == 2
    wait_for(
        lambda: all(s == "COMPLETED" for s in statuses(server, ep["id"], ids)), 90, what="jobs to complete"
    )
    wait_for(lambda: {w["id"] for w in server.workers(ep["id"])}.isdisjoint(old), 60, what="old workers gone")
    for wid in old:
        states = [e["state"] for e in history(server, wid)]
        assert "OUTDATED" in states and states[-1] == "STOPPED"
        assert states.index("OUTDATED") > states.index("RUNNING")  # it was running a job when outdated
    new = server.workers(ep["id"])
    assert len(new) == 2 and all(w["release"] == 2 for w in new)
    jobs = [server.api("GET", f"/v2/{ep['id']}/status/{i}").json() for i in ids]
    assert {j["workerId"] for j in jobs} & old  # old workers finished the jobs they held
    delete(server, ep["id"])


def test_a_handler_that_crashes_on_start_goes_unhealthy_with_growing_retry_intervals(
    server: LiveServer, tmp_path: Path
) -> None:
    ep = server.deploy("crashy", handler_dir(tmp_path, "exits_on_import"), workersMin=1, workersMax=1)

    def attempts() -> list[float]:
        workers = server.workers(ep["id"], include_stopped=True)
        if not workers:
            return []
        events = history(server, workers[0]["id"])
        return [_at(e["at"]) for e in events if e["state"] == "INITIALIZING"]

    wait_for(lambda: len(attempts()) >= 4, 60, what="four start attempts")
    times = attempts()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0  # 1 s doubling (EMBER_BACKOFF_BASE_S=1)
    assert gaps[2] > gaps[0]
    worker = server.workers(ep["id"])[0]
    reasons = [e["reason"] for e in history(server, worker["id"]) if e["state"] == "UNHEALTHY"]
    assert reasons and all("exit code 3" in r for r in reasons)
    delete(server, ep["id"])


def _at(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_endpoints_competing_for_two_gpu_slots_are_throttled_until_a_slot_frees(
    server: LiveServer, tmp_path: Path
) -> None:
    a = server.deploy(
        "gpu-a", handler_dir(tmp_path, "echo"), workersMin=2, workersMax=2, gpuTypeIds=["TEST_GPU"]
    )
    wait_for(
        lambda: sum(w["state"] == "IDLE" for w in server.workers(a["id"])) == 2, 60, what="a's 2 workers"
    )
    devices = sorted(d for w in server.workers(a["id"]) for d in w["gpuDevices"])
    assert devices == ["0", "1"]
    b = server.deploy(
        "gpu-b", handler_dir(tmp_path, "echo"), workersMin=1, workersMax=1, gpuTypeIds=["TEST_GPU"]
    )
    wait_for(lambda: [w["state"] for w in server.workers(b["id"])] == ["THROTTLED"], 30, what="b throttled")
    time.sleep(1)  # observe for a moment: it stays throttled while both slots are taken
    assert [w["state"] for w in server.workers(b["id"])] == ["THROTTLED"]
    server.api("PATCH", f"/v1/endpoints/{a['id']}", json={"workersMin": 1, "workersMax": 1})
    wait_for(
        lambda: [w["state"] for w in server.workers(b["id"])] == ["IDLE"],
        60,
        what="b placed when a slot frees",
    )
    [bw] = server.workers(b["id"])
    assert bw["gpuTypeId"] == "TEST_GPU" and len(bw["gpuDevices"]) == 1
    assert [e["state"] for e in history(server, bw["id"])][:2] == ["THROTTLED", "INITIALIZING"]
    usage = server.api("GET", "/v1/billing/usage", params={"workerId": bw["id"]}).json()
    assert all(i["state"] != "THROTTLED" for i in usage["items"])
    delete(server, a["id"])
    delete(server, b["id"])


def test_account_limits_follow_the_balance(server: LiveServer, tmp_path: Path) -> None:
    acct = server.api("POST", "/v1/accounts", json={"name": "limits"}).json()
    key = acct["apiKey"]
    credit = server.api("POST", f"/v1/accounts/{acct['id']}/credits", json={"amount": "50.00"})
    assert credit.status_code == 200 and credit.json()["maxWorkers"] == 5
    eps = [
        server.deploy(f"lim-{i}", handler_dir(tmp_path, "echo"), key=key, workersMin=6, workersMax=6)
        for i in range(2)
    ]

    def live() -> int:
        return sum(len(server.workers(e["id"], key)) for e in eps)

    wait_for(lambda: live() == 5, 60, what="5 workers at $50")
    for _ in range(10):  # never more than 5 while the balance is $50
        assert live() <= 5
        time.sleep(0.2)
    reasons = {server.api("GET", f"/v1/endpoints/{e['id']}", key).json()["scaling"]["reason"] for e in eps}
    assert "account_limit" in reasons
    me = server.api("GET", "/v1/accounts/me", key).json()
    assert me["maxWorkers"] == 5 and me["workers"] == 5
    server.api("POST", f"/v1/accounts/{acct['id']}/credits", json={"amount": "100.00"})
    wait_for(lambda: live() == 10, 90, what="10 workers at $150")
    assert server.api("GET", "/v1/accounts/me", key).json()["maxWorkers"] == 10
    for e in eps:
        delete(server, e["id"], key)
