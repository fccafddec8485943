"""`ember dev` against the unmodified `runpod` client: run -> status -> output, run_sync, stream, cancel,
health, by endpoint name and id; reload on file change; a prompt, clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod

from tests.support.live import HANDLERS, free_port, wait_for

DEV_KEY = "ek_dev_local"  # what `ember dev` uses on loopback when given no --key


class DevServer:
    """`ember dev DIR` in a subprocess, with its home (store) and output kept under `root`."""

    def __init__(
        self,
        root: Path,
        fixture: str,
        *,
        name: str = "dev",
        env: dict[str, str] | None = None,
        handler_file: str = "handler.py",
    ) -> None:
        self.dir = root / "src"
        (self.dir / handler_file).parent.mkdir(parents=True)
        (self.dir / handler_file).write_text((HANDLERS / f"{fixture}.py").read_text())
        self.home = root / "home"
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "dev.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_env = env or {}

    def start(self) -> DevServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "EMBER_TAKE_HOLD_S": "5", "EMBER_TICK_S": "0.2"}
        env.update(self.extra_env)
        for var in ("EMBER_HOME", "EMBER_DATABASE_URL", "EMBER_PUBLIC_URL", "EMBER_ADMIN_KEY"):
            env.pop(var, None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ember.cli.main", "dev", str(self.dir), "--port", str(self.port),
                 "--name", self.name, "--home", str(self.home)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: self.ready_workers(), 60, what=f"a ready dev worker (log: {self.log_path})")
        return self

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers={"Authorization": f"Bearer {DEV_KEY}"},
                             timeout=30, **kw)  # fmt: skip

    def workers(self, include_stopped: bool = False) -> list[dict[str, Any]]:
        params = {"includeStopped": str(include_stopped).lower()}
        resp = self.api("GET", f"/v1/endpoints/{self.name}/workers", params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def ready_workers(self) -> list[dict[str, Any]]:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"ember dev exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return [w for w in self.workers() if w["state"] in ("IDLE", "RUNNING")]
        except (httpx.HTTPError, AssertionError):
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def rp() -> Iterator[Any]:
    saved = runpod.api_key, runpod.endpoint_url_base
    runpod.api_key = DEV_KEY
    yield runpod
    runpod.api_key, runpod.endpoint_url_base = saved


def _dev(root: Path, fixture: str, env: dict[str, str] | None = None) -> Iterator[DevServer]:
    server = DevServer(root, fixture, env=env).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def echo_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    yield from _dev(tmp_path_factory.mktemp("dev-echo"), "echo")


@pytest.fixture(scope="module")
def generator_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    yield from _dev(tmp_path_factory.mktemp("dev-gen"), "generator")


@pytest.fixture(scope="module")
def async_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    yield from _dev(tmp_path_factory.mktemp("dev-async"), "concurrency4")


@pytest.fixture(scope="module")
def runpod_progress_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    yield from _dev(tmp_path_factory.mktemp("dev-rp"), "progress", env={"EMBER_TEST_SDK": "runpod"})


def test_banner_shows_the_dev_key_and_a_curl_line(echo_dev: DevServer) -> None:
    out = echo_dev.log()
    assert f"API key: {DEV_KEY}" in out
    assert f"curl -s -X POST http://127.0.0.1:{echo_dev.port}/v2/dev/runsync" in out


def test_run_status_output_and_run_sync(echo_dev: DevServer, rp: Any) -> None:
    rp.endpoint_url_base = echo_dev.url + "/v2"
    ep = rp.Endpoint("dev")
    job = ep.run({"prompt": "hi"})
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    assert job.output(timeout=30) == {"echo": {"prompt": "hi"}, "keys": ["id", "input"]}
    assert job.status() == "COMPLETED"
    assert ep.run_sync({"prompt": "x"}, timeout=30) == {"echo": {"prompt": "x"}, "keys": ["id", "input"]}


def test_the_endpoint_id_works_as_well_as_its_name(echo_dev: DevServer, rp: Any) -> None:
    rp.endpoint_url_base = echo_dev.url + "/v2"
    endpoint_id = echo_dev.workers()[0]["endpointId"]
    assert rp.Endpoint(endpoint_id).run_sync({"n": 1}, timeout=30)["echo"] == {"n": 1}


def test_health_counts_jobs_and_workers(echo_dev: DevServer, rp: Any) -> None:
    rp.endpoint_url_base = echo_dev.url + "/v2"
    ep = rp.Endpoint("dev")
    ep.run_sync({"n": 2}, timeout=30)
    health = ep.health()
    assert health["jobs"]["completed"] >= 1
    assert health["workers"]["idle"] + health["workers"]["running"] == 1


def test_stream_yields_each_chunk_once(generator_dev: DevServer, rp: Any) -> None:
    rp.endpoint_url_base = generator_dev.url + "/v2"
    job = rp.Endpoint("dev").run({"n": 4})
    assert list(job.stream()) == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
    assert job.output(timeout=30) == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]


def test_cancel_stops_a_running_async_job(async_dev: DevServer, rp: Any) -> None:
    rp.endpoint_url_base = async_dev.url + "/v2"
    job = rp.Endpoint("dev").run({"sleep_s": 60})
    wait_for(lambda: job.status() == "IN_PROGRESS", 30, what="the job to start")
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    resp = async_dev.api("GET", f"/v2/dev/status/{job.job_id}")
    assert resp.json()["status"] == "CANCELLED"
    # The in-process worker got the job-stop and interrupted the handler.
    wait_for(lambda: f"job_stopped job_id={job.job_id}" in async_dev.log(), 30, what="job_stopped")


def test_a_changed_handler_is_served_after_reload_and_ctrl_c_exits_cleanly(tmp_path: Path, rp: Any) -> None:
    server = DevServer(tmp_path, "echo").start()
    try:
        rp.endpoint_url_base = server.url + "/v2"
        ep = rp.Endpoint("dev")
        assert "echo" in ep.run_sync({"v": 1}, timeout=30)
        first = server.ready_workers()[0]["id"]
        handler = server.dir / "handler.py"
        handler.write_text(handler.read_text().replace('{"echo": job["input"]', '{"reloaded": job["input"]'))
        wait_for(lambda: "reloaded" in (ep.run_sync({"v": 2}, timeout=30) or {}), 60, interval_s=0.3,
                 what="the new handler's output")  # fmt: skip
        assert "reloaded handler.py -> release 2" in server.log()
        # The old worker is retired promptly: its held take poll is cut, not waited out.
        wait_for(
            lambda: any(w["id"] == first and w["state"] == "STOPPED" for w in server.workers(True)),
            4,
            what="the old worker to stop",
        )
        assert server.proc is not None
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


def test_a_runpod_sdk_handler_runs_unchanged_and_its_progress_shows(
    runpod_progress_dev: DevServer, rp: Any
) -> None:
    rp.endpoint_url_base = runpod_progress_dev.url + "/v2"
    job = rp.Endpoint("dev").run({"pause_s": 3})
    wait_for(lambda: job.output() == {"step": 1}, 30, interval_s=0.1, what="the progress update")
    assert job.output(timeout=30) == {"done": True}


def test_a_runpod_project_layout_is_served_from_its_handler_folder(tmp_path: Path, rp: Any) -> None:
    """RunPod's layout: src/rp_handler.py importing a module beside it and reading a file from where it
    runs, test_input.json at the project's root; `ember dev DIR` finds it without --handler."""
    server = DevServer(tmp_path, "echo", handler_file="src/rp_handler.py", env={"EMBER_TEST_SDK": "runpod"})
    handler = server.dir / "src" / "rp_handler.py"
    (server.dir / "src" / "greeting.py").write_text("WORD = open('word.txt').read().strip()\n")
    (server.dir / "src" / "word.txt").write_text("hello\n")
    (server.dir / "test_input.json").write_text('{"input": {"from": "test_input"}}')
    handler.write_text(
        handler.read_text().replace(
            '{"echo": job["input"]', '{"echo": job["input"], "word": __import__("greeting").WORD'
        )
    )
    server.start()
    try:
        rp.endpoint_url_base = server.url + "/v2"
        assert rp.Endpoint("dev").run_sync({"v": 1}, timeout=30)["word"] == "hello"
        log = server.log()
        assert f"serving {handler}" in log
        assert '{"input":{"from":"test_input"}}' in log
    finally:
        server.stop()
