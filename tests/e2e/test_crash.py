"""Crashes: a worker SIGKILLed mid-job, and the control plane SIGKILLed under load. Every acknowledged
job ends in a final state that says what happened, none stays IN_PROGRESS, none is lost, and no job
whose success the server accepted runs again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live import LiveServer, handler_dir, live_server, wait_for

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


def _run(server: LiveServer, endpoint_id: str, body: dict[str, Any]) -> str:
    resp = server.api("POST", f"/v2/{endpoint_id}/run", json=body)
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]  # type: ignore[no-any-return]


def _status(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v2/{endpoint_id}/status/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _pid(server: LiveServer, worker_id: str) -> int:
    return server.worker_pid(worker_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_on_a_live_process(
    server: LiveServer, endpoint_id: str, job_id: str, not_pid: int | None = None
) -> tuple[str, int] | None:
    """(worker id, pid) while the job is IN_PROGRESS on a live worker process other than `not_pid`."""
    rec = _status(server, endpoint_id, job_id)
    assert rec["status"] not in FINAL, f"job finished before the worker could be killed: {rec}"
    if rec["status"] != "IN_PROGRESS" or not rec.get("workerId"):
        return None
    try:
        pid = _pid(server, rec["workerId"])
    except (OSError, ValueError, KeyError):
        return None
    if pid == not_pid or not _alive(pid):
        return None
    return rec["workerId"], pid


@pytest.fixture(scope="module")
def slow_endpoint(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    source = handler_dir(tmp_path_factory.mktemp("crash-handlers"), "slow")
    ep = server.deploy(
        "slow-crash", source, env={"EMBER_TEST_SDK": "ember"}, workersMin=1, workersMax=2, idleTimeout=120
    )
    return ep["id"]  # type: ignore[no-any-return]


def test_worker_killed_mid_job_gets_its_job_requeued_and_completed(
    server: LiveServer, slow_endpoint: str
) -> None:
    job_id = _run(server, slow_endpoint, {"input": {"seconds": 3}})
    worker_id, pid = wait_for(
        lambda: _running_on_a_live_process(server, slow_endpoint, job_id), 60, what="the job to start"
    )
    os.kill(pid, signal.SIGKILL)

    final = wait_for(
        lambda: (r := _status(server, slow_endpoint, job_id))["status"] in FINAL and r,
        90,
        interval_s=0.2,
        what="the job of the killed worker to finish elsewhere",
    )
    assert final["status"] == "COMPLETED", final
    assert final["output"] == {"slept_s": 3.0}
    history = server.api("GET", f"/v1/workers/{worker_id}/history").json()
    assert any(h["state"] == "UNHEALTHY" for h in history), history


@pytest.mark.slow
def test_worker_killed_on_every_attempt_fails_the_job_with_a_clear_error(
    server: LiveServer, slow_endpoint: str
) -> None:
    job_id = _run(server, slow_endpoint, {"input": {"seconds": 60}})
    killed: list[int] = []
    for attempt in range(2):  # the first run and its one re-queue (lost_worker_requeues = 1)
        _, pid = wait_for(
            lambda: _running_on_a_live_process(server, slow_endpoint, job_id, killed[-1] if killed else None),
            90,
            interval_s=0.2,
            what=f"attempt {attempt + 1} of the job to be running",
        )
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    final = wait_for(
        lambda: (r := _status(server, slow_endpoint, job_id))["status"] in FINAL and r,
        60,
        interval_s=0.2,
        what="the twice-orphaned job to fail",
    )
    assert final["status"] == "FAILED", final
    assert "worker" in final["error"].lower(), final["error"]
    # The endpoint recovers: a new job completes.
    after = _run(server, slow_endpoint, {"input": {"seconds": 0}})
    done = wait_for(
        lambda: (r := _status(server, slow_endpoint, after))["status"] in FINAL and r, 90, what="a later job"
    )
    assert done["status"] == "COMPLETED"


# ---- the control plane -------------------------------------------------------------------------------
JOBS = 1000


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path / "home") as s:
        yield s


def _lines(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def _submit_all(server: LiveServer, endpoint_id: str, count: int) -> list[str]:
    def some(indexes: range) -> list[str]:
        ids = []
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for i in indexes:
                resp = c.post(
                    f"/v2/{endpoint_id}/run",
                    json={"input": {"i": i, "sleep_s": 0.1}},
                    headers={"Authorization": f"Bearer {server.admin_key}"},
                )
                assert resp.status_code == 200, resp.text
                ids.append(resp.json()["id"])
        return ids

    threads = 4
    with ThreadPoolExecutor(threads) as pool:
        parts = pool.map(some, [range(t, count, threads) for t in range(threads)])
        return [job_id for part in parts for job_id in part]


def _unfinished(server: LiveServer, endpoint_id: str) -> dict[str, int]:
    counts = {}
    for state in ("IN_QUEUE", "IN_PROGRESS"):
        resp = server.api(
            "GET", "/v1/jobs", params={"endpointId": endpoint_id, "state": state, "limit": 1000}
        )
        assert resp.status_code == 200, resp.text
        counts[state] = len(resp.json())
    return counts


def _ended(record: Path) -> int:
    return sum(1 for kind, _, _ in _lines(record) if kind == "E")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_control_plane_killed_under_load_loses_nothing_and_reruns_no_accepted_job(
    fresh_server: LiveServer, tmp_path: Path
) -> None:
    server = fresh_server
    record = tmp_path / "runs.txt"
    phases: dict[str, float] = {}
    started = time.monotonic()
    # Queue every job before any worker exists, so that the kill finds jobs both running and queued.
    ep = server.deploy(
        "records",
        handler_dir(tmp_path, "records_runs"),
        env={"EMBER_TEST_SDK": "ember", "EMBER_TEST_RECORD": str(record)},
        workersMin=0,
        workersMax=0,
        idleTimeout=120,
    )["id"]
    acknowledged = _submit_all(server, ep, JOBS)
    assert len(set(acknowledged)) == JOBS
    phases["submitted"] = time.monotonic() - started
    resp = server.api("PATCH", f"/v1/endpoints/{ep}", json={"workersMin": 3, "workersMax": 3})
    assert resp.status_code == 200, resp.text

    wait_for(lambda: _ended(record) >= 50, 60, what="some jobs to complete")
    server.kill()
    done_at_kill = _ended(record)
    phases["killed"] = time.monotonic() - started
    assert done_at_kill < JOBS, "every job finished before the kill; the test proves nothing"
    server.start()
    phases["restarted"] = time.monotonic() - started

    last: dict[str, int] = {}

    def all_final() -> bool:
        last.update(_unfinished(server, ep))
        return not any(last.values())

    budget_s = max(10.0, 170.0 - (time.monotonic() - started))
    try:
        wait_for(all_final, budget_s, interval_s=1.0, what="every job to reach a final state")
    except AssertionError:
        raise AssertionError(
            f"jobs still unfinished after the restart: {last}; {_ended(record)} runs ended, "
            f"{done_at_kill} before the kill; phases (s since start): {phases}"
        ) from None
    phases["all final"] = time.monotonic() - started
    print(f"phases (s since start): {phases}; runs ended before the kill: {done_at_kill}")

    resp = server.api("GET", "/v1/jobs", params={"endpointId": ep, "limit": 1000})
    rows = {r["id"]: r for r in resp.json()}
    assert set(rows) == set(acknowledged), "acknowledged jobs are missing after the crash"
    states = {r["status"] for r in rows.values()}
    assert states <= {"COMPLETED", "FAILED"}, states
    for r in rows.values():
        if r["status"] == "FAILED":
            assert r.get("error"), r  # a lost-worker failure says what happened
    runs = sum(1 for kind, _, _ in _lines(record) if kind == "S")
    failed = sum(1 for r in rows.values() if r["status"] == "FAILED")
    print(f"{runs} runs for {JOBS} jobs; {failed} failed")

    lines = _lines(record)
    position = {line: n for n, line in enumerate(lines)}
    last_start: dict[str, int] = {}
    for n, (kind, job_id, _) in enumerate(lines):
        if kind == "S":
            last_start[job_id] = n
    with server.client() as c:
        for job_id, row in rows.items():
            if row["status"] != "COMPLETED":
                continue
            accepted_run = c.get(f"/v2/{ep}/status/{job_id}").json()["output"]["run"]
            end = position[("E", job_id, accepted_run)]
            assert last_start[job_id] < end, f"job {job_id} ran again after its success was accepted"
