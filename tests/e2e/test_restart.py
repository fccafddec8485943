"""A graceful restart of the control plane (SIGTERM, then `ember server` again on the same home and port):
the loops stop before the API closes, so the live workers are neither judged lost nor stopped, and the
next start re-adopts them (same ids, no UNHEALTHY in their history) and gives them the next job."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import LiveServer, handler_dir, live_server, wait_for


def _idle_worker(server: LiveServer, endpoint_id: str) -> dict[str, Any]:
    ws = wait_for(
        lambda: [w for w in server.workers(endpoint_id) if w["state"] == "IDLE"],
        90,
        what=f"an idle worker\n{server.log()[-3000:]}",
    )
    return ws[0]  # type: ignore[no-any-return]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(180)
def test_sigterm_then_restart_readopts_the_live_worker_and_runs_the_next_job_on_it(tmp_path: Path) -> None:
    # Pings every second, lost after 6 s of silence (LiveServer's defaults): the server is down for longer
    # than that, which must not count against the worker. A long take-hold keeps a poll open at SIGTERM.
    with live_server(tmp_path / "home", env={"EMBER_TAKE_HOLD_S": "20"}) as server:
        ep = server.deploy(
            "restart",
            handler_dir(tmp_path, "echo"),
            env={"EMBER_TEST_SDK": "runpod"},
            workersMin=1,
            workersMax=1,
            idleTimeout=600,
        )["id"]
        worker = _idle_worker(server, ep)
        pid = server.worker_pid(worker["id"])
        assert (
            server.api("POST", f"/v2/{ep}/runsync", json={"input": {"n": 0}}).json()["status"] == "COMPLETED"
        )

        stopping = time.monotonic()
        server.stop()  # SIGTERM, then wait for the exit
        stop_s = time.monotonic() - stopping
        assert "Traceback" not in server.log(), server.log()[-3000:]
        assert _alive(pid), "the worker process was stopped with the control plane"
        time.sleep(8)  # the outage under test: longer than the 6 s ping timeout
        assert _alive(pid)
        server.start()

        assert _idle_worker(server, ep)["id"] == worker["id"]
        resp = server.api("POST", f"/v2/{ep}/runsync", json={"input": {"n": 1}})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "COMPLETED", body
        assert body["output"]["echo"] == {"n": 1}
        job = server.api("GET", f"/v2/{ep}/status/{body['id']}").json()
        assert job["workerId"] == worker["id"]
        history = server.api("GET", f"/v1/workers/{worker['id']}/history").json()
        assert not [h for h in history if h["state"] in ("UNHEALTHY", "STOPPED")], history
        assert [w["id"] for w in server.workers(ep)] == [worker["id"]]  # none replaced it
        assert _alive(pid) and server.worker_pid(worker["id"]) == pid
        # The open long poll did not hold the shutdown for its whole take-hold.
        assert stop_s < 15, f"SIGTERM took {stop_s:.1f} s"
