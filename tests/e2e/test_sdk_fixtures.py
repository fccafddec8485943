"""Every handler fixture, under Ember's SDK and under the real `runpod` SDK, against a real Ember server.

Each test deploys `tests/handlers/<fixture>.py` as an endpoint (local-process workers, EMBER_TEST_SDK
picks the SDK), drives it through the `/v2` API and deletes the endpoint afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ember.client import Endpoint, JobCancelled, JobFailed
from tests.support.live import LiveServer, handler_dir, wait_for

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
JOB_WAIT_S = 60.0
SDKS = ["ember", "runpod"]


@contextmanager
def deployed(server: LiveServer, tmp_path: Path, fixture: str, sdk: str, **fields: Any) -> Iterator[str]:
    fields.setdefault("workersMax", 1)
    env = {"EMBER_TEST_SDK": sdk, **fields.pop("env", {})}
    endpoint = server.deploy(
        f"{fixture.replace('_', '-')}-{sdk}", handler_dir(tmp_path, fixture), env=env, **fields
    )
    try:
        yield endpoint["id"]
    finally:
        server.api("DELETE", f"/v1/endpoints/{endpoint['id']}")


def run(server: LiveServer, endpoint_id: str, job_input: Any) -> str:
    resp = server.api("POST", f"/v2/{endpoint_id}/run", json={"input": job_input})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def status(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v2/{endpoint_id}/status/{job_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def final_record(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        record = status(server, endpoint_id, job_id)
        return record if record["status"] in FINAL else None

    return wait_for(done, JOB_WAIT_S, what=f"job {job_id} to finish\n{server.log()[-3000:]}")


def run_to_end(server: LiveServer, endpoint_id: str, job_input: Any) -> dict[str, Any]:
    return final_record(server, endpoint_id, run(server, endpoint_id, job_input))


def drain_stream(server: LiveServer, endpoint_id: str, job_id: str) -> list[Any]:
    """Read /stream until the job is final and the stream is empty; each chunk must arrive once."""
    chunks: list[Any] = []

    def step() -> bool:
        resp = server.api("GET", f"/v2/{endpoint_id}/stream/{job_id}")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        chunks.extend(item["output"] for item in body["stream"])
        return body["status"] in FINAL and not body["stream"]

    wait_for(step, JOB_WAIT_S, what=f"stream of {job_id} to end")
    return chunks


@pytest.fixture(params=SDKS)
def sdk(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_echo_gets_the_whole_job(server, tmp_path, sdk):
    with deployed(server, tmp_path, "echo", sdk) as ep:
        record = run_to_end(server, ep, {"mode": "echo", "n": [1, 2]})
    assert record["status"] == "COMPLETED", record
    assert record["output"]["echo"] == {"mode": "echo", "n": [1, 2]}
    assert {"id", "input"} <= set(record["output"]["keys"])
    assert record["workerId"] and isinstance(record["executionTime"], int)


def test_raising_handler_fails_with_a_json_error_string(server, tmp_path, sdk):
    with deployed(server, tmp_path, "raises", sdk) as ep:
        record = run_to_end(server, ep, {})
    assert record["status"] == "FAILED"
    info = json.loads(record["error"])
    assert info["error_type"] == "<class 'ValueError'>" and info["error_message"] == "boom"
    assert "raises" in info["error_traceback"] or "handler" in info["error_traceback"]
    assert info["worker_id"] == record["workerId"]


def test_returned_error_fails_and_keeps_the_output(server, tmp_path, sdk):
    with deployed(server, tmp_path, "returns_error", sdk) as ep:
        record = run_to_end(server, ep, {})
    assert (record["status"], record["error"], record.get("output")) == (
        "FAILED",
        "bad input",
        {"partial": 1},
    )


@pytest.mark.parametrize(
    ("fixture", "has_output", "output"),
    [
        ("returns_none", True, None),
        ("returns_empty_dict", False, None),
        ("returns_empty_list", True, []),
        ("returns_str", True, "hello"),
        ("noop", False, None),
        ("non_ascii", True, {"t": "héllo ✓ 日本", "echo": "ü"}),
    ],
)
def test_plain_results(server, tmp_path, sdk, fixture, has_output, output):
    with deployed(server, tmp_path, fixture, sdk) as ep:
        record = run_to_end(server, ep, "ü")
    assert record["status"] == "COMPLETED", record
    assert record.get("output") == output
    if has_output and output is not None:
        assert "output" in record


def test_progress_is_visible_while_in_progress(server, tmp_path, sdk):
    with deployed(server, tmp_path, "progress", sdk) as ep:
        job_id = run(server, ep, {"pause_s": 4})

        def shows_progress() -> bool:
            record = status(server, ep, job_id)
            return record["status"] == "IN_PROGRESS" and record.get("output") == {"step": 1}

        wait_for(shows_progress, JOB_WAIT_S, what="the progress update on /status")
        record = final_record(server, ep, job_id)
    assert record["status"] == "COMPLETED" and record["output"] == {"done": True}


def test_generator_streams_each_chunk_once_and_aggregates(server, tmp_path, sdk):
    with deployed(server, tmp_path, "generator", sdk) as ep:
        job_id = run(server, ep, {"n": 3})
        chunks = drain_stream(server, ep, job_id)
        record = final_record(server, ep, job_id)
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert record["status"] == "COMPLETED" and record["output"] == chunks


def test_async_generator_streams_without_aggregate(server, tmp_path, sdk):
    with deployed(server, tmp_path, "async_generator", sdk) as ep:
        job_id = run(server, ep, {"n": 4})
        chunks = drain_stream(server, ep, job_id)
        record = final_record(server, ep, job_id)
    assert chunks == [0, 1, 2, 3]
    assert record["status"] == "COMPLETED" and record["output"] == []


def test_generator_raising_keeps_its_chunks_and_fails(server, tmp_path, sdk):
    with deployed(server, tmp_path, "generator_raises", sdk) as ep:
        job_id = run(server, ep, {})
        chunks = drain_stream(server, ep, job_id)
        record = final_record(server, ep, job_id)
    assert chunks == [{"i": 0}, {"i": 1}]
    assert record["status"] == "FAILED" and record["error"].startswith("handler: gen boom")


def test_concurrency_modifier_runs_four_jobs_at_once_on_one_worker(server, tmp_path, sdk):
    with deployed(server, tmp_path, "concurrency4", sdk) as ep:
        warm = run_to_end(server, ep, {"sleep_s": 0})
        assert warm["status"] == "COMPLETED", warm
        job_ids = [run(server, ep, {"sleep_s": 3}) for _ in range(4)]

        def all_running() -> bool:
            return all(status(server, ep, j)["status"] == "IN_PROGRESS" for j in job_ids)

        wait_for(all_running, JOB_WAIT_S, interval_s=0.02, what="four jobs IN_PROGRESS together")
        records = [final_record(server, ep, j) for j in job_ids]
    assert [r["status"] for r in records] == ["COMPLETED"] * 4
    assert len({r["workerId"] for r in records}) == 1


def test_cancelling_an_async_job_frees_its_slot(server, tmp_path, sdk):
    with deployed(server, tmp_path, "concurrency4", sdk, workersMax=1) as ep:
        long_ids = [run(server, ep, {"sleep_s": 600}) for _ in range(4)]
        wait_for(
            lambda: all(status(server, ep, j)["status"] == "IN_PROGRESS" for j in long_ids),
            JOB_WAIT_S,
            what="four long jobs running",
        )
        resp = server.api("POST", f"/v2/{ep}/cancel/{long_ids[0]}")
        assert resp.status_code == 200 and resp.json()["status"] == "CANCELLED"
        quick = run_to_end(server, ep, {"sleep_s": 0})
        assert quick["status"] == "COMPLETED", quick
        assert status(server, ep, long_ids[0])["status"] == "CANCELLED"
        for job_id in long_ids[1:]:
            server.api("POST", f"/v2/{ep}/cancel/{job_id}")


def test_refresh_worker_ends_the_worker_after_each_job(server, tmp_path, sdk):
    with deployed(server, tmp_path, "refresh_worker", sdk) as ep:
        first = run_to_end(server, ep, {})
        second = run_to_end(server, ep, {})
    assert first["status"] == second["status"] == "COMPLETED"
    assert first["output"] == {"ok": True}
    assert first["workerId"] != second["workerId"]


def test_a_returned_refresh_worker_gets_each_job_a_new_worker_with_one_worker_allowed(server, tmp_path, sdk):
    """The worker only says stopPod and keeps polling (both SDKs): Ember stops and replaces it at once,
    so ten queued jobs all complete on workersMax 1, each on a fresh worker (a fresh process), in about
    the time of ten cold starts."""
    with deployed(server, tmp_path, "returns_refresh_worker", sdk) as ep:
        started = time.monotonic()
        first = run_to_end(server, ep, {})
        cold_start_s = time.monotonic() - started
        job_ids = [run(server, ep, {"n": n}) for n in range(9)]
        records = [first] + [final_record(server, ep, j) for j in job_ids]
        total_s = time.monotonic() - started
        stopped = server.workers(ep, include_stopped=True)
    assert [r["status"] for r in records] == ["COMPLETED"] * 10, records
    assert len({r["workerId"] for r in records}) == 10
    assert len({r["output"]["pid"] for r in records}) == 10
    assert all("refresh_worker" not in r["output"] for r in records)
    assert max(w["state"] == "STOPPED" for w in stopped)
    # A wedge (the bug this guards) never ends; a replacement that waited for a timeout or the worker's
    # own exit would take ten times that. The bound is generous against a slow, shared machine.
    assert total_s < 10 * (cold_start_s + 3.0), (total_s, cold_start_s)


def test_slow_sync_handler_completes(server, tmp_path, sdk):
    with deployed(server, tmp_path, "slow", sdk) as ep:
        record = run_to_end(server, ep, {"seconds": 2})
    assert record["status"] == "COMPLETED" and record["output"] == {"slept_s": 2.0}


def test_a_handler_that_prints_a_lot_is_not_blocked(server, tmp_path, sdk):
    with deployed(server, tmp_path, "prints_a_lot", sdk) as ep:
        record = run_to_end(server, ep, {"lines": 20000})
    assert record["status"] == "COMPLETED" and record["output"] == {"lines": 20000}


def test_a_handler_that_exits_on_import_makes_an_unhealthy_worker_and_no_result(server, tmp_path, sdk):
    with deployed(server, tmp_path, "exits_on_import", sdk) as ep:
        job_id = run(server, ep, {})

        def unhealthy() -> bool:
            states = [w["state"] for w in server.workers(ep, include_stopped=True)]
            return "UNHEALTHY" in states

        wait_for(unhealthy, JOB_WAIT_S, what="an UNHEALTHY worker")
        assert status(server, ep, job_id)["status"] in ("IN_QUEUE", "FAILED")
        server.api("POST", f"/v2/{ep}/cancel/{job_id}")


# ---- Ember's client against the real server ------------------------------------------------------


def client(server: LiveServer, endpoint_id: str) -> Endpoint:
    return Endpoint(endpoint_id, api_key=server.admin_key, base_url=server.url)


def test_client_run_sync_status_stream_and_health(server, tmp_path):
    with deployed(server, tmp_path, "generator", "ember") as ep, client(server, ep) as c:
        assert c.run_sync({"n": 2}, timeout_s=JOB_WAIT_S) == [{"i": 0}, {"i": 1}]
        job = c.run({"n": 3})
        assert list(job.stream(timeout_s=JOB_WAIT_S)) == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert job.status() == "COMPLETED" and job.output(timeout_s=5) == [{"i": 0}, {"i": 1}, {"i": 2}]
        health = c.health()
        assert health["jobs"]["completed"] >= 2


def test_client_raises_job_failed_and_job_cancelled(server, tmp_path):
    with deployed(server, tmp_path, "raises", "ember") as ep, client(server, ep) as c:
        with pytest.raises(JobFailed) as info:
            c.run_sync({}, timeout_s=JOB_WAIT_S)
        assert json.loads(info.value.error)["error_message"] == "boom"
    with deployed(server, tmp_path, "slow", "ember") as ep, client(server, ep) as c:
        job = c.run({"seconds": 600})
        wait_for(lambda: job.status() == "IN_PROGRESS", JOB_WAIT_S, what="the slow job to start")
        assert job.cancel()["status"] == "CANCELLED"
        with pytest.raises(JobCancelled):
            job.output(timeout_s=5)
        queued = [c.run({"seconds": 0}) for _ in range(2)]
        purged = c.purge_queue()
        assert purged["removed"] + sum(1 for j in queued if j.status() != "IN_QUEUE") >= 2
