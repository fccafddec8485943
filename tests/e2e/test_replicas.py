"""Two `ember server` processes on one PostgreSQL database: the loops (lifecycle, reaper, webhooks,
meter, builds) run in one of them, so a workersMin 1 endpoint gets one worker, not one per process;
both serve the API, and a job submitted to the process its worker does not poll reaches the worker at
once (LISTEN/NOTIFY), not when the worker's 60 s job-take hold ends; when the process that runs the loops
is SIGKILLed, the other takes them over and jobs run again. Each process has a home of its own; what both
read (source snapshots, the sealing key, the installation id) is in the one EMBER_SHARED_DIR."""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, pg_available, reset_pg
from tests.support.live import LiveServer, handler_dir, wait_for


def test_one_process_runs_the_loops_and_the_other_takes_over_when_it_dies(tmp_path: Path) -> None:
    ok, why = pg_available()
    need("postgres", ok, why)
    reset_pg()
    shared = tmp_path / "shared"
    env = {"EMBER_DATABASE_URL": PG_URL, "EMBER_TAKE_HOLD_S": "60", "EMBER_SHARED_DIR": str(shared)}
    a = LiveServer(tmp_path / "a", env=env).start()
    b = LiveServer(tmp_path / "b", env=env)
    b.admin_key = a.admin_key  # the first process made the admin; the second finds it
    b.start()
    try:
        wait_for(lambda: "standby" in b.log(), 10, what="the second process to stand by")
        # A secret sealed by b, opened by a when it starts the worker: one key, in the shared directory.
        resp = b.api("PUT", "/v1/accounts/me/secrets", json={"TOKEN": "s3cret"})
        assert resp.status_code == 200, resp.text
        secret_env = {"FROM_SECRET": "{{ RUNPOD_SECRET_TOKEN }}"}
        ep = b.deploy("replicated", handler_dir(tmp_path, "echo"), workersMin=1, workersMax=2, env=secret_env)
        wait_for(lambda: any(w["state"] == "IDLE" for w in a.workers(ep["id"])), 60, what="a worker")
        first = a.workers(ep["id"])[0]["id"]
        assert a.worker_env(first)["FROM_SECRET"] == "s3cret"
        # The worker polls the process that started it (a); jobs sent to b reach it at once, and the
        # result reaches the runsync waiting on b.
        for n in range(3):
            resp = b.api("POST", f"/v2/{ep['id']}/runsync?wait=20000", json={"input": {"n": n}})
            assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text
            assert resp.json()["output"]["echo"] == {"n": n}
        assert b.run_job(ep["id"], {"x": 1})["echo"] == {"x": 1}  # /run on b, then status polled on b
        time.sleep(2)  # several ticks of both processes: still one worker
        assert len(b.workers(ep["id"], include_stopped=True)) == 1
        a.kill()
        wait_for(lambda: "lease_taken" in b.log(), 15, what="the survivor to take the loops over")
        # The dead process's worker reported to it; the survivor replaces it and jobs run again.
        assert b.run_job(ep["id"], {"x": 2}, timeout_s=120)["echo"] == {"x": 2}
        # The deploy went through b, the workers were started by a and then b: one snapshot, shared.
        assert len(list((shared / "sources").iterdir())) == 1
        for own in (tmp_path / "a", tmp_path / "b"):
            assert not (own / "sources").exists() and not (own / "secret.key").exists()
    finally:
        a.stop()
        b.stop()
        a.kill_workers()
        b.kill_workers()


TRIALS = 20


def test_three_processes_never_start_a_second_worker_for_a_workers_max_1_cold_start(tmp_path: Path) -> None:
    """20 cold starts of a workersMax 1 endpoint, each sent through all three processes at once: the
    scaler and placement run in one process only (the lease), so each endpoint ever has one worker."""
    ok, why = pg_available()
    need("postgres", ok, why)
    reset_pg()
    env = {"EMBER_DATABASE_URL": PG_URL, "EMBER_SHARED_DIR": str(tmp_path / "shared")}
    first = LiveServer(tmp_path / "s0", env=env).start()
    servers = [first]
    try:
        for i in (1, 2):
            s = LiveServer(tmp_path / f"s{i}", env=env)
            s.admin_key = first.admin_key
            servers.append(s.start())
        source = handler_dir(tmp_path, "echo")
        for trial in range(TRIALS):
            ep = servers[trial % 3].deploy(f"cold-{trial}", source, workersMin=0, workersMax=1)
            path = f"/v2/{ep['id']}/runsync?wait=60000"
            body = {"input": {"t": trial}}
            with ThreadPoolExecutor(3) as pool:  # the cold start's first jobs reach every process at once
                answers = list(pool.map(functools.partial(_runsync, path=path, body=body), servers))
            for resp in answers:
                assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text
            made = first.workers(ep["id"], include_stopped=True)
            assert len(made) == 1, (trial, made)
            assert first.api("DELETE", f"/v1/endpoints/{ep['id']}").status_code in (200, 204)
    finally:
        for s in servers:
            s.stop()
            s.kill_workers()


def _runsync(server: LiveServer, path: str, body: dict[str, object]) -> httpx.Response:
    return server.api("POST", path, json=body)
