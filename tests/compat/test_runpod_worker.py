"""Worker-side compatibility: the unmodified `runpod` SDK and Ember's SDK, each running as a worker
inside a real Ember server, give the same job results, errors, progress, streams and concurrency."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.compat.conftest import SDKS, Endpoints, job_status, wait_final
from tests.support.live import LiveServer, wait_for

pytestmark = pytest.mark.parametrize("sdk", SDKS)
FIXTURES = (
    "echo",
    "returns_error",
    "raises",
    "progress",
    "generator",
    "async_generator",
    "generator_raises",
    "concurrency4",
    "slow",
)


@pytest.fixture(scope="module", autouse=True)
def _deploy_all_first(endpoints: Endpoints) -> None:
    """Deploy every endpoint of this module up front, so that their workers start side by side."""
    for fixture in FIXTURES:
        for sdk in SDKS:
            endpoints.get(fixture, sdk)


def _run(server: LiveServer, endpoint_id: str, body: dict[str, Any]) -> str:
    resp = server.api("POST", f"/v2/{endpoint_id}/run", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "IN_QUEUE"
    return resp.json()["id"]  # type: ignore[no-any-return]


def test_handler_gets_the_job_with_id_input_and_passed_through_fields(
    server: LiveServer, endpoints: Endpoints, rp: Any, sdk: str
) -> None:
    ep = endpoints.get("echo", sdk)
    out = rp.Endpoint(ep).run_sync({"prompt": "hi", "n": [1, 2]}, timeout=90)
    assert out == {"echo": {"prompt": "hi", "n": [1, 2]}, "keys": ["id", "input"]}

    s3 = {"accessId": "a", "accessSecret": "s", "bucketName": "b", "endpointUrl": "http://127.0.0.1:1"}
    job_id = _run(server, ep, {"input": {"x": 1}, "s3Config": s3})
    rec = wait_final(server, ep, job_id)
    assert rec["status"] == "COMPLETED"
    assert rec["output"] == {"echo": {"x": 1}, "keys": ["id", "input", "s3Config"]}
    assert rec["id"] == job_id
    assert isinstance(rec["delayTime"], int) and rec["delayTime"] >= 0
    assert isinstance(rec["executionTime"], int) and rec["executionTime"] >= 0
    assert rec["workerId"] in {w["id"] for w in server.workers(ep)}


def test_returned_error_fails_the_job_and_keeps_the_error_and_the_rest_of_the_output(
    server: LiveServer, endpoints: Endpoints, rp: Any, sdk: str
) -> None:
    ep = endpoints.get("returns_error", sdk)
    job = rp.Endpoint(ep).run({"a": 1})
    rec = wait_final(server, ep, job.job_id)
    assert rec["status"] == "FAILED"
    assert rec["error"] == "bad input"
    assert rec["output"] == {"partial": 1}  # the rest of the returned dict stays (spec §6.9)
    # run_sync hides the error and returns the output, as on RunPod.
    assert rp.Endpoint(ep).run_sync({"a": 2}, timeout=90) == {"partial": 1}


def test_raising_handler_fails_the_job_with_the_exception(
    server: LiveServer, endpoints: Endpoints, sdk: str
) -> None:
    ep = endpoints.get("raises", sdk)
    rec = wait_final(server, ep, _run(server, ep, {"input": {}}))
    assert rec["status"] == "FAILED"
    assert "boom" in rec["error"]
    err = json.loads(rec["error"])  # exception errors are JSON-encoded objects (spec §1.6)
    assert "ValueError" in err["error_type"]  # runpod writes str(type(exc)): "<class 'ValueError'>"
    assert err["error_message"] == "boom"
    assert "Traceback" in err["error_traceback"]


def test_progress_update_is_visible_in_status_while_the_job_runs(
    server: LiveServer, endpoints: Endpoints, rp: Any, sdk: str
) -> None:
    ep = endpoints.get("progress", sdk)
    job = rp.Endpoint(ep).run({"pause_s": 4})
    seen = wait_for(
        lambda: (
            (r := job_status(server, ep, job.job_id))["status"] == "IN_PROGRESS"
            and r.get("output") == {"step": 1}
            and r
        ),
        60,
        what="the progress update in /status",
    )
    assert seen["output"] == {"step": 1}
    assert job.output(timeout=60) == {"done": True}
    assert job.status() == "COMPLETED"


def test_generator_chunks_are_streamed_once_each_and_aggregated(
    server: LiveServer, endpoints: Endpoints, rp: Any, sdk: str
) -> None:
    ep = endpoints.get("generator", sdk)
    job = rp.Endpoint(ep).run({"n": 4})
    chunks = list(job.stream())  # the SDK's loop ends only if each chunk comes once and the job ends
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    rec = wait_final(server, ep, job.job_id)
    assert rec["status"] == "COMPLETED"
    assert rec["output"] == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]  # return_aggregate_stream
    again = server.api("GET", f"/v2/{ep}/stream/{job.job_id}").json()
    assert again["stream"] == [] and again["status"] == "COMPLETED"


def test_async_generator_without_aggregation_streams_and_leaves_an_empty_output(
    server: LiveServer, endpoints: Endpoints, rp: Any, sdk: str
) -> None:
    ep = endpoints.get("async_generator", sdk)
    job = rp.Endpoint(ep).run({"n": 3})
    assert list(job.stream()) == [0, 1, 2]
    rec = wait_final(server, ep, job.job_id)
    assert rec["status"] == "COMPLETED"
    assert rec.get("output") in ([], None)


def test_generator_error_after_chunks_fails_the_job_and_keeps_the_chunks(
    server: LiveServer, endpoints: Endpoints, sdk: str
) -> None:
    ep = endpoints.get("generator_raises", sdk)
    job_id = _run(server, ep, {"input": {}})
    rec = wait_final(server, ep, job_id)
    assert rec["status"] == "FAILED"
    assert "gen boom" in rec["error"]
    chunks = server.api("GET", f"/v2/{ep}/stream/{job_id}").json()["stream"]
    assert [c["output"] for c in chunks] == [{"i": 0}, {"i": 1}]


def test_concurrency_modifier_runs_several_jobs_at_once_on_one_worker(
    server: LiveServer, endpoints: Endpoints, sdk: str
) -> None:
    ep = endpoints.get("concurrency4", sdk)
    endpoints.wait_ready(ep)
    ids = [_run(server, ep, {"input": {"sleep_s": 4}}) for _ in range(4)]
    together = wait_for(
        lambda: (
            (recs := [job_status(server, ep, i) for i in ids])
            and all(r["status"] == "IN_PROGRESS" for r in recs)
            and recs
        ),
        30,
        what="all four jobs in progress at the same time",
    )
    assert len({r["workerId"] for r in together}) == 1
    assert [wait_final(server, ep, i)["output"] for i in ids] == [{"slept_s": 4.0}] * 4


def test_cancelling_a_running_job_stops_it_and_the_worker_keeps_serving(
    server: LiveServer, endpoints: Endpoints, sdk: str
) -> None:
    ep = endpoints.get("concurrency4", sdk)
    long_id = _run(server, ep, {"input": {"sleep_s": 60}})
    running = wait_for(
        lambda: (r := job_status(server, ep, long_id))["status"] == "IN_PROGRESS" and r,
        60,
        what="the long job to start",
    )
    resp = server.api("POST", f"/v2/{ep}/cancel/{long_id}")
    assert resp.status_code == 200 and resp.json() == {"id": long_id, "status": "CANCELLED"}
    # The async task is stopped through job-stop: the worker frees the slot and takes 4 new jobs at once.
    ids = [_run(server, ep, {"input": {"sleep_s": 3}}) for _ in range(4)]
    wait_for(
        lambda: all(job_status(server, ep, i)["status"] == "IN_PROGRESS" for i in ids),
        30,
        what="four new jobs in progress beside the cancelled one's freed slot",
    )
    for i in ids:
        rec = wait_final(server, ep, i)
        assert rec["status"] == "COMPLETED" and rec["workerId"] == running["workerId"]
    assert job_status(server, ep, long_id)["status"] == "CANCELLED"


def test_execution_timeout_times_out_the_job_and_the_worker_serves_again(
    server: LiveServer, endpoints: Endpoints, sdk: str
) -> None:
    ep = endpoints.get("slow", sdk)
    endpoints.wait_ready(ep)
    started = time.monotonic()
    stuck_id = _run(server, ep, {"input": {"seconds": 120}, "policy": {"executionTimeout": 5000}})
    rec = wait_final(server, ep, stuck_id, timeout_s=40)
    assert rec["status"] == "TIMED_OUT"
    assert time.monotonic() - started >= 5.0
    # A sync handler cannot be interrupted: Ember stops that worker, and a fresh one takes the next job.
    next_id = _run(server, ep, {"input": {"seconds": 0}})
    done = wait_final(server, ep, next_id, timeout_s=90)
    assert done["status"] == "COMPLETED" and done["output"] == {"slept_s": 0.0}
    if done["workerId"] != rec["workerId"]:
        # The replacement starts at once; the stuck worker is stopped beside it (SIGTERM, then SIGKILL
        # after the stop grace, since its handler ignores the drain).
        wait_for(
            lambda: rec["workerId"] not in {w["id"] for w in server.workers(ep)},
            30,
            what="the worker stuck in the timed-out job to be stopped",
        )
    assert job_status(server, ep, stuck_id)["status"] == "TIMED_OUT"  # a late result changes nothing
