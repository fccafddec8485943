"""The client's pure parts: URLs and headers, bodies, error mapping, polling pace."""

from __future__ import annotations

import pytest

from ember.client import _core
from ember.client import errors as e


@pytest.mark.parametrize("base", ["http://h:1", "http://h:1/", "http://h:1/v2", "http://h:1/v2/"])
def test_resolve_accepts_the_root_or_the_v2_base(base):
    prefix, _ = _core.resolve("ep1", "k", base, environ={})
    assert prefix == "http://h:1/v2/ep1"


def test_resolve_sends_a_bearer_key_and_falls_back_to_the_environment():
    _, headers = _core.resolve("ep1", "key-1", "http://h", environ={})
    assert headers["Authorization"] == "Bearer key-1"
    prefix, headers = _core.resolve(
        "ep1", None, None, environ={"EMBER_API_KEY": "k2", "EMBER_BASE_URL": "http://x"}
    )
    assert headers["Authorization"] == "Bearer k2" and prefix == "http://x/v2/ep1"
    _, headers = _core.resolve("ep1", None, "http://h", environ={})
    assert "Authorization" not in headers


@pytest.mark.parametrize("endpoint_id", ["", "a/b"])
def test_resolve_refuses_a_bad_endpoint_id(endpoint_id):
    with pytest.raises(e.ClientError):
        _core.resolve(endpoint_id, "k", "http://h", environ={})


def test_run_body_always_wraps_the_input_and_adds_options():
    assert _core.run_body({"input": {}}) == {"input": {"input": {}}}
    assert _core.run_body(1, webhook="http://w", policy={"ttl": 10_000}, s3_config={"a": 1}) == {
        "input": 1,
        "webhook": "http://w",
        "policy": {"ttl": 10_000},
        "s3Config": {"a": 1},
    }


@pytest.mark.parametrize(("timeout_s", "wait_ms"), [(0.1, 1000), (5, 5000), (90, 90_000), (10_000, 300_000)])
def test_runsync_wait_is_clamped_to_the_servers_range(timeout_s, wait_ms):
    assert _core.runsync_wait_ms(timeout_s) == wait_ms


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, e.BadRequest),
        (413, e.BadRequest),
        (401, e.Unauthorized),
        (403, e.Unauthorized),
        (404, e.NotFound),
        (429, e.RateLimited),
        (500, e.ServerError),
        (503, e.ServerError),
        (409, e.HTTPStatusError),
    ],
)
def test_decode_maps_status_codes_to_the_error_tree(status, cls):
    with pytest.raises(cls) as info:
        _core.decode(status, b'{"error": "why"}', "GET /status")
    assert type(info.value) is cls and info.value.status == status
    assert "why" in str(info.value) and info.value.body == {"error": "why"}


def test_decode_returns_json_and_tolerates_non_json_errors():
    assert _core.decode(200, b'{"id": "j"}', "x") == {"id": "j"}
    with pytest.raises(e.ServerError) as info:
        _core.decode(502, b"<html>bad gateway</html>", "x")
    assert "bad gateway" in str(info.value)


def test_record_of_needs_an_object_with_a_status():
    assert _core.record_of({"status": "IN_QUEUE"}, "x") == {"status": "IN_QUEUE"}
    with pytest.raises(e.ClientError):
        _core.record_of(["x"], "GET /status")


@pytest.mark.parametrize(
    ("status", "cls"), [("FAILED", e.JobFailed), ("CANCELLED", e.JobCancelled), ("TIMED_OUT", e.JobTimedOut)]
)
def test_final_output_raises_for_jobs_that_did_not_complete(status, cls):
    record = {"id": "j1", "status": status, "error": "bad"}
    with pytest.raises(cls) as info:
        _core.final_output(record)
    assert info.value.job_id == "j1" and info.value.error == "bad" and info.value.record is record


def test_final_output_returns_falsy_outputs_as_they_are():
    assert _core.final_output({"status": "COMPLETED", "output": 0}) == 0
    assert _core.final_output({"status": "COMPLETED"}) is None


def test_polling_starts_fast_and_settles_at_one_second():
    delays = []
    delay_s = 0.0
    for _ in range(10):
        delay_s = _core.next_poll_s(delay_s)
        delays.append(delay_s)
    assert delays[0] == _core.POLL_FIRST_S and delays == sorted(delays) and delays[-1] == _core.POLL_MAX_S


def test_retry_delay_honours_a_small_retry_after():
    assert _core.retry_delay_s(1, {"retry-after": "2"}) == 2.0
    assert _core.retry_delay_s(1, {"retry-after": "3600"}) == 5.0
    assert _core.retry_delay_s(3, {}) == pytest.approx(0.4)


def test_wait_timeout_is_also_a_timeout_error():
    assert issubclass(e.WaitTimeout, TimeoutError) and issubclass(e.WaitTimeout, e.ClientError)
