"""Hosts: a control plane that runs no workers itself (EMBER_LOCAL_WORKERS=false) and two `ember agent`
processes, each with its own data directory and 2 virtual GPUs, joined over loopback with the tokens
`ember hosts add` printed. An endpoint with 4 workers gets 2 on each host; jobs, logs and exec reach
workers through their host's agent; a host whose agent stops answering is lost after its timeout and its
workers are started on the other host; when it comes back, the workers it still runs that the control
plane no longer wants are stopped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agents import LiveAgent
from tests.support.live import LiveServer, handler_dir, wait_for

HOST_TIMEOUT_S = 4


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    env = {
        "EMBER_LOCAL_WORKERS": "false",
        "EMBER_HOST_TIMEOUT_S": str(HOST_TIMEOUT_S),
        "EMBER_DOCKER": "0",
        "EMBER_BACKOFF_BASE_S": "1",
    }
    srv = LiveServer(tmp_path / "server", env=env).start()
    try:
        yield srv
    finally:
        srv.stop()


def hosts(server: LiveServer) -> dict[str, dict[str, Any]]:
    resp = server.api("GET", "/v1/hosts")
    assert resp.status_code == 200, resp.text
    return {h["name"]: h for h in resp.json()["hosts"]}


def live_by_host(server: LiveServer, endpoint_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for w in server.workers(endpoint_id):
        if w["state"] in ("IDLE", "RUNNING"):
            out.setdefault(w["hostId"], []).append(w["id"])
    return out


def test_two_hosts_share_an_endpoint_and_a_lost_host_is_replaced(server: LiveServer, tmp_path: Path) -> None:
    a = LiveAgent(server, "gpu-a", tmp_path / "agent-a", gpus="TEST_GPU:2")
    b = LiveAgent(server, "gpu-b", tmp_path / "agent-b", gpus="TEST_GPU:2")
    agents = [a, b]
    try:
        for agent in agents:
            agent.start()
        wait_for(
            lambda: all(h["state"] == "READY" for n, h in hosts(server).items() if n.startswith("gpu-")),
            30,
            what="both hosts to report",
        )
        listed = hosts(server)
        assert "local" not in listed  # this control plane runs no workers itself
        assert listed["gpu-a"]["gpus"] == {"TEST_GPU": 2} and listed["gpu-a"]["backends"] == ["local"]

        # workersMax 4 over two hosts of 2 GPUs: both hosts get workers, 2 each.
        four = server.deploy(
            "four", handler_dir(tmp_path, "echo"), gpuTypeIds=["TEST_GPU"], workersMin=4, workersMax=4
        )
        placed = wait_for(
            lambda: (m := live_by_host(server, four["id"])) and sum(map(len, m.values())) == 4 and m,
            90,
            what=f"4 workers\n{server.log()[-3000:]}\n{a.log()}\n{b.log()}",
        )
        assert sorted(placed) == sorted([a.host_id, b.host_id])
        assert all(len(ws) == 2 for ws in placed.values()), placed
        used = hosts(server)
        assert used["gpu-a"]["gpusUsed"] == {"TEST_GPU": 2} and used["gpu-a"]["workers"] == 2
        assert server.run_job(four["id"], {"n": 1})["echo"] == {"n": 1}

        # exec and logs reach a worker through its host's agent.
        wid = placed[a.host_id][0]
        resp = server.api("POST", f"/v1/workers/{wid}/exec", json={"command": ["echo", "from-host-a"]})
        assert resp.status_code == 200, resp.text
        assert resp.json()["exitCode"] == 0 and "from-host-a" in resp.json()["output"]
        assert wid in a.worker_pids() and wid not in b.worker_pids()
        resp = server.api("GET", f"/v1/endpoints/{four['id']}/logs", params={"worker": wid})
        assert resp.status_code == 200 and f"[{wid}]" in resp.text, resp.text

        # Now an endpoint of 2 workers (1 on each host, the other endpoint gone): host a's machine
        # goes away (agent and workers SIGKILLed); after the timeout its worker starts on host b.
        assert server.api("DELETE", f"/v1/endpoints/{four['id']}").status_code in (200, 204)
        wait_for(
            lambda: not a.worker_pids() and not b.worker_pids(),
            30,
            what="the first endpoint's workers to stop",
        )
        two = server.deploy(
            "two", handler_dir(tmp_path, "echo"), gpuTypeIds=["TEST_GPU"], workersMin=2, workersMax=2
        )
        spread = wait_for(
            lambda: (m := live_by_host(server, two["id"])) and sorted(map(len, m.values())) == [1, 1] and m,
            60,
            what="one worker on each host",
        )
        moved = spread[a.host_id][0]
        a.kill(with_workers=True)
        started = time.monotonic()
        wait_for(lambda: hosts(server)["gpu-a"]["state"] == "LOST", HOST_TIMEOUT_S + 10, what="host a lost")
        wait_for(
            lambda: (
                sorted(live_by_host(server, two["id"]).get(b.host_id, []))
                == sorted([moved, spread[b.host_id][0]])
            ),
            60,
            what=f"both workers on host b\n{server.log()[-3000:]}",
        )
        # within the host timeout plus one cold start (the worker keeps its id: it was restarted)
        took = time.monotonic() - started
        assert took < HOST_TIMEOUT_S + 15, took
        print(f"host a lost -> its worker running on host b: {took:.1f} s")
        assert server.run_job(two["id"], {"n": 2})["echo"] == {"n": 2}

        # Host a's agent restarts; nothing it runs is wanted (its worker died with it): it is READY
        # again and takes new work; a worker left running by a killed agent is stopped when it is back.
        a.start()
        wait_for(lambda: hosts(server)["gpu-a"]["state"] == "READY", 30, what="host a back")
        b.kill()  # agent only: its two workers keep running, unknown to anyone
        orphans = set(b.worker_pids())
        assert len(orphans) == 2
        wait_for(lambda: hosts(server)["gpu-b"]["state"] == "LOST", HOST_TIMEOUT_S + 10, what="host b lost")
        wait_for(
            lambda: len(live_by_host(server, two["id"]).get(a.host_id, [])) == 2,
            60,
            what="both workers on host a",
        )
        b.start()
        wait_for(lambda: not b.worker_pids(), 30, what="host b's unwanted workers to be stopped")
        assert server.run_job(two["id"], {"n": 3})["echo"] == {"n": 3}
    finally:
        for agent in agents:
            agent.kill(with_workers=True)


def test_an_agent_with_a_bad_token_is_refused_and_says_so(server: LiveServer, tmp_path: Path) -> None:
    done = server.cli(
        "agent", "--server", server.url, "--token", "eh_not-a-token", "--home", str(tmp_path / "x")
    )
    assert done.returncode == 1
    assert "refused" in done.stderr and "token" in done.stderr, done.stderr


def test_hosts_cli_adds_lists_and_removes(server: LiveServer) -> None:
    added = server.cli("hosts", "add", "box-1")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("eh_") and "ember agent --server" in added.stderr
    again = server.cli("hosts", "add", "box-1")
    assert again.returncode == 1 and "exists" in (again.stdout + again.stderr)
    listed = server.cli("hosts")
    assert listed.returncode == 0 and "box-1" in listed.stdout and "NEW" in listed.stdout
    assert token not in listed.stdout
    user = server.new_account("tenant")
    assert server.api("GET", "/v1/hosts", key=user).status_code == 404  # admin only
    assert server.cli("hosts", "rm", "box-1").returncode == 0
    assert "box-1" not in server.cli("hosts").stdout
