"""HTTP/1.1 to the control plane over plain sockets, with pooled keep-alive connections (stdlib only).

A worker sends small JSON requests to one host, so this module writes each request in one `sendall`
(no Nagle delay between head and body) and reads the answer with a minimal parser: status line,
`Content-Length` or chunked body, `Content-Type`, `Connection`. `http.client` spends more CPU than a
no-op job's whole run on each response (a file object per response, headers parsed by the `email`
package), and imports `email` and `ssl` at cold start; `ssl` is imported here only for an https URL.

Thread-safe: each request borrows a connection from a per-host pool and returns it afterwards. Errors
surface as `TransportFailure`; this module never decides what a status code means.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RESULT_RETRY_S = 30.0
HELD_ANSWER_TIMEOUT_S = 90.0  # a job-done asking for its next jobs is held like a job-take
_BACKOFF_CAP_S = 4.0
_MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 64 * 1024
_URL = re.compile(r"([Hh][Tt][Tt][Pp][Ss]?)://([^/?#]+)([^#]*)(?:#.*)?")
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f]")
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


class TransportFailure(Exception):
    """The request got no HTTP answer (refused, reset, timed out, bad URL, unreadable answer)."""


class _NotSent(Exception):
    """The request's `unless` event was set: it was never sent."""


class _ClosedEarly(Exception):
    """The connection ended before any byte of the answer: on a reused connection, resend."""


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
        self._idle: dict[str, list[_Connection]] = {}
        self._polls: set[_Connection] = set()
        self._aborted: set[_Connection] = set()  # cut on purpose: never resent
        self._lock = threading.Lock()
        self._closed = False
        self._tls: Any = None

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
    ) -> Response:
        """One request; a reused connection that turns out closed is replaced and the request resent
        (to `resend_url` when given: a request that may only be sent once in its first form).

        `abortable` requests (long polls) are cut short by `abort_polls()`, raising TransportFailure.
        One with `unless` is not sent once that event is set: it is checked after the request became
        abortable, so a caller that sets it before calling `abort_polls()` never leaves a poll behind.
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
                status, content_type, data, keep = conn.read_response(method)
            except _ClosedEarly as exc:
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
    ) -> Delivery:
        """POST a result, retrying 5xx, 429 and connection errors for `retry_s`; 4xx is final.

        The first attempt goes to `first_url` when given and every later one (a resend on a dead
        connection included) to `url`. The server may hold the answer to `first_url` like a long poll
        (job-done with take=N waits for the next job), so that attempt is abortable and may take as long
        as a poll. `on_retry(detail, delay_s)` is told of each failed attempt that will be retried. The
        server must accept duplicates (first final result wins).
        """
        deadline = time.monotonic() + retry_s
        delay_s = 0.2
        detail = ""
        first = first_url is not None
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

    def _was_aborted(self, conn: _Connection) -> bool:
        with self._lock:
            return conn in self._aborted

    def _borrow(self, origin: str, host: str, timeout_s: float) -> _Connection:
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
        return _Connection.open(origin, host, timeout_s, self._tls_context)

    def _tls_context(self) -> Any:
        with self._lock:
            if self._tls is None:
                import ssl

                self._tls = ssl.create_default_context()
            return self._tls

    def _give_back(self, origin: str, conn: _Connection) -> None:
        """Keep `conn` for the next request, or close it when the transport was closed meanwhile (a
        request that ends after `close()` must not leave its socket in the pool)."""
        conn.reused = True
        with self._lock:
            if not self._closed:
                self._idle.setdefault(origin, []).append(conn)
                return
        conn.close()


class _Connection:
    """One keep-alive socket and what was read of it past the last answer (normally nothing).

    Bytes read and not yet used are `buf[pos:]`: taking an answer's bytes moves `pos` instead of copying
    what is left, and a body larger than what is buffered is read straight into a buffer of its size,
    so reading an answer costs time in proportion to its size (a 32 MiB answer in milliseconds).

    Every request has a deadline (`begin`): each wait on the socket is given only the time left, so a
    server that trickles bytes can't stretch a request past its `timeout_s`.
    """

    __slots__ = ("sock", "buf", "pos", "reused", "timeout_s", "tls", "deadline")

    def __init__(self, sock: socket.socket, timeout_s: float, tls: bool) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.reused = False
        self.timeout_s = timeout_s
        self.tls = tls
        self.deadline = time.monotonic() + timeout_s

    @classmethod
    def open(cls, origin: str, host: str, timeout_s: float, tls_context: Callable[[], Any]) -> _Connection:
        tls = origin.startswith("https")
        name, port = _host_port(host, 443 if tls else 80)
        sock = socket.create_connection((name, port), timeout=timeout_s)
        try:
            # Small RPCs want TCP_NODELAY: no waiting for the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = tls_context().wrap_socket(sock, server_hostname=name)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout_s, tls)

    def begin(self, timeout_s: float) -> None:
        """Start a request that must be answered within `timeout_s`."""
        self.deadline = time.monotonic() + timeout_s
        self._wait_at_most(timeout_s)

    def _wait_at_most(self, timeout_s: float) -> None:
        if timeout_s != self.timeout_s:
            self.sock.settimeout(timeout_s)
            self.timeout_s = timeout_s

    def _time_left(self) -> None:
        """Give the next socket wait what is left of the request's time; TimeoutError when none is."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer within the request's time limit")
        if left < self.timeout_s:
            self._wait_at_most(left)

    def looks_closed(self) -> bool:
        """An idle plain connection with something to read is dead (the peer closed it, or sent junk).

        TLS connections are not checked this way (a session ticket may arrive on a healthy one).
        """
        if self.pos < len(self.buf):
            return True
        if self.tls:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except _DROPPED as exc:
            raise _ClosedEarly(repr(exc)) from exc

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def read_response(self, method: str) -> tuple[int, str, bytes, bool]:
        """(status, content type, body, keep-alive) of the next answer; interim 1xx answers are skipped."""
        first = True
        while True:
            head = self._read_until(b"\r\n\r\n", _MAX_HEAD_BYTES, first=first)
            first = False
            lines = head.split(b"\r\n")
            parts = lines[0].split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP status line: {lines[0][:100]!r}")
            status = int(parts[1])
            content_type = ""
            length = -1
            chunked = False
            connection = b""
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"content-type":
                    content_type = value.strip().decode("latin-1")
                elif name == b"connection":
                    connection = value.strip().lower()
            if 100 <= status < 200:
                continue
            http10 = parts[0] == b"HTTP/1.0"
            keep = b"keep-alive" in connection if http10 else b"close" not in connection
            if method == "HEAD" or status in (204, 304):
                return status, content_type, b"", keep
            if chunked:
                return status, content_type, self._read_chunked(), keep
            if length >= 0:
                return status, content_type, self._read_exact(length), keep
            return status, content_type, self._read_to_eof(), False

    def _recv(self, into: memoryview | None = None, *, first: bool = False) -> int:
        """One read from the socket (into `into`, else appended to the buffer); its size."""
        self._time_left()
        try:
            if into is not None:
                got = self.sock.recv_into(into)
            else:
                chunk = self.sock.recv(_RECV_BYTES)
                got = len(chunk)
                if got:
                    if self.pos == len(self.buf) or self.pos > _RECV_BYTES:
                        del self.buf[: self.pos]  # what was used already (all of it, most often)
                        self.pos = 0
                    self.buf += chunk
        except _DROPPED as exc:
            if first and self.pos == len(self.buf):
                raise _ClosedEarly(repr(exc)) from exc
            raise
        if not got:
            if first and self.pos == len(self.buf):
                raise _ClosedEarly("no answer")
            raise ConnectionError("connection closed in the middle of an answer")
        return got

    def _take(self, size: int) -> bytes:
        data = bytes(self.buf[self.pos : self.pos + size])
        self.pos += size
        return data

    def _read_until(self, separator: bytes, limit: int, *, first: bool = False) -> bytes:
        searched = 0  # how far past `pos` the separator is known not to start (a read may move `pos`)
        while True:
            end = self.buf.find(separator, self.pos + searched)
            if end >= 0:
                found = self._take(end - self.pos)
                self.pos += len(separator)
                return found
            if len(self.buf) - self.pos > limit:
                raise ValueError("answer head too large")
            searched = max(0, len(self.buf) - self.pos - len(separator) + 1)
            self._recv(first=first)

    def _read_exact(self, size: int) -> bytes:
        buffered = len(self.buf) - self.pos
        if buffered >= size:
            return self._take(size)
        body = bytearray(size)
        body[:buffered] = self.buf[self.pos :]
        self.buf.clear()
        self.pos = 0
        view = memoryview(body)
        got = buffered
        while got < size:
            got += self._recv(view[got:])
        view.release()
        return bytes(body)

    def _read_to_eof(self) -> bytes:
        while True:
            try:
                self._recv()
            except ConnectionError:
                break
        return self._take(len(self.buf) - self.pos)

    def _read_chunked(self) -> bytes:
        pieces: list[bytes] = []
        while True:
            size_line = self._read_until(b"\r\n", _MAX_HEAD_BYTES)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._read_until(b"\r\n", _MAX_HEAD_BYTES):  # trailers, up to an empty line
                    pass
                return b"".join(pieces)
            pieces.append(self._read_exact(size))
            if self._read_until(b"\r\n", 2) != b"":
                raise ValueError("chunk not followed by CRLF")


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
