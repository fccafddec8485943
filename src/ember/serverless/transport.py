"""HTTP/1.1 to the control plane over plain sockets, with pooled keep-alive connections (stdlib only).

A worker sends small JSON requests to one host, so this module writes each request in one `sendall`
(no Nagle delay between head and body) and reads the answer with the minimal parser of `connection`
(status line, `Content-Length` or chunked body, `Content-Type`, `Connection`). `http.client` spends
more CPU than a no-op job's whole run on each response (a file object per response, headers parsed by
the `email` package), and imports `email` and `ssl` at cold start; `ssl` is imported here only for an
https URL.

Thread-safe: each request borrows a connection from a per-host pool and returns it afterwards. Errors
surface as `TransportFailure`; this module never decides what a status code means.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.serverless.connection import ClosedEarly, Connection

if TYPE_CHECKING:
    from ssl import SSLContext

RESULT_RETRY_S = 30.0
HELD_ANSWER_TIMEOUT_S = 90.0  # a job-done asking for its next jobs is held like a job-take
_BACKOFF_CAP_S = 4.0
_URL = re.compile(r"([Hh][Tt][Tt][Pp][Ss]?)://([^/?#]+)([^#]*)(?:#.*)?")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")


class TransportFailure(Exception):
    """The request got no HTTP answer (refused, reset, timed out, bad URL, unreadable answer)."""


class _NotSent(Exception):
    """The request's `unless` event was set: it was never sent."""


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    resent: bool = False  # the answer is to a resend (to the `resend_url`, when one was given)


@dataclass(frozen=True)
class Delivery:
    """How a `post_result` ended: delivered (2xx) or not, a detail for logs, and the 2xx answer to the
    first attempt when that attempt delivered it (None when a retry did, or nothing did)."""

    delivered: bool
    detail: str
    first_answer: Response | None = None


class HttpTransport:
    """Requests with the worker's headers: raw `Authorization` key, JSON content, keep-alive."""

    def __init__(self, api_key: str, user_agent: str) -> None:
        if _BAD_HEADER_CHARS.search(api_key + user_agent):
            raise ValueError("the API key or user agent contains a line break or NUL")
        fixed = f"User-Agent: {user_agent}\r\nAccept: application/json\r\n"
        if api_key:
            fixed += f"Authorization: {api_key}\r\n"
        self._fixed_headers = fixed
        self._idle: dict[str, list[Connection]] = {}
        self._polls: set[Connection] = set()
        self._aborted: set[Connection] = set()  # cut on purpose: never resent
        self._lock = threading.Lock()
        self._closed = False
        self._tls: SSLContext | None = None

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        *,
        timeout_s: float,
        abortable: bool = False,
        unless: threading.Event | None = None,
        resend_url: str | None = None,
        sent: Callable[[], None] | None = None,
    ) -> Response:
        """One request; a reused connection that turns out closed is replaced and the request resent
        (to `resend_url` when given: a request that may only be sent once in its first form).

        `abortable` requests (long polls) are cut short by `abort_polls()`, raising TransportFailure.
        One with `unless` is not sent once that event is set: it is checked after the request became
        abortable, so a caller that sets it before calling `abort_polls()` never leaves a poll behind.
        `sent` is called each time the request has been sent, before its answer is read.
        """
        origin, host, target = _split(url)
        for attempt in range(2):
            head = self._head(method, host, target, body)
            try:
                conn = self._borrow(origin, host, timeout_s)
            except (OSError, ValueError) as exc:  # refused, unresolvable, TLS handshake failed
                raise TransportFailure(f"{method} {_path(target)}: {exc!r}") from exc
            if abortable:
                with self._lock:
                    self._polls.add(conn)
            try:
                if unless is not None and unless.is_set():
                    raise _NotSent()
                conn.send(head + body if body else head)
                if sent is not None:
                    sent()
                status, content_type, data, keep = conn.read_response(method)
            except ClosedEarly as exc:
                conn.close()
                if conn.reused and attempt == 0 and not self._closed and not self._was_aborted(conn):
                    if resend_url is not None:
                        origin, host, target = _split(resend_url)
                    continue
                raise TransportFailure(f"{method} {_path(target)}: connection closed ({exc})") from exc
            except _NotSent:
                conn.close()  # it may have been cut already
                raise TransportFailure(f"{method} {_path(target)}: not sent (stopping)") from None
            except (OSError, ValueError) as exc:
                conn.close()
                raise TransportFailure(f"{method} {_path(target)}: {exc!r}") from exc
            finally:
                if abortable:
                    with self._lock:
                        self._polls.discard(conn)
                        self._aborted.discard(conn)
            if keep:
                self._give_back(origin, conn)
            else:
                conn.close()
            return Response(status, content_type, data, resent=attempt > 0)
        raise TransportFailure(f"{method} {_path(target)}: connection kept closing")

    def post_result(
        self,
        url: str,
        body: bytes,
        *,
        first_url: str | None = None,
        retry_s: float = RESULT_RETRY_S,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[str, float], None] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Delivery:
        """POST a result, retrying 5xx, 429 and connection errors for `retry_s`; 4xx is final.

        The first attempt goes to `first_url` when given and every later one (a resend on a dead
        connection included) to `url`. The server may hold the answer to `first_url` like a long poll
        (job-done with take=N waits for the next job), so that attempt is abortable and may take as long
        as a poll. `on_sent()` is called once, when the result was first sent (while its answer may be
        held, so what it does costs the worker no time). `on_retry(detail, delay_s)` is told of each
        failed attempt that will be retried. The server must accept duplicates (first final result
        wins).
        """
        deadline = time.monotonic() + retry_s
        delay_s = 0.2
        detail = ""
        first = first_url is not None
        told = on_sent is None

        def sent() -> None:
            nonlocal told
            if not told and on_sent is not None:
                told = True
                on_sent()

        while True:
            held = first and first_url is not None
            try:
                resp = self.request(
                    "POST",
                    first_url if held and first_url else url,
                    body,
                    timeout_s=HELD_ANSWER_TIMEOUT_S if held else 30.0,
                    abortable=held,
                    resend_url=url,
                    sent=None if told else sent,
                )
            except TransportFailure as exc:
                detail = str(exc)
            else:
                if 200 <= resp.status < 300:
                    return Delivery(True, f"HTTP {resp.status}", resp if first and not resp.resent else None)
                detail = f"HTTP {resp.status}: {resp.body[:200]!r}"
                if resp.status < 500 and resp.status != 429:
                    return Delivery(False, detail)
            first = False
            if time.monotonic() + delay_s > deadline:
                return Delivery(False, detail)
            if on_retry is not None:
                on_retry(detail, delay_s)
            sleep(delay_s)
            delay_s = min(delay_s * 2, _BACKOFF_CAP_S)

    def abort_polls(self) -> None:
        """Cut every in-flight abortable request (used on a shutdown signal)."""
        with self._lock:
            polls = list(self._polls)
            self._aborted.update(polls)
        for conn in polls:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()

    # ---- internals ------------------------------------------------------------------------------

    def _head(self, method: str, host: str, target: str, body: bytes | None) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{self._fixed_headers}"
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(body or b'')}\r\n"
        return (head + "\r\n").encode("latin-1")

    def _was_aborted(self, conn: Connection) -> bool:
        with self._lock:
            return conn in self._aborted

    def _borrow(self, origin: str, host: str, timeout_s: float) -> Connection:
        while True:
            with self._lock:
                conns = self._idle.get(origin)
                conn = conns.pop() if conns else None
            if conn is None:
                break
            if conn.looks_closed():
                conn.close()
                continue
            conn.begin(timeout_s)
            return conn
        tls = origin.startswith("https")
        name, port = _host_port(host, 443 if tls else 80)
        return Connection.open(name, port, timeout_s, self._tls_context if tls else None)

    def _tls_context(self) -> SSLContext:
        with self._lock:
            if self._tls is None:
                import ssl

                self._tls = ssl.create_default_context()
            return self._tls

    def _give_back(self, origin: str, conn: Connection) -> None:
        """Keep `conn` for the next request, or close it when the transport was closed meanwhile (a
        request that ends after `close()` must not leave its socket in the pool)."""
        conn.reused = True
        with self._lock:
            if not self._closed:
                self._idle.setdefault(origin, []).append(conn)
                return
        conn.close()


def _split(url: str) -> tuple[str, str, str]:
    """(origin `scheme://host`, host, request target) of an http(s) URL; TransportFailure otherwise."""
    match = _URL.fullmatch(url)
    if match is None or _BAD_URL_CHARS.search(url):
        raise TransportFailure(f"not an http(s) URL: {url!r}")
    scheme, host, target = match.groups()
    if not target:
        target = "/"
    elif target[0] == "?":
        target = "/" + target
    return f"{scheme.lower()}://{host}", host, target


def _host_port(host: str, default_port: int) -> tuple[str, int]:
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    try:
        return name, int(port) if port else default_port
    except ValueError:
        raise TransportFailure(f"bad port in {host!r}") from None


def _path(target: str) -> str:
    return target.split("?", 1)[0]
