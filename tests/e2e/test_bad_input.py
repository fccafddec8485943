"""Bad input gets a clear 4xx with a JSON body `{"error": …}` (malformed JSON, missing input, wrong
policy types, unknown endpoint or job, oversized bodies, a worker reporting a job it does not hold),
and the server keeps serving after each."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import LiveServer, handler_dir, wait_for

MB = 1024 * 1024


@pytest.fixture(scope="module")
def echo(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    source = handler_dir(tmp_path_factory.mktemp("bad-input"), "echo")
    ep = server.deploy("echo-bad", source, env={"EMBER_TEST_SDK": "ember"}, workersMin=1, workersMax=1)
    return ep["id"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=60
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def _still_serving(server: LiveServer, http: httpx.Client, echo: str) -> Iterator[None]:
    """After every test the server still answers, and still runs a job end to end."""
    yield
    assert http.get("/healthz").status_code == 200
    resp = http.post(f"/v2/{echo}/runsync", json={"input": {"still": "alive"}})
    assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text
    assert resp.json()["output"]["echo"] == {"still": "alive"}


def _clear_error(resp: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    for word in words:
        assert word.lower() in json.dumps(body).lower(), (word, body)
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b'{"input": ', b"\xff\xfe garbage", b'{"input": {"a": 1}}}'],
    ids=["unquoted", "truncated", "not-utf8", "trailing-brace"],
)
def test_malformed_json_is_400(http: httpx.Client, echo: str, raw: bytes) -> None:
    for path in (f"/v2/{echo}/run", f"/v2/{echo}/runsync", "/v1/endpoints"):
        _clear_error(http.post(path, content=raw), 400, "malformed JSON")


@pytest.mark.parametrize(
    "body", [{}, {"inputs": {"a": 1}}, {"webhook": "http://127.0.0.1:1/x"}], ids=["empty", "typo", "no-input"]
)
def test_missing_input_is_400_naming_the_field(http: httpx.Client, echo: str, body: dict[str, Any]) -> None:
    err = _clear_error(http.post(f"/v2/{echo}/run", json=body), 400, "input")
    assert any(p["field"] == "input" for p in err["problems"])


@pytest.mark.parametrize(
    "body", [[1, 2], "just a string", 42, None], ids=["array", "string", "number", "null"]
)
def test_a_body_that_is_not_an_object_is_400(http: httpx.Client, echo: str, body: Any) -> None:
    _clear_error(http.post(f"/v2/{echo}/run", content=json.dumps(body)), 400)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"executionTimeout": "60s"}, "policy.executionTimeout"),
        ({"executionTimeout": 10}, "policy.executionTimeout"),  # below the 5 s minimum
        ({"executionTimeout": True}, "policy.executionTimeout"),
        ({"ttl": 1.5}, "policy.ttl"),
        ({"ttl": 1000}, "policy.ttl"),  # below the 10 s minimum
        ({"lowPriority": "yes"}, "policy.lowPriority"),
        ("fast", "policy"),
    ],
)
def test_wrong_policy_types_are_400_naming_the_field(
    http: httpx.Client, echo: str, policy: Any, field: str
) -> None:
    resp = http.post(f"/v2/{echo}/run", json={"input": {}, "policy": policy})
    err = _clear_error(resp, 400, field)
    assert any(p["field"] == field for p in err["problems"])


def test_every_problem_is_reported_at_once(http: httpx.Client, echo: str) -> None:
    body = {"policy": {"ttl": "x", "lowPriority": 1}, "webhook": "ftp://nope", "s3Config": []}
    err = _clear_error(http.post(f"/v2/{echo}/run", json=body), 400)
    fields = {p["field"] for p in err["problems"]}
    assert fields >= {"input", "policy.ttl", "policy.lowPriority", "webhook", "s3Config"}


def test_bad_query_values_are_400(http: httpx.Client, echo: str) -> None:
    _clear_error(http.post(f"/v2/{echo}/runsync?wait=soon", json={"input": {}}), 400, "wait")


def test_unknown_endpoint_is_404_on_every_route(http: httpx.Client) -> None:
    ghost = "ep-doesnotexist"
    for method, path in [
        ("POST", f"/v2/{ghost}/run"),
        ("POST", f"/v2/{ghost}/runsync"),
        ("GET", f"/v2/{ghost}/status/job-x"),
        ("GET", f"/v2/{ghost}/stream/job-x"),
        ("POST", f"/v2/{ghost}/cancel/job-x"),
        ("POST", f"/v2/{ghost}/retry/job-x"),
        ("POST", f"/v2/{ghost}/purge-queue"),
        ("GET", f"/v2/{ghost}/health"),
        ("GET", f"/v1/endpoints/{ghost}"),
        ("PATCH", f"/v1/endpoints/{ghost}"),
        ("DELETE", f"/v1/endpoints/{ghost}"),
        ("GET", f"/v1/endpoints/{ghost}/workers"),
        ("GET", f"/v1/endpoints/{ghost}/logs"),
    ]:
        kw: dict[str, Any] = {"json": {"input": {}}} if method in ("POST", "PATCH") else {}
        _clear_error(http.request(method, path, **kw), 404, "not found")


def test_unknown_job_is_404(http: httpx.Client, echo: str) -> None:
    for method, op in [
        ("GET", "status"),
        ("POST", "status"),
        ("GET", "stream"),
        ("POST", "cancel"),
        ("POST", "retry"),
    ]:
        _clear_error(http.request(method, f"/v2/{echo}/{op}/job-doesnotexist"), 404, "job-doesnotexist")


def test_unknown_route_is_a_json_404(http: httpx.Client) -> None:
    _clear_error(http.get("/v2/nothing/here/at/all"), 404)
    _clear_error(http.get("/v1/nope"), 404)


def test_oversized_bodies_are_413(http: httpx.Client, echo: str) -> None:
    big = b'{"input": "' + b"x" * (10 * MB) + b'"}'
    _clear_error(http.post(f"/v2/{echo}/run", content=big), 413, "limit")
    _clear_error(http.post("/v1/endpoints", content=b'{"name": "' + b"x" * (2 * MB) + b'"}'), 413, "limit")
    huge = b'{"input": "' + b"x" * (20 * MB) + b'"}'
    _clear_error(http.post(f"/v2/{echo}/runsync", content=huge), 413, "limit")


def test_a_declared_length_above_the_limit_is_refused_before_reading(server: LiveServer, echo: str) -> None:
    """A client announcing 11 MB gets its 413 without having to send the bytes."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            f"POST /v2/{echo}/run HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.admin_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {11 * MB}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"input": "')
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def _worker(server: LiveServer, endpoint_id: str) -> tuple[str, str]:
    """(worker id, its own key read from its process environment)."""
    workers = wait_for(
        lambda: [w for w in server.workers(endpoint_id) if w["state"] in ("IDLE", "RUNNING")],
        60,
        what="a ready worker",
    )
    wid = workers[0]["id"]
    return wid, server.worker_key(wid)


def test_a_worker_reporting_a_job_it_does_not_hold_gets_a_clear_4xx(
    server: LiveServer, http: httpx.Client, echo: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    wid, key = _worker(server, echo)
    raw = {"Authorization": key}  # workers send the bare key
    # A job that does not exist.
    resp = http.post(f"/v2/{echo}/job-done/{wid}/job-ghost", content=b'{"output": 1}', headers=raw)
    _clear_error(resp, 404, "job-ghost")
    resp = http.post(f"/v2/{echo}/job-stream/{wid}/job-ghost", content=b'{"output": 1}', headers=raw)
    _clear_error(resp, 404, "job-ghost")
    # A job that exists but is queued on another endpoint, never handed to this worker.
    other = server.deploy(
        "parked", handler_dir(tmp_path_factory.mktemp("parked"), "echo"), workersMax=0, env={}
    )["id"]
    parked = http.post(f"/v2/{other}/run", json={"input": {}}).json()["id"]
    resp = http.post(f"/v2/{echo}/job-done/{wid}/{parked}", content=b'{"output": "stolen"}', headers=raw)
    assert 400 <= resp.status_code < 500
    _clear_error(resp, resp.status_code)
    assert http.get(f"/v2/{other}/status/{parked}").json()["status"] == "IN_QUEUE"
    # A result body that is not an object, and a bad batch size.
    done = http.post(f"/v2/{echo}/job-done/{wid}/{parked}", content=b"[1, 2]", headers=raw)
    _clear_error(done, 400)
    take = http.get(f"/v2/{echo}/job-take-batch/{wid}", params={"batch_size": "many"}, headers=raw)
    _clear_error(take, 400, "batch_size")


def test_a_worker_route_with_a_user_key_or_no_key_is_401(
    http: httpx.Client, server: LiveServer, echo: str
) -> None:
    wid, _ = _worker(server, echo)
    _clear_error(http.get(f"/v2/{echo}/ping/{wid}"), 401)  # the admin's user key is no worker key
    _clear_error(httpx.get(f"{server.url}/v2/{echo}/job-take/{wid}"), 401)


def test_invalid_endpoint_specs_are_400_naming_each_field(http: httpx.Client, tmp_path: Path) -> None:
    # Wrong types are reported together; so are out-of-range values.
    typed = {"name": 5, "workersMin": "two", "gpuTypeIds": "A100", "bogusField": 1}
    err = _clear_error(http.post("/v1/endpoints", json=typed), 400)
    assert {p["field"] for p in err["problems"]} >= {"name", "workersMin", "gpuTypeIds", "bogusField"}
    ranged = {"name": "ranged", "workersMax": -1, "idleTimeout": -5, "executionTimeoutMs": 1}
    err = _clear_error(http.post("/v1/endpoints", json=ranged), 400)
    assert {p["field"] for p in err["problems"]} >= {"workersMax", "idleTimeout", "executionTimeoutMs"}
    missing = http.post("/v1/endpoints", json={"name": "nosrc", "sourceDir": str(tmp_path / "absent")})
    _clear_error(missing, 400, "absent")
