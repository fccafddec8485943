"""HTTP to the control plane over `http.client`, with pooled keep-alive connections (stdlib only).

Thread-safe: each request borrows a connection from a per-host pool and returns it afterwards. Errors
surface as `TransportFailure`; this module never decides what a status code means.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

_STALE_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    http.client.BadStatusLine,
)
RESULT_RETRY_S = 30.0
_BACKOFF_CAP_S = 4.0


class TransportFailure(Exception):
    """The request got no HTTP answer (refused, reset, timed out, bad URL)."""


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


class HttpTransport:
    """Requests with the worker's headers: raw `Authorization` key, JSON content, keep-alive."""

    def __init__(self, api_key: str, user_agent: str) -> None:
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = api_key
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._polls: set[http.client.HTTPConnection] = set()
        self._aborted: set[http.client.HTTPConnection] = set()  # cut on purpose: never resent
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self, method: str, url: str, body: bytes | None = None, *, timeout_s: float, abortable: bool = False
    ) -> Response:
        """One request; a connection the server closed while idle is replaced and the request resent.

        `abortable` requests (long polls) are cut short by `abort_polls()`, raising TransportFailure.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TransportFailure(f"not an http(s) URL: {url!r}")
        key = (parts.scheme, parts.netloc)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(2):
            conn, reused = self._borrow(key, timeout_s)
            if abortable:
                with self._lock:
                    self._polls.add(conn)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE_ERRORS as exc:
                conn.close()
                if reused and attempt == 0 and not self._closed and not self._was_aborted(conn):
                    continue
                raise TransportFailure(f"{method} {parts.path}: {exc!r}") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise TransportFailure(f"{method} {parts.path}: {exc!r}") from exc
            finally:
                if abortable:
                    with self._lock:
                        self._polls.discard(conn)
                        self._aborted.discard(conn)
            if resp.will_close or self._closed:
                conn.close()
            else:
                self._give_back(key, conn)
            return Response(resp.status, resp.getheader("Content-Type", "") or "", data)
        raise TransportFailure(f"{method} {parts.path}: connection kept closing")

    def post_result(
        self,
        url: str,
        body: bytes,
        *,
        retry_s: float = RESULT_RETRY_S,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> tuple[bool, str]:
        """POST a result, retrying 5xx, 429 and connection errors for `retry_s`; 4xx is final.

        Returns (delivered, detail). `on_retry(detail, delay_s)` is told of each failed attempt that
        will be retried. The server must accept duplicates (first final result wins).
        """
        deadline = time.monotonic() + retry_s
        delay_s = 0.2
        detail = ""
        while True:
            try:
                resp = self.request("POST", url, body, timeout_s=30.0)
            except TransportFailure as exc:
                detail = str(exc)
            else:
                if 200 <= resp.status < 300:
                    return True, f"HTTP {resp.status}"
                detail = f"HTTP {resp.status}: {resp.body[:200]!r}"
                if resp.status < 500 and resp.status != 429:
                    return False, detail
            if time.monotonic() + delay_s > deadline:
                return False, detail
            if on_retry is not None:
                on_retry(detail, delay_s)
            sleep(delay_s)
            delay_s = min(delay_s * 2, _BACKOFF_CAP_S)

    def abort_polls(self) -> None:
        """Cut every in-flight abortable request (used on a second shutdown signal)."""
        with self._lock:
            polls = list(self._polls)
            self._aborted.update(polls)
        for conn in polls:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _was_aborted(self, conn: http.client.HTTPConnection) -> bool:
        with self._lock:
            return conn in self._aborted

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    def _borrow(self, key: tuple[str, str], timeout_s: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            conns = self._idle.get(key)
            conn = conns.pop() if conns else None
        if conn is not None:
            conn.timeout = timeout_s
            if conn.sock is not None:
                conn.sock.settimeout(timeout_s)
            return conn, True
        scheme, netloc = key
        if scheme == "https":
            return _NoDelayHTTPS(netloc, timeout=timeout_s), False
        return _NoDelayHTTP(netloc, timeout=timeout_s), False

    def _give_back(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(conn)


# http.client sends a request's headers and body in separate segments; with Nagle's algorithm on, the
# body then waits for the server's delayed ACK (~40 ms on Linux). Small RPCs want TCP_NODELAY.
class _NoDelayHTTP(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayHTTPS(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
