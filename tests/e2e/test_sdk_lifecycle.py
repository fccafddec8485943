"""Ember's worker SDK as a process under a real control plane: SIGTERM drains (the held job finishes and
reports, no new job is taken, exit 0), and a result survives a control-plane restart (job-done retried)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.support.live import LiveServer, handler_dir, live_server, wait_for

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def _deploy_slow(server: LiveServer, root: Path, name: str) -> tuple[str, dict[str, Any]]:
    ep = server.deploy(
        name,
        handler_dir(root, "slow"),
        workersMin=1,
        workersMax=1,
        idleTimeout=600,
        env={"EMBER_TEST_SDK": "ember", "RUNPOD_LOG_LEVEL": "DEBUG"},
    )
    worker = wait_for(
        lambda: [w for w in server.workers(ep["id"]) if w["state"] == "IDLE"], 60, what="an idle worker"
    )[0]
    return ep["id"], worker


def _run(server: LiveServer, endpoint_id: str, seconds: float) -> str:
    resp = server.api("POST", f"/v2/{endpoint_id}/run", json={"input": {"seconds": seconds}})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]  # type: ignore[no-any-return]


def _status(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v2/{endpoint_id}/status/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _worker_log(server: LiveServer, worker_id: str) -> str:
    path = server.home / "runtime" / "logs" / f"{worker_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_sigterm_drains_the_held_job_takes_no_new_one_and_exits_0(server: LiveServer, tmp_path: Path) -> None:
    endpoint_id, worker = _deploy_slow(server, tmp_path, "drain")
    pid = server.worker_pid(worker["id"])
    held = _run(server, endpoint_id, 3)
    wait_for(
        lambda: _status(server, endpoint_id, held)["status"] == "IN_PROGRESS", 30, what="the job to start"
    )
    queued = _run(server, endpoint_id, 0)

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, what=f"worker process {pid} to exit")

    first_run = _worker_log(server, worker["id"]).split("worker_stopped", 1)
    assert len(first_run) == 2, _worker_log(server, worker["id"])
    assert f"job_done job_id={held}" in first_run[0]
    assert queued not in first_run[0]  # never taken by the draining process
    done = _status(server, endpoint_id, held)
    assert done["status"] == "COMPLETED" and done["output"] == {"slept_s": 3.0}
    # The lifecycle notices the exit on its next tick and records why.
    wait_for(
        lambda: any(
            "exit code 0" in (event["reason"] or "")
            for event in server.api("GET", f"/v1/workers/{worker['id']}/history").json()
        ),
        30,
        what="the worker's exit (code 0) in its history",
    )
    # The queued job is served once the lifecycle has replaced the worker.
    final = wait_for(
        lambda: (s := _status(server, endpoint_id, queued))["status"] in FINAL and s,
        90,
        what="the queued job",
    )
    assert final["status"] == "COMPLETED"


def test_a_result_posted_while_the_control_plane_is_down_is_retried_until_it_is_back(
    tmp_path: Path,
) -> None:
    # Pings stop while the server is down; a long ping timeout keeps the worker from being judged lost,
    # so the job can only complete through the worker's retried job-done.
    with live_server(tmp_path / "home", env={"EMBER_PING_TIMEOUT_S": "60"}) as server:
        endpoint_id, worker = _deploy_slow(server, tmp_path, "retry")
        pid = server.worker_pid(worker["id"])
        job = _run(server, endpoint_id, 1)
        wait_for(lambda: _status(server, endpoint_id, job)["status"] == "IN_PROGRESS", 30, what="job start")
        server.kill()
        wait_for(
            lambda: f"job_done_retry job_id={job}" in _worker_log(server, worker["id"]),
            30,
            what="a failed job-done attempt",
        )
        server.start()  # same home, same port
        done = wait_for(
            lambda: (s := _status(server, endpoint_id, job))["status"] in FINAL and s,
            60,
            what="the job to end",
        )
        assert done["status"] == "COMPLETED" and done["output"] == {"slept_s": 1.0}
        assert done["workerId"] == worker["id"]
        assert f"job_done job_id={job}" in _worker_log(server, worker["id"])
        assert Path(f"/proc/{pid}").exists()  # the same process delivered it; it was never replaced
