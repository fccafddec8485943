"""Bad input gets a clear 4xx with a JSON body `{"error": …}` (malformed JSON, missing input, wrong
policy types, unknown endpoint or job, oversized bodies, a worker reporting a job it does not hold;
JSON that is not JSON or not storable: lone surrogates, NaN, 5,000-deep nesting; bad names, money
and exec timeouts; a body that never fully arrives), and the server keeps serving after each, with
a job finished before them intact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.core.json_body import MAX_DEPTH
from tests.support.live import LiveServer, handler_dir, live_server, wait_for

MB = 1024 * 1024
BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's server waits BODY_TIMEOUT_S (not 30 s) for a request body to arrive."""
    home = tmp_path_factory.mktemp("ember-home")
    with live_server(home, env={"EMBER_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)}) as s:
        yield s


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


@pytest.fixture(scope="module")
def earlier(server: LiveServer, http: httpx.Client, echo: str) -> tuple[str, dict[str, Any]]:
    """A job finished before any bad input arrives: (its id, its record)."""
    job_id = http.post(f"/v2/{echo}/run", json={"input": {"before": "ü ✓"}}).json()["id"]
    record = wait_for(
        lambda: (r := http.get(f"/v2/{echo}/status/{job_id}").json())["status"] == "COMPLETED" and r,
        90,
        what="the earlier job",
    )
    return job_id, record


@pytest.fixture(autouse=True)
def _still_serving(
    server: LiveServer, http: httpx.Client, echo: str, earlier: tuple[str, dict[str, Any]]
) -> Iterator[None]:
    """After every test the server still answers, still runs a job end to end, and still has the job
    it finished before, unchanged."""
    yield
    assert http.get("/healthz").status_code == 200
    job_id, record = earlier
    assert http.get(f"/v2/{echo}/status/{job_id}").json() == record
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
    body = {"policy": {"ttl": "x", "lowPriority": 1}, "webhook": "ftp://127.0.0.1/nope", "s3Config": []}
    err = _clear_error(http.post(f"/v2/{echo}/run", json=body), 400)
    fields = {p["field"] for p in err["problems"]}
    assert fields >= {"input", "policy.ttl", "policy.lowPriority", "webhook", "s3Config"}


@pytest.mark.parametrize(
    "webhook",
    [
        "http://",
        "https:///hook",
        "ftp://127.0.0.1/hook",
        "127.0.0.1:8000/hook",
        "http://127.0.0.1 /hook",
        "http://127.0.0.1:99999/hook",
        ["http://127.0.0.1/hook"],
    ],
)
def test_a_malformed_webhook_is_400_naming_the_field(http: httpx.Client, echo: str, webhook: Any) -> None:
    """Only its shape is checked here; where it may go is checked when it is delivered."""
    for route in ("run", "runsync"):
        resp = http.post(f"/v2/{echo}/{route}", json={"input": {}, "webhook": webhook})
        err = _clear_error(resp, 400, "webhook")
        assert [p["field"] for p in err["problems"]] == ["webhook"], err


def test_a_git_repository_on_the_server_is_400_for_an_account(http: httpx.Client, tmp_path: Path) -> None:
    """`file://` URLs and paths name the server's own disk: the admin's alone."""
    account = http.post("/v1/accounts", json={"name": "tenant-git"})
    assert account.status_code == 201, account.text
    user = {"Authorization": f"Bearer {account.json()['apiKey']}"}
    for url in ((tmp_path / "repo.git").as_uri(), str(tmp_path / "repo.git")):
        resp = http.post("/v1/endpoints", json={"name": "from-disk", "git": {"url": url}}, headers=user)
        err = _clear_error(resp, 400, "admin")
        assert [p["field"] for p in err["problems"]] == ["git.url"], err
    assert http.get("/v1/endpoints", headers=user).json() == []


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


# ---- JSON that is not JSON, or not storable ---------------------------------------------------------
LONE = b'"a\\ud800b"'  # a lone surrogate escape: json.loads takes it, no UTF-8 encoder does


def _fields(err: dict[str, Any]) -> set[str]:
    return {p["field"] for p in err.get("problems", [])}


def test_a_lone_surrogate_in_a_job_is_400_naming_the_field(http: httpx.Client, echo: str) -> None:
    for path in (f"/v2/{echo}/run", f"/v2/{echo}/runsync"):
        err = _clear_error(http.post(path, content=b'{"input": {"text": ' + LONE + b"}}"), 400, "surrogate")
        assert _fields(err) == {"input.text"}
        err = _clear_error(http.post(path, content=b'{"input": {' + LONE + b": 1}}"), 400, "surrogate")
        assert _fields(err) == {"input.a\\ud800b"}
    # A surrogate pair (how ensure_ascii writes an emoji) is one valid character.
    resp = http.post(f"/v2/{echo}/runsync", content=b'{"input": "\\ud83d\\ude00"}')
    assert resp.json()["output"]["echo"] == "\U0001f600", resp.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/templates", {"imageName": None}),
        ("/v1/endpoints", {"workersMax": 0}),
        ("/v1/accounts", {}),
        ("/v1/networkvolumes", {"size": 1}),
        ("/v1/containerregistryauth", {"username": "u", "password": "p"}),
    ],
)
def test_a_lone_surrogate_in_a_name_is_400_and_creates_nothing(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    raw = json.dumps(body)[:-1].encode() + (b", " if body else b"") + b'"name": ' + LONE + b"}"
    err = _clear_error(http.post(path, content=raw), 400, "surrogate")
    assert _fields(err) == {"name"}


def test_a_worker_result_or_chunk_with_a_lone_surrogate_is_400(
    server: LiveServer, http: httpx.Client, echo: str
) -> None:
    wid, key = _worker(server, echo)
    raw = {"Authorization": key}
    cases = [
        ("job-done", b'{"output": {"x": [' + LONE + b"]}}", "output.x[0]"),
        ("job-done", b'{"error": ' + LONE + b"}", "error"),
        ("job-stream", b'{"output": ' + LONE + b"}", "output"),
    ]
    for route, body, field in cases:
        resp = http.post(f"/v2/{echo}/{route}/{wid}/job-ghost", content=body, headers=raw)
        assert _fields(_clear_error(resp, 400, "surrogate")) == {field}


def test_nan_and_infinity_are_400_naming_the_field(http: httpx.Client, echo: str) -> None:
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        for path in (f"/v2/{echo}/run", f"/v2/{echo}/runsync"):
            err = _clear_error(http.post(path, content=b'{"input": {"v": [' + token + b"]}}"), 400, "finite")
            assert _fields(err) == {"input.v[0]"}
        err = _clear_error(
            http.post("/v1/endpoints", content=b'{"name": "nan", "scalerValue": ' + token + b"}"), 400
        )
        assert _fields(err) == {"scalerValue"}
    assert "nan" not in {e["name"] for e in http.get("/v1/endpoints").json()}


def _deep(depth: int) -> bytes:
    """`{"input": …}` whose value nests lists `depth` levels deep (the whole body one deeper)."""
    return b'{"input": ' + b"[" * depth + b"]" * depth + b"}"


def test_json_nested_5000_deep_is_400(server: LiveServer, http: httpx.Client, echo: str) -> None:
    for path in (f"/v2/{echo}/run", f"/v2/{echo}/runsync", "/v1/endpoints", "/v1/templates"):
        _clear_error(http.post(path, content=_deep(5000)), 400, "deeper")
    _clear_error(http.post(f"/v2/{echo}/run", content=_deep(MAX_DEPTH)), 400, "deeper")
    wid, key = _worker(server, echo)
    done = http.post(
        f"/v2/{echo}/job-done/{wid}/job-ghost",
        content=b'{"output": ' + _deep(5000) + b"}",
        headers={"Authorization": key},
    )
    _clear_error(done, 400, "deeper")


@pytest.mark.parametrize("sdk", ["ember", "runpod"])
def test_deep_input_within_the_limit_runs_and_comes_back_whole(
    server: LiveServer, http: httpx.Client, tmp_path_factory: pytest.TempPathFactory, sdk: str
) -> None:
    """The deepest input whose echo (`{"output": {"echo": …}}`) is still within the limit goes through
    the store, the worker SDK and back unchanged."""
    source = handler_dir(tmp_path_factory.mktemp(f"deep-{sdk}"), "echo")
    ep = server.deploy(f"deep-{sdk}", source, env={"EMBER_TEST_SDK": sdk}, workersMax=1)["id"]
    try:
        value: Any = "bottom"
        for _ in range(MAX_DEPTH - 3):
            value = [value]
        resp = http.post(f"/v2/{ep}/runsync", json={"input": value}, params={"wait": 90_000})
        assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text[:2000]
        assert resp.json()["output"]["echo"] == value
    finally:
        http.delete(f"/v1/endpoints/{ep}")


def test_a_template_id_that_is_not_a_string_is_400(http: httpx.Client) -> None:
    for bad in (["tpl-1"], {"id": "tpl-1"}, 7):
        err = _clear_error(http.post("/v1/endpoints", json={"name": "by-template", "templateId": bad}), 400)
        assert _fields(err) == {"templateId"}


# ---- names, money, exec ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["x" * 100_000, "x" * 129, "nul\x00name", "new\nline", "", "   "],
    ids=["100k", "129", "nul", "newline", "empty", "blank"],
)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/templates", {"imageName": "busybox"}),
        ("/v1/endpoints", {"workersMax": 0}),
        ("/v1/accounts", {}),
        ("/v1/networkvolumes", {"size": 1}),
        ("/v1/containerregistryauth", {"username": "u", "password": "p"}),
    ],
)
def test_names_too_long_empty_or_with_control_characters_are_400(
    http: httpx.Client, path: str, body: dict[str, Any], name: str
) -> None:
    resp = http.post(path, json={**body, "name": name})
    if resp.status_code == 413:  # a route with a small body limit refuses 100,000 characters sooner
        assert len(name) == 100_000
        _clear_error(resp, 413, "limit")
    else:
        assert _fields(_clear_error(resp, 400)) == {"name"}
    assert len(resp.content) < 4096  # the bad name is not echoed back whole
    if path != "/v1/accounts":  # (accounts are listed to the admin only through their own keys)
        listed = http.get(path).json()
        assert all(len(item["name"]) < 129 and "\x00" not in item["name"] for item in listed)


def test_a_printable_name_of_any_script_is_fine(http: httpx.Client) -> None:
    resp = http.post("/v1/templates", json={"name": "Modèle 模型 (v2)", "imageName": "busybox"})
    assert resp.status_code == 201, resp.text
    assert http.get(f"/v1/templates/{resp.json()['id']}").json()["name"] == "Modèle 模型 (v2)"


def test_money_with_non_ascii_digits_is_400_and_credits_nothing(http: httpx.Client) -> None:
    account = http.post("/v1/accounts", json={"name": "payer"}).json()
    own = {"Authorization": f"Bearer {account['apiKey']}"}
    before = http.get("/v1/accounts/me", headers=own).json()["balance"]
    for amount in ("\u0661", "\u0661\u0660\u0660", "\uff11", "1.\u0665", "100\n", 1, "NaN"):
        resp = http.post(f"/v1/accounts/{account['id']}/credits", json={"amount": amount})
        assert _fields(_clear_error(resp, 400)) == {"amount"}, amount
    assert http.get("/v1/accounts/me", headers=own).json()["balance"] == before
    resp = http.post(f"/v1/accounts/{account['id']}/credits", json={"amount": "1.50"})
    assert resp.status_code == 200 and resp.json()["balance"] == f"{float(before) + 1.5:.6f}", resp.text


@pytest.mark.parametrize(
    "raw", [b'"abc"', b"null", b"1e999", b"-1", b"0", b"3601", b"true", b"[5]"], ids=lambda r: r.decode()
)
def test_an_exec_timeout_that_is_not_a_sane_number_of_seconds_is_400(
    server: LiveServer, http: httpx.Client, echo: str, raw: bytes
) -> None:
    wid, _ = _worker(server, echo)
    body = b'{"command": ["true"], "timeoutS": ' + raw + b"}"
    err = _clear_error(http.post(f"/v1/workers/{wid}/exec", content=body), 400, "timeoutS")
    assert _fields(err) == {"timeoutS"}


def test_an_exec_with_a_sane_timeout_runs(server: LiveServer, http: httpx.Client, echo: str) -> None:
    wid, _ = _worker(server, echo)
    resp = http.post(f"/v1/workers/{wid}/exec", json={"command": ["echo", "hi"], "timeoutS": 30.5})
    assert resp.status_code == 200 and resp.json()["exitCode"] == 0, resp.text
    err = _clear_error(http.post(f"/v1/workers/{wid}/exec", json={"command": ["echo", "a\x00b"]}), 400)
    assert _fields(err) == {"command"}


# ---- a body that never fully arrives -----------------------------------------------------------------
def _raw_request(server: LiveServer, path: str, declared: int, sent: bytes) -> tuple[bytes, float]:
    """Send a POST announcing `declared` body bytes, send only `sent`, keep the connection open and
    read the answer: (the raw reply, seconds it took)."""
    import socket
    import time

    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.admin_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=BODY_TIMEOUT_S + 20) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + sent)
        reply = b""
        while not (b"\r\n\r\n" in reply and reply.rstrip().endswith(b"}")):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply, time.monotonic() - started


@pytest.mark.parametrize("route", ["run", "runsync", "v1"])
def test_a_body_shorter_than_its_content_length_gets_a_408_in_bounded_time(
    server: LiveServer, echo: str, route: str
) -> None:
    path = "/v1/templates" if route == "v1" else f"/v2/{echo}/{route}"
    reply, took_s = _raw_request(server, path, 100, b'{"input": {')
    assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b"application/json" in reply.split(b"\r\n\r\n")[0]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "request_timeout" and "did not arrive" in body["error"], body
    assert BODY_TIMEOUT_S <= took_s < BODY_TIMEOUT_S + 15
