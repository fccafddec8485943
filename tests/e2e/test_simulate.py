"""The simulator against a real run: a short steady trace is replayed on a live server (real worker
processes, a handler that sleeps each job's execution time), then `ember simulate` replays the server's
record of it (its job times, its workers' cold starts, its tick) through the scaler on a virtual clock;
the worker-seconds of the two agree within 10 %."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.core.traces import Shape, Trace, synthetic
from tests.support.live import LiveServer, handler_dir, wait_for

pytestmark = pytest.mark.slow

# 75 s of Poisson arrivals at 1/s, executions of 0.5-1.5 s: a few workers, scale-ups and scale-downs.
TRACE = synthetic(Shape(kind="steady", duration_s=75, rate_per_s=1.0, execution_s=1.0, spread=0.5, seed=2))
STATES = ("INITIALIZING", "IDLE", "RUNNING")


def replay(server: LiveServer, endpoint_id: str, trace: Trace) -> None:
    """Submit each job at its arrival offset (the pause paces the workload; it waits on no logic)."""
    with server.client() as c:
        start = time.monotonic()
        for job in trace.jobs:
            time.sleep(max(0.0, start + job.arrival_s - time.monotonic()))
            resp = c.post(f"/v2/{endpoint_id}/run", json={"input": {"seconds": job.execution_s}})
            assert resp.status_code == 200, resp.text


def traffic(server: LiveServer, endpoint_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v1/endpoints/{endpoint_id}/traffic", params={"seconds": 3600})
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def real_worker_seconds(server: LiveServer, endpoint_id: str) -> dict[str, float]:
    """Seconds per state over every worker's recorded transitions (all of them stopped)."""
    spent: dict[str, float] = {}
    for w in server.workers(endpoint_id, include_stopped=True):
        history = server.api("GET", f"/v1/workers/{w['id']}/history").json()
        times = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp() for e in history]
        for event, start, end in zip(history, times, times[1:], strict=False):
            spent[event["state"]] = spent.get(event["state"], 0.0) + (end - start)
    return {s: spent.get(s, 0.0) for s in STATES}


def test_simulated_worker_seconds_agree_with_a_real_run_within_ten_percent(
    server: LiveServer, tmp_path: Path
) -> None:
    ep = server.deploy(
        "replayed",
        handler_dir(tmp_path, "slow"),
        workersMin=0,
        workersMax=4,
        idleTimeout=5,
        scalerType="QUEUE_DELAY",
        scalerValue=1,
    )
    replay(server, ep["id"], TRACE)

    def finished() -> bool:
        jobs = traffic(server, ep["id"])["jobs"]
        return len(jobs) == len(TRACE.jobs) and all(j["completedAt"] is not None for j in jobs)

    wait_for(finished, 120, interval_s=0.5, what="the replayed jobs to finish")
    wait_for(lambda: server.workers(ep["id"]) == [], 60, what="the workers to scale to zero")
    real = real_worker_seconds(server, ep["id"])

    out = server.cli("simulate", "--endpoint", ep["id"], "--since", "900", "--no-grid", "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["trace"]["jobs"] == len(TRACE.jobs)
    simulated = {s: body["current"]["workerSeconds"].get(s, 0.0) for s in STATES}
    seen = f"real {real}, simulated {simulated}, cold start {body['coldStartS']} s"
    assert abs(sum(simulated.values()) - sum(real.values())) <= 0.10 * sum(real.values()), seen
    assert abs(simulated["RUNNING"] - real["RUNNING"]) <= 0.10 * real["RUNNING"], seen
    print(seen)  # the figures, for the report (pytest -s)


def test_traffic_of_an_endpoint_is_its_owners_only(server: LiveServer, tmp_path: Path) -> None:
    ep = server.deploy("mine", handler_dir(tmp_path, "noop"), workersMax=1)
    other = server.new_account("simulate-stranger")
    resp = server.api("GET", f"/v1/endpoints/{ep['id']}/traffic", other)
    assert resp.status_code == 404
    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/v1/endpoints/{ep['id']}/traffic").status_code == 401
