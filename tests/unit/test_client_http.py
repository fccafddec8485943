"""The client's behaviour over HTTP, with httpx's transport-level double standing in for the network.

These check what the client does with answers (headers, retries, stream draining, error mapping);
the real server is exercised by the end-to-end suite.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from ember.client import (
    AsyncEndpoint,
    Endpoint,
    JobFailed,
    NotFound,
    ServerError,
    TransportError,
    Unauthorized,
)


class Script:
    """Answers requests from a list of (method, path-prefix, status, body) and records each request."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        method, path, status, body = self.answers.pop(0)
        assert (request.method, request.url.path[: len(path)]) == (method, path), request.url
        if isinstance(body, Exception):
            raise body
        return httpx.Response(status, json=body)


def endpoint(script: Script) -> Endpoint:
    return Endpoint("ep1", api_key="key-1", base_url="http://cp/v2", transport=httpx.MockTransport(script))


def test_run_posts_the_wrapped_input_with_a_bearer_key():
    script = Script([("POST", "/v2/ep1/run", 200, {"id": "j1", "status": "IN_QUEUE"})])
    job = endpoint(script).run({"input": {}}, policy={"ttl": 60_000})
    request = script.requests[0]
    assert job.id == "j1"
    assert request.headers["authorization"] == "Bearer key-1"
    assert json.loads(request.content) == {"input": {"input": {}}, "policy": {"ttl": 60_000}}


def test_run_is_not_retried_on_a_server_error():
    script = Script([("POST", "/v2/ep1/run", 503, {"error": "busy"})])
    with pytest.raises(ServerError):
        endpoint(script).run(1)
    assert len(script.requests) == 1


def test_get_is_retried_on_503_and_connection_errors():
    script = Script(
        [
            ("GET", "/v2/ep1/health", 503, {}),
            ("GET", "/v2/ep1/health", 0, httpx.ConnectError("refused")),
            ("GET", "/v2/ep1/health", 200, {"jobs": {"inQueue": 0}}),
        ]
    )
    assert endpoint(script).health() == {"jobs": {"inQueue": 0}}


def test_connection_errors_surface_as_transport_error_after_the_retries():
    script = Script([("GET", "/v2/ep1/status/j1", 0, httpx.ConnectError("refused"))] * 4)
    with pytest.raises(TransportError):
        endpoint(script).job("j1").status()


def test_run_sync_returns_the_output_of_a_finished_job():
    script = Script([("POST", "/v2/ep1/runsync", 200, {"id": "s1", "status": "COMPLETED", "output": [1, 2]})])
    assert endpoint(script).run_sync({"p": 1}, timeout_s=30) == [1, 2]
    assert script.requests[0].url.params["wait"] == "30000"


def test_run_sync_polls_status_when_the_wait_ran_out():
    script = Script(
        [
            ("POST", "/v2/ep1/runsync", 200, {"id": "s1", "status": "IN_PROGRESS"}),
            ("GET", "/v2/ep1/status/s1", 200, {"id": "s1", "status": "IN_PROGRESS", "output": "half"}),
            ("GET", "/v2/ep1/status/s1", 200, {"id": "s1", "status": "COMPLETED", "output": "late"}),
        ]
    )
    assert endpoint(script).run_sync(1, timeout_s=30) == "late"


def test_run_sync_raises_job_failed_with_the_error():
    script = Script([("POST", "/v2/ep1/runsync", 200, {"id": "s1", "status": "FAILED", "error": "boom"})])
    with pytest.raises(JobFailed) as info:
        endpoint(script).run_sync(1)
    assert info.value.error == "boom"


def test_final_status_is_cached():
    script = Script([("GET", "/v2/ep1/status/j1", 200, {"id": "j1", "status": "COMPLETED", "output": 1})])
    job = endpoint(script).job("j1")
    assert job.status() == "COMPLETED" and job.status() == "COMPLETED"
    assert len(script.requests) == 1


def test_stream_yields_each_chunk_once_and_stops_after_the_final_drain():
    script = Script(
        [
            (
                "GET",
                "/v2/ep1/stream/s1",
                200,
                {"status": "IN_PROGRESS", "stream": [{"output": "a"}, {"output": "b"}]},
            ),
            ("GET", "/v2/ep1/stream/s1", 200, {"status": "COMPLETED", "stream": [{"output": "c"}]}),
            ("GET", "/v2/ep1/stream/s1", 200, {"status": "COMPLETED", "stream": []}),
            ("GET", "/v2/ep1/status/s1", 200, {"id": "s1", "status": "COMPLETED", "output": []}),
        ]
    )
    assert list(endpoint(script).job("s1").stream()) == ["a", "b", "c"]


def test_stream_of_a_failed_job_raises_after_its_chunks():
    script = Script(
        [
            ("GET", "/v2/ep1/stream/s1", 200, {"status": "FAILED", "stream": [{"output": "a"}]}),
            ("GET", "/v2/ep1/stream/s1", 200, {"status": "FAILED", "stream": []}),
            ("GET", "/v2/ep1/status/s1", 200, {"id": "s1", "status": "FAILED", "error": "gen boom"}),
        ]
    )
    got = []
    with pytest.raises(JobFailed):
        for chunk in endpoint(script).job("s1").stream():
            got.append(chunk)
    assert got == ["a"]


def test_cancel_and_purge_post_without_a_body():
    script = Script(
        [
            ("POST", "/v2/ep1/cancel/j1", 200, {"id": "j1", "status": "CANCELLED"}),
            ("POST", "/v2/ep1/purge-queue", 200, {"removed": 2, "status": "completed"}),
        ]
    )
    ep = endpoint(script)
    assert ep.job("j1").cancel() == {"id": "j1", "status": "CANCELLED"}
    assert ep.purge_queue()["removed"] == 2
    assert [r.content for r in script.requests] == [b"", b""]


@pytest.mark.parametrize(("status", "cls"), [(401, Unauthorized), (404, NotFound)])
def test_status_errors_raise_the_clients_own_errors(status, cls):
    script = Script([("GET", "/v2/ep1/status/j1", status, {"error": "no"})])
    with pytest.raises(cls):
        endpoint(script).job("j1").status()


def test_async_endpoint_has_the_same_api():
    script = Script(
        [
            ("POST", "/v2/ep1/run", 200, {"id": "a1", "status": "IN_QUEUE"}),
            ("GET", "/v2/ep1/status/a1", 200, {"id": "a1", "status": "COMPLETED", "output": {"v": 1}}),
            ("GET", "/v2/ep1/stream/a1", 200, {"status": "COMPLETED", "stream": [{"output": 1}]}),
            ("GET", "/v2/ep1/stream/a1", 200, {"status": "COMPLETED", "stream": []}),
            ("GET", "/v2/ep1/status/a1", 200, {"id": "a1", "status": "COMPLETED", "output": {"v": 1}}),
            ("POST", "/v2/ep1/cancel/a1", 200, {"id": "a1", "status": "CANCELLED"}),
            ("GET", "/v2/ep1/health", 200, {"workers": {}}),
        ]
    )

    async def scenario():
        async with AsyncEndpoint(
            "ep1", api_key="k", base_url="http://cp", transport=httpx.MockTransport(script)
        ) as ep:
            job = await ep.run({"x": 1})
            output = await job.output(timeout_s=5)
            chunks = [chunk async for chunk in job.stream()]
            cancelled = await job.cancel()
            health = await ep.health()
            return output, chunks, cancelled, health

    output, chunks, cancelled, health = asyncio.run(scenario())
    assert (
        output == {"v": 1}
        and chunks == [1]
        and cancelled["status"] == "CANCELLED"
        and health == {"workers": {}}
    )
    assert script.requests[0].headers["authorization"] == "Bearer k"
