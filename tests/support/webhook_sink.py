"""A tiny loopback HTTP server that receives webhook POSTs for end-to-end tests: it records every
request and answers with a scripted sequence of status codes (e.g. 500 first, then 200)."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Delivery:
    path: str
    body: Any  # parsed JSON, or the raw text when it was not JSON
    content_type: str
    answered: int
    at: float  # time.monotonic() when it was read
    arrived: float  # time.time() when its first byte reached this machine's network stack (the kernel's
    # receive time: it does not lag behind, as `at` may, when the sink's threads wait their turn)


# Linux's SO_TIMESTAMPNS: a socket that has it set gets each received segment's arrival time.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _arrival(conn: socket.socket) -> float:
    """When the first byte waiting on `conn` arrived (the kernel's timestamp), without reading it;
    the time now when the kernel gives none."""
    try:
        _, ancillary, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(16), socket.MSG_PEEK)
    except OSError:
        return time.time()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return seconds + nanoseconds / 1e9
    return time.time()


class WebhookSink:
    """Records POSTs to any path. `scripts` maps a path to the status codes its POSTs get, in order;
    after that (and on other paths) every POST gets `default_status`."""

    def __init__(
        self, scripts: dict[str, list[int]] | None = None, default_status: int = 200, host: str = "127.0.0.1"
    ) -> None:
        self._scripts = {path: list(codes) for path, codes in (scripts or {}).items()}
        self._default = default_status
        self._lock = threading.Lock()
        self._received: list[Delivery] = []
        sink = self

        class _Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                self.arrived = _arrival(self.request)
                super().setup()

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                with sink._lock:
                    script = sink._scripts.get(self.path)
                    status = script.pop(0) if script else sink._default
                    sink._received.append(
                        Delivery(
                            self.path,
                            body,
                            self.headers.get("Content-Type", ""),
                            status,
                            time.monotonic(),
                            self.arrived,
                        )
                    )
                payload = b'{"ok": true}' if status < 400 else b'{"error": "sink told to fail"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
                pass

        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)  # the connections inherit it
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def received(self, path: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self._received if path is None or d.path == path]

    def start(self) -> WebhookSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def webhook_sink(
    scripts: dict[str, list[int]] | None = None, default_status: int = 200, host: str = "127.0.0.1"
) -> Iterator[WebhookSink]:
    """A started sink on `host` (a loopback address: 127.0.0.2 is outside the tests' allow list)."""
    sink = WebhookSink(scripts, default_status, host).start()
    try:
        yield sink
    finally:
        sink.stop()
