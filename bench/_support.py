"""Shared pieces of the benchmarks: a raw keep-alive HTTP/1.1 client (HTTP libraries add 0.3-1.2 ms of
their own), percentiles, a bare echo server baseline, and a throwaway Ember server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.live import LiveServer, free_port, wait_for  # noqa: E402


def encode_request(method: str, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + body


def parse_head(raw_head: bytes) -> tuple[int, int]:
    """(status code, content length) of a response head."""
    lines = raw_head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    return int(lines[0].split()[1]), length


class RawClient:
    """One keep-alive connection; `request` returns (status, body bytes)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.sock.sendall(encode_request(method, path, body, headers))
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        raw_head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, length = parse_head(raw_head)
        while len(self.buf) < length:
            self.buf += self._recv()
        data, self.buf = self.buf[:length], self.buf[length:]
        return status, data

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class AsyncRawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> AsyncRawClient:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        return cls(r, w)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.writer.write(encode_request(method, path, body, headers))
        raw_head = await self.reader.readuntil(b"\r\n\r\n")
        status, length = parse_head(raw_head)
        data = await self.reader.readexactly(length) if length else b""
        return status, data

    def close(self) -> None:
        self.writer.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {"p50_ms": statistics.median(ms), "p99_ms": pct(ms, 0.99), "mean_ms": statistics.fmean(ms)}


ECHO_APP = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
import json

async def echo(request: Request) -> Response:
    body = json.loads(await request.body())
    record = {"id": "x", "status": "COMPLETED", "output": body["input"]}
    return Response(json.dumps(record), media_type="application/json")

app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
"""


class EchoServer:
    """The baseline: a bare JSON echo on uvicorn + Starlette, same loop and parser as Ember's server."""

    def __init__(self, wrap: list[str] | None = None, up_timeout_s: float = 20) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="ember-echo-")
        Path(self.dir, "echo_app.py").write_text(ECHO_APP)
        self.proc = subprocess.Popen(
            [
                *(wrap or []),
                sys.executable,
                "-m",
                "uvicorn",
                "echo_app:app",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
            ],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, up_timeout_s, what="echo server")

    def _up(self) -> bool:
        try:
            return (
                httpx.post(f"http://127.0.0.1:{self.port}/echo", json={"input": 1}, timeout=1).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_ember(
    extra_env: dict[str, str] | None = None, wrap: list[str] | None = None, up_timeout_s: float = 30
) -> LiveServer:
    home = Path(tempfile.mkdtemp(prefix="ember-bench-"))
    env = {
        "EMBER_LOG_LEVEL": "WARNING",
        "EMBER_TAKE_HOLD_S": "20",
        "EMBER_PING_INTERVAL_MS": "2000",
        "EMBER_PING_TIMEOUT_S": "30",
        "EMBER_TICK_S": "0.5",
    }
    env.update(extra_env or {})
    return LiveServer(home, env=env, wrap=wrap, up_timeout_s=up_timeout_s).start()


def handler_source(name: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"ember-bench-{name}-"))
    (d / "handler.py").write_text((ROOT / "tests" / "handlers" / f"{name}.py").read_text())
    return d


def wait_idle(server: LiveServer, endpoint_id: str, count: int, timeout_s: float = 60) -> None:
    wait_for(
        lambda: sum(1 for w in server.workers(endpoint_id) if w["state"] == "IDLE") >= count,
        timeout_s,
        what=f"{count} idle workers",
    )


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    print(f"\n{title}")
    for k, v in rows:
        print(f"  {k:<48} {v}")


def as_json(data: dict[str, Any]) -> str:
    return json.dumps(data)


BASE_IMAGE = os.environ.get("EMBER_TEST_BASE_IMAGE", "ember-base:bookworm")


def docker_ready() -> str | None:
    """Why the Docker benchmarks cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command"
    probe = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return f'base image {BASE_IMAGE} missing or engine down (run `eval "$(bash .ci/services.sh)"`)'
    return None
