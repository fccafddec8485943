"""A worker's first start is visible as it happens: `ember deploy --wait`, the worker's reason and `ember
logs` (-f, --tail 0) show the requirements.txt install and then the handler's start, with a real server,
a real pip and the real `runpod` SDK in the handler. The wheel comes from a loopback server that holds
the download until the test lets it go, so "while pip runs" is a state the test controls, not a race."""

from __future__ import annotations

import base64
import hashlib
import http.server
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import LiveServer, handler_dir, wait_for

STEP_S = 60.0


class HeldWheel:
    """Serves one tiny pure-Python wheel on loopback, answering only once `release()` is called."""

    def __init__(self, directory: Path, value: str) -> None:
        self.name = "tinypkg_ember_test-0.1-py3-none-any.whl"
        self.value = value
        self.data = tiny_wheel(directory / self.name, value).read_bytes()
        self.released = threading.Event()
        self.requested = threading.Event()
        held = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
                held.requested.set()
                held.released.wait(STEP_S * 2)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(held.data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(held.data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{self.name}"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def tiny_wheel(path: Path, value: str) -> Path:
    """A valid wheel of package `tinypkg_ember_test` whose VALUE is `value` (no build step, no index)."""
    files = {
        "tinypkg_ember_test/__init__.py": f"VALUE = {value!r}\n",
        "tinypkg_ember_test-0.1.dist-info/METADATA": (
            "Metadata-Version: 2.1\nName: tinypkg-ember-test\nVersion: 0.1\n"
        ),
        "tinypkg_ember_test-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: ember-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("tinypkg_ember_test-0.1.dist-info/RECORD,,")
    files["tinypkg_ember_test-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


class Output:
    """A CLI process whose stdout and stderr lines are collected as they come."""

    def __init__(self, server: LiveServer, *args: str) -> None:
        env = server.cli_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ember.cli.main", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def shows(self, needle: str, timeout_s: float = STEP_S) -> None:
        wait_for(lambda: needle in self.text, timeout_s, what=f"{needle!r} in the output of {self.proc.args}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        self.reader.join(10)  # it ends at the pipe's end, once the process has gone
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def held_wheel(tmp_path: Path) -> Iterator[HeldWheel]:
    held = HeldWheel(tmp_path, f"tiny-{uuid.uuid4().hex[:8]}")
    try:
        yield held
    finally:
        held.close()


def only_worker(server: LiveServer, endpoint_id: str) -> dict[str, object]:
    def one() -> dict[str, object] | None:
        rows = server.workers(endpoint_id)
        return rows[0] if len(rows) == 1 else None

    return wait_for(one, STEP_S, what=f"the worker of {endpoint_id}")


def reason_is(server: LiveServer, endpoint_id: str, reason: str) -> None:
    def check() -> bool:
        rows = server.workers(endpoint_id)
        return bool(rows) and rows[0]["state"] == "INITIALIZING" and rows[0]["reason"] == reason

    wait_for(check, STEP_S, what=f"the worker's reason to be {reason!r}\n{server.log()[-3000:]}")


def test_deploy_wait_and_logs_show_the_requirements_install_then_the_handler_start(
    server: LiveServer, tmp_path: Path, held_wheel: HeldWheel
) -> None:
    name = "first-start"
    gate = tmp_path / "gate"
    requirements = f"--no-index\ntinypkg-ember-test @ {held_wheel.url}\n"
    directory = handler_dir(tmp_path, "starts_after_gate", extra_files={"requirements.txt": requirements})
    env = {
        "EMBER_TEST_SDK": "runpod",
        "EMBER_TEST_GATE": str(gate),
        "EMBER_TEST_IMPORT": "tinypkg_ember_test",
    }
    deploy = Output(
        server,
        "deploy", str(directory), "--name", name, "--workers-min", "1", "--workers-max", "1", "--wait",
        *(arg for key, value in env.items() for arg in ("--env", f"{key}={value}")),
    )  # fmt: skip
    followers: list[Output] = [deploy]
    try:
        endpoint_id = wait_for(
            lambda: next(
                (e["id"] for e in server.api("GET", "/v1/endpoints").json() if e["name"] == name), None
            ),
            STEP_S,
            what="the endpoint",
        )
        # Started while the worker initialises (or before it exists): it must pick the worker up.
        follow = Output(server, "logs", name, "-f")
        followers.append(follow)

        # pip runs, held at the download: the reason says so and its output is in the worker's log.
        assert held_wheel.requested.wait(STEP_S), server.log()[-3000:]
        reason_is(server, endpoint_id, "installing requirements")
        worker_id = str(only_worker(server, endpoint_id)["id"])
        wait_for(
            lambda: "tinypkg-ember-test" in server.cli("logs", name).stdout,
            STEP_S,
            what="pip's output in logs",
        )
        logs = server.cli("logs", name).stdout
        assert f"[{worker_id}] [ember] installing requirements.txt" in logs, logs
        follow.shows(f"[{worker_id}] [ember] installing requirements.txt")
        follow.shows("tinypkg-ember-test")
        deploy.shows("INITIALIZING (installing requirements)")
        deploy.shows("tinypkg-ember-test")
        assert "logs unavailable" not in follow.text, follow.text

        # pip done: the handler's process starts and waits at the gate.
        held_wheel.release()
        reason_is(server, endpoint_id, "starting handler")
        follow.shows(f"[{worker_id}] waiting for the gate")
        deploy.shows("INITIALIZING (starting handler)")
        deploy.shows("waiting for the gate")
        assert deploy.proc.poll() is None, deploy.text

        gate.write_text("open")
        assert deploy.proc.wait(STEP_S) == 0, deploy.text
        assert f"worker {worker_id} is ready" in deploy.text, deploy.text
        assert "virtualenv ready in" in server.cli("logs", name).stdout

        # The handler runs in the endpoint's virtualenv, and -f keeps following it.
        assert server.run_job(endpoint_id, {"message": "first-job"}) == {"value": held_wheel.value}
        follow.shows(f"[{worker_id}] handling first-job")

        # --tail 0: none of the past; with -f, only what comes after.
        assert server.cli("logs", name, "--tail", "0").stdout == ""
        fresh = Output(server, "logs", name, "--tail", "0", "-f")
        followers.append(fresh)
        jobs = iter(range(100))

        def a_new_job_is_seen() -> bool:
            # The follower may not read the log yet when a job runs: run jobs until it shows one.
            server.run_job(endpoint_id, {"message": f"second-job-{next(jobs)}"})
            return f"[{worker_id}] handling second-job-" in fresh.text

        wait_for(a_new_job_is_seen, STEP_S, interval_s=0.3, what="a job's line in the --tail 0 follower")
        follow.shows(f"[{worker_id}] handling second-job-")
        assert "first-job" not in fresh.text and "waiting for the gate" not in fresh.text, fresh.text
    finally:
        for proc in followers:
            proc.close()


def test_deploy_wait_ends_with_the_error_when_the_requirements_do_not_install(
    server: LiveServer, tmp_path: Path
) -> None:
    requirements = "--no-index\nno-such-package-for-ember-tests==1.0\n"
    directory = handler_dir(tmp_path, "echo", extra_files={"requirements.txt": requirements})
    deploy = server.cli(
        "deploy", str(directory), "--name", "bad-requirements", "--workers-min", "1", "--workers-max", "1",
        "--env", "EMBER_TEST_SDK=runpod", "--wait", "--wait-timeout", str(STEP_S),
    )  # fmt: skip
    out = deploy.stdout + deploy.stderr
    assert deploy.returncode == 1, out
    assert "failed to start" in out and "requirements.txt" in out, out
    assert "no-such-package-for-ember-tests" in out, "pip's own error is shown while waiting"
    logs = server.cli("logs", "bad-requirements").stdout
    assert "no-such-package-for-ember-tests" in logs and "[ember] installing" in logs, logs
