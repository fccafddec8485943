"""One keep-alive HTTP/1.1 connection to the control plane: send a request's bytes, parse the answer.

The minimal response parser that `transport.HttpTransport` relies on (status line, `Content-Length` or
chunked body, `Content-Type`, `Connection`); see that module for why it is not `http.client`. It knows
nothing of pools, retries or URLs, and never decides what a status code means.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl import SSLContext

_MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 64 * 1024
_DROPPED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
# How much longer than a request's time left one wait on its socket may be: a socket's timeout is set
# again (a system call) only when the time left is shorter than it by more than this.
_SLACK_S = 0.25


class ClosedEarly(Exception):
    """The connection ended before any byte of the answer: on a reused connection, resend."""


class Connection:
    """One keep-alive socket and what was read of it past the last answer (normally nothing).

    Bytes read and not yet used are `buf[pos:]`: taking an answer's bytes moves `pos` instead of copying
    what is left, and a body larger than what is buffered is read straight into a buffer of its size,
    so reading an answer costs time in proportion to its size (a 32 MiB answer in milliseconds).

    Every request has a deadline (`begin`): each wait on the socket is given only the time left (at
    most `_SLACK_S` more), so a server that trickles bytes can't stretch a request past its `timeout_s`.
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
    def open(
        cls, name: str, port: int, timeout_s: float, tls_context: Callable[[], SSLContext] | None
    ) -> Connection:
        """Connect to `name:port`, over TLS when given a (lazily made) `tls_context`."""
        sock = socket.create_connection((name, port), timeout=timeout_s)
        try:
            # Small RPCs want TCP_NODELAY: no waiting for the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls_context is not None:
                sock = tls_context().wrap_socket(sock, server_hostname=name)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout_s, tls_context is not None)

    def begin(self, timeout_s: float) -> None:
        """Start a request that must be answered within `timeout_s`."""
        self.deadline = time.monotonic() + timeout_s
        self._wait_at_most(timeout_s)

    def _wait_at_most(self, timeout_s: float) -> None:
        if timeout_s != self.timeout_s:
            self.sock.settimeout(timeout_s)
            self.timeout_s = timeout_s

    def _time_left(self) -> None:
        """Give the next socket wait what is left of the request's time (give or take `_SLACK_S`, so that
        a quick answer costs no system call to shorten it); TimeoutError when none is left."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete answer within the request's time limit")
        if left < self.timeout_s - _SLACK_S:
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
            raise ClosedEarly(repr(exc)) from exc

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
                raise ClosedEarly(repr(exc)) from exc
            raise
        if not got:
            if first and self.pos == len(self.buf):
                raise ClosedEarly("no answer")
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
