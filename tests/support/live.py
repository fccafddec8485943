"""A real Ember control plane in a subprocess (`ember server`) for end-to-end tests: its own EMBER_HOME,
a free loopback port, the admin key, and helpers to deploy handler directories, call the API, wait for
conditions, SIGKILL and restart it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from ember.build.archive import pack

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = ROOT / "tests" / "handlers"
T = TypeVar("T")
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition"
) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


class LiveServer:
    def __init__(
        self,
        home: Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        wrap: list[str] | None = None,
        up_timeout_s: float = 30,
    ) -> None:
        """`wrap`: a command the server runs under (a benchmark's `valgrind --tool=callgrind …`)."""
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "ek_admin_test_" + os.urandom(8).hex()
        self.extra_env = env or {}
        self.args = args or []
        self.wrap = wrap or []
        self.up_timeout_s = up_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    # ---- process -------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "EMBER_HOME": str(self.home),
                "EMBER_ADMIN_KEY": self.admin_key,
                "EMBER_PING_INTERVAL_MS": "1000",
                "EMBER_PING_TIMEOUT_S": "6",
                "EMBER_TICK_S": "0.2",
                "EMBER_METER_INTERVAL_S": "1",
                "EMBER_TAKE_HOLD_S": "5",
                "EMBER_STOP_GRACE_S": "5",
                # Webhook receivers and git servers of the tests listen on 127.0.0.1; 127.0.0.2 stays refused.
                "EMBER_OUTBOUND_ALLOW": "127.0.0.1/32,::1/128",
                # The admin's handler fixtures signal through host files (gates, records, markers), so
                # they run unsandboxed; other accounts' workers are sandboxed all the same. The sandbox's
                # own tests set EMBER_SANDBOX; EMBER_TEST_SANDBOX=required runs a whole suite sandboxed.
                "EMBER_SANDBOX": os.environ.get("EMBER_TEST_SANDBOX", "off"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> LiveServer:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child writes to its own copy of the descriptor
            self.proc = self._spawn(log)
        try:
            wait_for(self._up, self.up_timeout_s, what=f"ember server on {self.url} (log: {self.log_path})")
        except BaseException:
            self.kill()  # a server that never came up is not left running behind the failed test
            raise
        return self

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                *self.wrap,
                sys.executable,
                "-m",
                "ember.cli.main",
                "server",
                "--port",
                str(self.port),
                *self.args,
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"ember server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL the control plane alone (its workers live on in their own sessions)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def kill_workers(self) -> None:
        """Stop every worker process left behind (used at teardown)."""
        runtime = self.home / "runtime" / "workers"
        if not runtime.exists():
            return
        for meta in runtime.glob("*/meta.json"):
            try:
                pid = json.loads(meta.read_text()).get("pid")
                if pid:
                    os.killpg(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def worker_pid(self, worker_id: str) -> int:
        """The pid of a local-process worker, from its backend's meta file."""
        meta = json.loads((self.home / "runtime" / "workers" / worker_id / "meta.json").read_text())
        return int(meta["pid"])

    def worker_env(self, worker_id: str) -> dict[str, str]:
        """A local-process worker's environment, as the worker sees it."""
        environ = Path(f"/proc/{self.worker_pid(worker_id)}/environ").read_bytes().split(b"\0")
        return dict(e.decode().split("=", 1) for e in environ if b"=" in e)

    def worker_key(self, worker_id: str) -> str:
        """A worker's own key (RUNPOD_AI_API_KEY), read from its process environment."""
        return self.worker_env(worker_id)["RUNPOD_AI_API_KEY"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-20000:] if self.log_path.exists() else ""

    # ---- API -----------------------------------------------------------------------------------------
    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.admin_key}"}, timeout=60
        )

    def api(self, method: str, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        with self.client(key) as c:
            return c.request(method, path, **kw)

    def cli(
        self,
        *args: str,
        key: str | None = None,
        url: str | None = None,
        home: Path | None = None,
        stdin: str | None = None,
        new_session: bool = False,
        timeout_s: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the `ember` CLI against this server, as the admin unless `key` is given, with an
        EMBER_HOME of its own unless `home` is (that home holds no admin_key file: the env key is used).
        `new_session`: no controlling terminal, so a hidden prompt reads standard input."""
        return subprocess.run(
            [sys.executable, "-m", "ember.cli.main", *args],
            env=self.cli_env(key=key, url=url, home=home),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            start_new_session=new_session,
        )

    def cli_env(
        self, *, key: str | None = None, url: str | None = None, home: Path | None = None
    ) -> dict[str, str]:
        """The environment `cli` runs the CLI with (for a CLI process a test runs itself)."""
        env = dict(os.environ)
        env.update(
            EMBER_API_URL=url or self.url,
            EMBER_API_KEY=key or self.admin_key,
            EMBER_HOME=str(home or self.home / "cli-home"),
            COLUMNS="200",
        )
        return env

    def new_account(self, name: str, credit: str | None = "100.00") -> str:
        """Create a (non-admin) account, credit it with `credit` dollars when given; its API key."""
        resp = self.api("POST", "/v1/accounts", json={"name": name})
        assert resp.status_code == 201, resp.text
        account = resp.json()
        if credit:
            resp = self.api("POST", f"/v1/accounts/{account['id']}/credits", json={"amount": credit})
            assert resp.status_code == 200, resp.text
        return str(account["apiKey"])

    def deploy(
        self, name: str, source_dir: Path | str, key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Create an endpoint from a directory: named by path as the admin, uploaded (as `ember
        deploy` does) for any other account, which may not name a host path."""
        if key is None or key == self.admin_key:
            source: dict[str, Any] = {"sourceDir": str(source_dir)}
        else:
            source = {"sourceId": self.upload(source_dir, key)["id"]}
        resp = self.api("POST", "/v1/endpoints", key, json={"name": name, **source, **fields})
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def upload(self, source_dir: Path | str, key: str | None = None) -> dict[str, Any]:
        """Pack a directory as `ember deploy` does and upload it: the `/v1/sources` record."""
        data = pack(Path(source_dir))
        headers = {"Content-Type": "application/gzip"}
        resp = self.api("POST", "/v1/sources", key, content=data, headers=headers)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def run_job(self, endpoint_id: str, job_input: Any = None, timeout_s: float = 90) -> dict[str, Any]:
        """Queue a job with /run, wait for it to finish, assert it COMPLETED and return its output."""
        resp = self.api("POST", f"/v2/{endpoint_id}/run", json={"input": job_input or {}})
        assert resp.status_code == 200, resp.text
        job_id = resp.json()["id"]

        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = self.api("GET", f"/v2/{endpoint_id}/status/{job_id}").json()
            return body if body["status"] in FINAL_STATES else None

        record = wait_for(done, timeout_s, what=f"job {job_id}\n{self.log()[-3000:]}")
        assert record["status"] == "COMPLETED", record
        return dict(record["output"])

    def workers(
        self, endpoint_id: str, key: str | None = None, include_stopped: bool = False
    ) -> list[dict[str, Any]]:
        resp = self.api(
            "GET",
            f"/v1/endpoints/{endpoint_id}/workers",
            key,
            params={"includeStopped": str(include_stopped).lower()},
        )
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]


def handler_dir(tmp: Path, fixture: str, *, extra_files: dict[str, str] | None = None) -> Path:
    """A deployable directory whose handler.py is `tests/handlers/<fixture>.py`. The fixtures pick
    their SDK from EMBER_TEST_SDK, so deploy with env={"EMBER_TEST_SDK": "runpod"} for RunPod's."""
    d = tmp / fixture
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text((HANDLERS / f"{fixture}.py").read_text())
    for name, content in (extra_files or {}).items():
        (d / name).write_text(content)
    return d


@contextmanager
def live_server(home: Path, **kw: Any) -> Iterator[LiveServer]:
    server = LiveServer(home, **kw).start()
    try:
        yield server
    finally:
        server.stop()
        server.kill_workers()
