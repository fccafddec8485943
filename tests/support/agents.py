"""A real host agent in a subprocess (`ember agent`) for end-to-end tests: its own data directory and
virtual GPUs, joined to a `LiveServer` with a token from `POST /v1/hosts`; SIGKILL it (alone, or with
its workers, as a machine that went away) and start it again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.live import LiveServer


class LiveAgent:
    def __init__(
        self,
        server: LiveServer,
        name: str,
        home: Path,
        gpus: str = "",
        server_url: str | None = None,
        docker: bool = False,
    ) -> None:
        """Added to `server` as host `name`; its agent connects to `server_url` (default: the server's)
        and runs workers as local processes, and with `docker` as containers on the local engine too."""
        resp = server.api("POST", "/v1/hosts", json={"name": name})
        assert resp.status_code == 201, resp.text
        self.host_id = str(resp.json()["id"])
        self.token = str(resp.json()["token"])
        self.server = server
        self.server_url = server_url or server.url
        self.name = name
        self.home = home
        self.gpus = gpus
        self.docker = docker
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "agent.log"

    def start(self) -> LiveAgent:
        self.home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            {
                "EMBER_DOCKER": "1" if self.docker else "0",
                "EMBER_SANDBOX": os.environ.get("EMBER_TEST_SANDBOX", "off"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        args = ["--server", self.server_url, "--token", self.token, "--home", str(self.home)]
        if self.gpus:
            args += ["--gpus", self.gpus]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ember.cli.main", "agent", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self, with_workers: bool = False) -> None:
        """SIGKILL the agent; `with_workers`: its workers too (the machine went away)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
        if with_workers:
            self.kill_workers()

    def worker_pids(self) -> dict[str, int]:
        """The agent's local-process workers that still run, by id."""
        out: dict[str, int] = {}
        for meta in (self.home / "runtime" / "workers").glob("*/meta.json"):
            try:
                pid = int(json.loads(meta.read_text())["pid"])
                os.kill(pid, 0)
            except (OSError, ValueError, KeyError):
                continue
            out[meta.parent.name] = pid
        return out

    def kill_workers(self) -> None:
        for pid in self.worker_pids().values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:] if self.log_path.exists() else ""
