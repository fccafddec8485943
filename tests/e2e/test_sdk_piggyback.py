"""Ember's worker SDK under Ember's real control plane gets its next job in the answer to its job-done
POST (`take=1`, an Ember extension) instead of a job-take round trip. The workers reach the server
through a transparent loopback proxy (EMBER_PUBLIC_URL) that only counts the requests passing by."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.live import LiveServer, free_port, handler_dir, live_server, wait_for

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")


class CountingProxy:
    """Forwards each client connection to the server byte for byte, and counts the worker-protocol
    requests on the way: `counts[(route, "take=" value or "")]`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def count(self, route: str, take: str | None = None) -> int:
        with self._lock:
            return sum(n for (r, t), n in self.counts.items() if r == route and (take is None or t == take))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                return
            self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        upstream.shutdown(socket.SHUT_WR)
                        return
                    buf += chunk
                head, rest = buf.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                self._note(lines[0].decode("latin-1"))
                upstream.sendall(head + b"\r\n\r\n" + rest[:length])
                buf = rest[length:]
        except OSError:
            pass

    def _note(self, request_line: str) -> None:
        parts = urlsplit(request_line.split(" ")[1])
        segments = parts.path.split("/")
        if len(segments) > 3 and segments[1] == "v2":
            take = parse_qs(parts.query).get("take", [""])[0]
            with self._lock:
                self.counts[(segments[3], take)] += 1

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[LiveServer, CountingProxy]]:
    proxy = CountingProxy(upstream_port=0)  # the server's port is known once it is made
    try:
        with live_server(tmp_path / "home", env={"EMBER_PUBLIC_URL": proxy.url}) as server:
            proxy.upstream_port = server.port
            yield server, proxy
    finally:
        proxy.close()


def _run(server: LiveServer, endpoint_id: str, seconds: float) -> str:
    resp = server.api("POST", f"/v2/{endpoint_id}/run", json={"input": {"seconds": seconds}})
    assert resp.status_code == 200, resp.text
    return resp.json()["id"]  # type: ignore[no-any-return]


def _status(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    return server.api("GET", f"/v2/{endpoint_id}/status/{job_id}").json()  # type: ignore[no-any-return]


def _final(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (s := _status(server, endpoint_id, job_id))["status"] in FINAL and s, 60, what=f"job {job_id}"
    )


def test_queued_jobs_reach_a_busy_worker_on_its_job_done_answers_not_through_job_take(
    proxied: tuple[LiveServer, CountingProxy], tmp_path: Path
) -> None:
    server, proxy = proxied
    ep = server.deploy(
        "piggy",
        handler_dir(tmp_path, "slow"),
        workersMin=1,
        workersMax=1,
        idleTimeout=600,
        env={"EMBER_TEST_SDK": "ember"},
    )["id"]
    worker = wait_for(
        lambda: [w for w in server.workers(ep) if w["state"] == "IDLE"], 60, what="an idle worker"
    )[0]
    wait_for(lambda: proxy.count("job-take") > 0, 30, what="the worker's first job-take through the proxy")

    first = _run(server, ep, 3.0)  # the worker's waiting job-take gets it
    wait_for(lambda: _status(server, ep, first)["status"] == "IN_PROGRESS", 30, what="the first job")
    takes_before = proxy.count("job-take")
    with server.client() as client:  # ten jobs queue up while the worker is busy
        queued = [
            client.post(f"/v2/{ep}/run", json={"input": {"seconds": 0}}).json()["id"] for _ in range(10)
        ]
    assert _status(server, ep, first)["status"] == "IN_PROGRESS"
    records = [_final(server, ep, job) for job in [first, *queued]]

    assert all(r["status"] == "COMPLETED" and r["workerId"] == worker["id"] for r in records)
    # Eleven results were posted with take=1; the ten queued jobs came back in their answers. At most
    # one job-take went out meanwhile: the poll after the last result, which found the queue empty.
    assert proxy.count("job-done", "1") == 11
    assert proxy.count("job-take") - takes_before <= 1
