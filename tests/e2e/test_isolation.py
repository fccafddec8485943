"""Isolation between accounts and keys on a live server: account B never sees or touches account A's
endpoints, jobs, workers or logs (404, never 403), and a worker's key reaches only its own endpoint's
worker routes."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.support.live import LiveServer, handler_dir, wait_for


@pytest.fixture(scope="module")
def world(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Account A with a running endpoint, a finished job, a worker and logs; account B with its own
    (worker-less) endpoint and a queued job."""
    root = tmp_path_factory.mktemp("isolation")
    key_a = server.new_account("alice", "100.00")
    key_b = server.new_account("bob", None)
    ep_a = server.deploy(
        "shared-name", handler_dir(root / "a", "echo"), key_a, env={"EMBER_TEST_SDK": "ember"}, workersMin=1
    )["id"]
    ep_b = server.deploy("shared-name", handler_dir(root / "b", "echo"), key_b, workersMax=0)["id"]
    done = server.api("POST", f"/v2/{ep_a}/runsync", key_a, json={"input": {"secret": "alice"}})
    assert done.status_code == 200 and done.json()["status"] == "COMPLETED", done.text
    queued = server.api("POST", f"/v2/{ep_b}/run", key_b, json={"input": {"mine": "bob"}}).json()["id"]
    worker_a = wait_for(lambda: server.workers(ep_a, key_a), 30, what="A's worker")[0]["id"]
    return {
        "key_a": key_a,
        "key_b": key_b,
        "ep_a": ep_a,
        "ep_b": ep_b,
        "job_a": done.json()["id"],
        "job_b": queued,
        "worker_a": worker_a,
    }


def _not_found(resp: Any) -> None:
    assert resp.status_code == 404, (resp.request.method, resp.request.url, resp.status_code, resp.text)
    assert resp.json()["error"]


def test_account_b_cannot_see_or_touch_a_s_endpoint(server: LiveServer, world: dict[str, Any]) -> None:
    b, ep_a = world["key_b"], world["ep_a"]
    for method, path, body in [
        ("GET", f"/v1/endpoints/{ep_a}", None),
        ("PATCH", f"/v1/endpoints/{ep_a}", {"workersMax": 5}),
        ("DELETE", f"/v1/endpoints/{ep_a}", None),
        ("GET", f"/v1/endpoints/{ep_a}/workers", None),
        ("GET", f"/v1/endpoints/{ep_a}/logs", None),
        ("GET", f"/v1/endpoints/{ep_a}/releases", None),
        ("POST", f"/v1/endpoints/{ep_a}/rollback", {}),
        ("POST", f"/v2/{ep_a}/run", {"input": {}}),
        ("POST", f"/v2/{ep_a}/runsync", {"input": {}}),
        ("GET", f"/v2/{ep_a}/health", None),
        ("POST", f"/v2/{ep_a}/purge-queue", None),
        ("GET", "/v1/jobs?endpointId=" + ep_a, None),
    ]:
        _not_found(server.api(method, path, b, json=body))
    listed = server.api("GET", "/v1/endpoints", b).json()
    assert [e["id"] for e in listed] == [world["ep_b"]]
    # A's endpoint is untouched.
    mine = server.api("GET", f"/v1/endpoints/{ep_a}", world["key_a"]).json()
    assert mine["workersMax"] != 5


def test_the_same_name_resolves_to_each_account_s_own_endpoint(
    server: LiveServer, world: dict[str, Any]
) -> None:
    by_name_a = server.api("GET", "/v1/endpoints/shared-name", world["key_a"]).json()
    by_name_b = server.api("GET", "/v1/endpoints/shared-name", world["key_b"]).json()
    assert by_name_a["id"] == world["ep_a"] and by_name_b["id"] == world["ep_b"]


def test_account_b_cannot_see_or_touch_a_s_jobs(server: LiveServer, world: dict[str, Any]) -> None:
    b, job_a = world["key_b"], world["job_a"]
    for ep in (world["ep_a"], world["ep_b"]):  # neither through A's endpoint nor through B's own
        for method, op in [("GET", "status"), ("GET", "stream"), ("POST", "cancel"), ("POST", "retry")]:
            _not_found(server.api(method, f"/v2/{ep}/{op}/{job_a}", b))
    assert job_a not in {j["id"] for j in server.api("GET", "/v1/jobs", b).json()}
    assert (
        server.api("GET", f"/v2/{world['ep_a']}/status/{job_a}", world["key_a"]).json()["status"]
        == "COMPLETED"
    )
    # And the other way round: A cannot reach B's job through A's endpoint.
    _not_found(server.api("GET", f"/v2/{world['ep_a']}/status/{world['job_b']}", world["key_a"]))
    _not_found(server.api("POST", f"/v2/{world['ep_a']}/cancel/{world['job_b']}", world["key_a"]))
    assert server.api("GET", f"/v2/{world['ep_b']}/status/{world['job_b']}", world["key_b"]).json()[
        "status"
    ] == ("IN_QUEUE")


def test_account_b_cannot_see_or_touch_a_s_workers(server: LiveServer, world: dict[str, Any]) -> None:
    b, wk = world["key_b"], world["worker_a"]
    _not_found(server.api("GET", f"/v1/workers/{wk}", b))
    _not_found(server.api("GET", f"/v1/workers/{wk}/history", b))
    _not_found(server.api("GET", f"/v1/workers/{wk}/shell", b))
    _not_found(server.api("POST", f"/v1/workers/{wk}/exec", b, json={"command": ["id"]}))
    _not_found(server.api("GET", f"/v1/endpoints/{world['ep_b']}/logs", b, params={"worker": wk}))
    assert server.api("GET", f"/v1/workers/{wk}", world["key_a"]).status_code == 200


def test_a_user_key_cannot_use_admin_routes(server: LiveServer, world: dict[str, Any]) -> None:
    _not_found(server.api("POST", "/v1/accounts", world["key_b"], json={"name": "mallory"}))
    resp = server.api("POST", "/v1/accounts/whoever/credits", world["key_b"], json={"amount": "1000.00"})
    _not_found(resp)
    assert Decimal(server.api("GET", "/v1/accounts/me", world["key_b"]).json()["balance"]) == 0


def _worker_key(server: LiveServer, worker_id: str) -> str:
    return server.worker_key(worker_id)


def test_a_worker_key_reaches_only_its_own_endpoint_s_worker_routes(
    server: LiveServer, world: dict[str, Any]
) -> None:
    ep_a, ep_b, wk = world["ep_a"], world["ep_b"], world["worker_a"]
    key = _worker_key(server, wk)
    ok = server.api("GET", f"/v2/{ep_a}/ping/{wk}", key)
    assert ok.status_code == 200, ok.text
    # Its own worker id on another endpoint, another worker id on its own endpoint: not found.
    _not_found(server.api("GET", f"/v2/{ep_b}/ping/{wk}", key))
    _not_found(server.api("GET", f"/v2/{ep_b}/job-take/{wk}", key))
    _not_found(server.api("GET", f"/v2/{ep_a}/ping/wk-someoneelse", key))
    _not_found(server.api("POST", f"/v2/{ep_b}/job-done/{wk}/{world['job_b']}", key, json={"output": 1}))
    assert (
        server.api("GET", f"/v2/{ep_b}/status/{world['job_b']}", world["key_b"]).json()["status"]
        == "IN_QUEUE"
    )
    # A worker key is no user key: the client and management APIs refuse it.
    for method, path in [
        ("GET", f"/v2/{ep_a}/health"),
        ("POST", f"/v2/{ep_a}/run"),
        ("GET", f"/v2/{ep_a}/status/{world['job_a']}"),
        ("GET", "/v1/endpoints"),
        ("GET", f"/v1/workers/{wk}"),
        ("GET", "/v1/jobs"),
    ]:
        resp = server.api(method, path, key, json={"input": {}} if method == "POST" else None)
        assert resp.status_code == 401, (path, resp.status_code, resp.text)
