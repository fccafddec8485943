"""The HTTP protocol the control plane serves with: uvicorn's httptools protocol, with the job path's
requests served straight from the connection, and every response's head and body sent in one write.

uvicorn turns each request into an ASGI exchange: a request-response cycle with its event, a task that
runs the app through its middleware, and `send` messages it checks header by header. On the job path
that is most of a request's cost. `HttpProtocol` serves a fast route's request (`api.fastpath`) itself
when the whole request is in hand: it runs the route with a `Request` on uvicorn's own scope and writes
the route's `Response` in one write. Anything else is uvicorn's as before: other routes, a request whose
body has not all arrived with its head (it is handed to uvicorn with what came), one sent while another
is still being answered (uvicorn queues it), HTTP/1.0, HEAD, `Connection: close`, `Expect: 100-continue`,
an upgrade, a `root_path`, a concurrency limit, an access log. uvicorn's keep-alive, pipelining and
shutdown handling see a served request as one of their own cycles (`_Served`).

A route served so may answer before it returns (`ANSWER` in its scope: a call that sends a `Response`
now, from whatever code holds it): a job handed to a held job-take, or a result handed to a waiting
runsync, is written by the code that hands it over, in that same turn of the loop, instead of waking the
route's task to unwind and write it a turn later. The request is complete then (a next request on the
connection is served at once); what the route returns afterwards is dropped.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and the
body when it sends `http.response.body`: two `send()` calls, two TCP segments, and a client that wakes
for the head only to wait again for the body. `CoalescingTransport` holds a head back until the next
write of the same turn of the event loop and sends both as one; a head with no body in that turn (a
streamed response) goes out at the next turn, so nothing waits on it longer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import httptools
from starlette.responses import Response
from starlette.types import Message
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
)

from ember.core.idle_poll import next_window

if TYPE_CHECKING:
    from ember.api.fastpath import App, Lane

log = logging.getLogger("ember.api")
# The scope key of a request's whole body when it was all in hand before the route ran (`api.deps`
# reads it there instead of waiting for it, with a deadline, as it must for a body still coming).
WHOLE_BODY = "ember.whole_body"
# The scope key of a served request's early answer: `answer(response) -> bool`, True when it was sent
# (False when the request was answered already or its client is gone). Only requests this protocol
# serves itself have one.
ANSWER = "ember.answer"
# Headers already found valid (the job path's few: its content types and lengths), so that each is
# matched against uvicorn's patterns once, not in every response.
_CHECKED_HEADERS: set[tuple[bytes, bytes]] = set()
_CHECKED_HEADERS_MAX = 4096
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

    def is_closing(self) -> bool:  # uvicorn asks after every response: not through `__getattr__`
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class IdlePoll:
    """Keeps an event loop polling (a callback due at each turn, so that it never waits in `epoll`) for
    a while after each answer, the window set by `core.idle_poll` from how soon the next event came.
    `answered` is called as a request is answered, `woke` as data comes in on any connection."""

    def __init__(self, longest_s: float) -> None:
        self.longest_s = max(0.0, longest_s)
        self.window_s = self.longest_s
        self.polling = False
        self._until = 0.0
        self._answered_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def answered(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.perf_counter()
        self._answered_at = now
        if self.window_s <= 0:
            return
        self._until = now + self.window_s
        if not self.polling or self._loop is not loop:
            self.polling, self._loop = True, loop
            loop.call_soon(self._turn, loop)

    def woke(self) -> None:
        at = self._answered_at
        if at is not None:
            self._answered_at = None
            self.window_s = next_window(self.window_s, time.perf_counter() - at, self.longest_s)

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is self._loop and time.perf_counter() < self._until:
            loop.call_soon(self._turn, loop)
        elif loop is self._loop:
            self.polling = False


class _Served:
    """A request `HttpProtocol` serves itself, as uvicorn's connection handling sees it (the attributes
    its `connection_lost`, `shutdown` and pipelining read and set), and its ASGI `receive`."""

    __slots__ = (
        "body",
        "response_complete",
        "disconnected",
        "keep_alive",
        "message_event",
        "answered",
        "_waiters",
    )

    def __init__(self, body: bytes) -> None:
        self.body: bytes | None = body
        self.response_complete = False
        self.answered: Response | None = None  # sent before the route returned (`ANSWER`)
        self.disconnected = False
        self.keep_alive = True  # uvicorn's shutdown clears it: the connection closes after the answer
        self.message_event = self  # uvicorn calls `cycle.message_event.set()` when the connection ends
        self._waiters: list[asyncio.Future[None]] = []

    def set(self) -> None:
        """The connection ended or the answer was sent: a `receive` waiting now says "disconnect"."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def receive(self) -> Message:
        """The body, once; then "disconnect" when the client hangs up or the answer has been sent (as
        uvicorn's `receive` does)."""
        body = self.body
        if body is not None:
            self.body = None
            return {"type": "http.request", "body": body, "more_body": False}
        if not (self.disconnected or self.response_complete):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        return {"type": "http.disconnect"}


class _Pending:
    """A fast route's request whose head has been read: served once its body is complete."""

    __slots__ = ("lane", "params", "body")

    def __init__(self, lane: Lane, params: dict[str, str]) -> None:
        self.lane = lane
        self.params = params
        self.body = bytearray()


def _lane_server(app: Any) -> App | None:
    """The `fastpath.App` inside uvicorn's wrappers of it (proxy headers, message logger), if any."""
    from ember.api.fastpath import App

    for _ in range(8):
        if isinstance(app, App):
            return app
        app = getattr(app, "app", None)
    return None


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`, serving fast routes itself (see the
    module): `uvicorn.Config(http=HttpProtocol)`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lanes = _lane_server(self.app)
        self._idle_poll = self._lanes.idle_poll if self._lanes is not None else None
        self._pending: _Pending | None = None
        self._served: _Served | None = None  # being answered

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        served = self._served
        # A request queued behind it (uvicorn's) is `self.cycle` now: tell this one too.
        if served is not None and served is not cast(object, self.cycle):
            served.disconnected = not served.response_complete
            served.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._idle_poll is not None:
            self._idle_poll.woke()
        super().data_received(data)
        pending = self._pending
        if pending is not None:
            # Its body did not all come with its head: uvicorn serves it, reading the rest as it comes
            # (and timing it out as for any other request).
            self._pending = None
            if not self.transport.is_closing():
                super().on_headers_complete()
                if pending.body:
                    super().on_body(bytes(pending.body))

    def on_headers_complete(self) -> None:
        if not self._take_over():
            super().on_headers_complete()

    def _take_over(self) -> bool:
        """Whether this request is a fast route's that this protocol serves (then `_pending`)."""
        app = self._lanes
        if (
            app is None
            or self.expect_100_continue
            or self.access_log
            or self.root_path
            or self.limit_concurrency is not None
            or (self.cycle is not None and not self.cycle.response_complete)
        ):
            return False
        parser = self.parser
        if parser.get_http_version() != "1.1" or not parser.should_keep_alive() or parser.should_upgrade():
            return False
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        if b"%" in raw_path:
            return False
        method = parser.get_method().decode("ascii")
        if method == "HEAD":  # uvicorn's cycle leaves the body out
            return False
        path = raw_path.decode("ascii")
        found = app.lane_for(method, path)
        if found is None:
            return False
        scope = self.scope
        scope["method"] = method
        scope["path"] = path
        scope["raw_path"] = raw_path
        scope["query_string"] = url.query or b""
        self._pending = _Pending(*found)
        return True

    def on_body(self, body: bytes) -> None:
        if self._pending is not None:
            self._pending.body += body
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        pending = self._pending
        if pending is None:
            super().on_message_complete()
            return
        self._pending = None
        served = _Served(bytes(pending.body))
        scope = self.scope
        scope[WHOLE_BODY] = served.body  # type: ignore[literal-required]
        started = time.perf_counter()

        def answer(response: Response) -> bool:
            if served.answered is not None or served.response_complete or served.disconnected:
                return False
            served.answered = response
            self.transport.write(self._encode(response, served.keep_alive))
            self._complete(served, response, pending.lane, scope, started)
            return True

        scope[ANSWER] = answer  # type: ignore[literal-required]
        self.cycle = served  # type: ignore[assignment]
        self._served = served
        task = self.loop.create_task(self._serve(served, pending.lane, pending.params, scope, started))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _serve(
        self, served: _Served, lane: Lane, params: dict[str, str], scope: Any, started: float
    ) -> None:
        app = self._lanes
        assert app is not None
        response: Response | None = None
        try:
            response = await app.respond(lane, params, scope, served.receive)
            if served.answered is None and not served.disconnected:
                self.transport.write(self._encode(response, served.keep_alive))
        except Exception:
            log.exception("error while answering %s %s", scope["method"], scope["path"])
            response = None
        finally:
            if served.answered is None:
                self._complete(served, response, lane, scope, started)

    def _complete(
        self, served: _Served, response: Response | None, lane: Lane, scope: Any, started: float
    ) -> None:
        """The request is answered (`response`, or None: it failed): the connection moves on to the
        next request, or closes."""
        served.response_complete = True
        served.set()
        if self._idle_poll is not None:
            self._idle_poll.answered(self.loop)
        if self._served is served:
            self._served = None
        if response is None or not served.keep_alive:
            self.transport.close()
        if response is not None:
            assert self._lanes is not None
            self._lanes.observed(scope["method"], lane, response.status_code, started)
            if not served.disconnected:
                self.on_response_complete()

    def _encode(self, response: Response, keep_alive: bool) -> bytes:
        """The response, head and body, as it goes on the wire (the route's headers checked as uvicorn
        checks them; the server's own, `date` and `server`, are uvicorn's)."""
        body = response.body
        if not isinstance(body, bytes) or response.background is not None:
            raise TypeError(f"a fast route must answer with a plain Response, not {type(response).__name__}")
        parts = [STATUS_LINE[response.status_code]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        checked = _CHECKED_HEADERS
        for name, value in response.raw_headers:
            header = (name, value)
            if header not in checked:
                if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header.")
                if len(checked) >= _CHECKED_HEADERS_MAX:
                    checked.clear()
                checked.add(header)
            parts += (name, b": ", value, b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)
