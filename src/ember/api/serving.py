"""The HTTP protocol the control plane serves with: uvicorn's httptools protocol, with a response's
head and body sent in one write.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and the
body when it sends `http.response.body`: two `send()` calls, two TCP segments, and a client that wakes
for the head only to wait again for the body. On the job path that is half the socket writes of a job
(each one a system call and a wake-up of the process on the other end). `CoalescingTransport` holds a
head back until the next write of the same turn of the event loop and sends both as one; a head with no
body in that turn (a streamed response) goes out at the next turn, so nothing waits on it longer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class CoalescingTransport:
    """A transport that holds back a response head until the next write (or the next turn of the loop),
    and passes everything else to the transport it wraps."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._cancel_flush()
            self._transport.write(head + bytes(data))
            return
        if isinstance(data, bytes) and data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._head = data
            self._flush_handle = self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        self._flush_handle = None
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def close(self) -> None:
        self._cancel_flush()
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._cancel_flush()
        self._head = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`: `uvicorn.Config(http=HttpProtocol)`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
