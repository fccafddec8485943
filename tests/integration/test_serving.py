"""The control plane's HTTP protocol (`ember.api.serving`): a response's head and body leave in one
write; a head whose body comes later (a stream) still leaves at once; uvicorn serves through it; fast
routes are answered from the connection as the ASGI stack answers them, in order with the others."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from ember.api.fastpath import App, FastRoutes, install
from ember.api.serving import ANSWER, CoalescingTransport, HttpProtocol, IdlePoll
from ember.core.errors import InvalidInput


class Recorder(asyncio.Transport):
    """An asyncio transport that keeps what is written to it, one entry per write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_head_and_its_body_leave_in_one_write() -> None:
    async def scenario() -> None:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(HEAD)
        assert raw.writes == []
        t.write(b"{}")
        assert raw.writes == [HEAD + b"{}"]
        await asyncio.sleep(0)  # the flush that was scheduled for the head does nothing more
        assert raw.writes == [HEAD + b"{}"]
        assert t.is_closing() is False  # everything else is the wrapped transport's

    asyncio.run(scenario())


def test_a_head_without_a_body_in_the_same_turn_leaves_at_the_next() -> None:
    async def scenario() -> None:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(HEAD)
        await asyncio.sleep(0)
        assert raw.writes == [HEAD]
        t.write(b"chunk")
        assert raw.writes == [HEAD, b"chunk"]

    asyncio.run(scenario())


def test_closing_sends_a_held_head_first() -> None:
    async def scenario() -> None:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        t.close()
        assert raw.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"] and raw.closed

    asyncio.run(scenario())


def test_other_writes_pass_straight_through() -> None:
    async def scenario() -> None:
        raw = Recorder()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 but not a head")
        t.write(b"body")
        assert raw.writes == [b"HTTP/1.1 but not a head", b"body"]

    asyncio.run(scenario())


async def _json(_: Request) -> Response:
    return JSONResponse({"ok": True})


async def _stream(_: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"{i}\n".encode()
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="text/plain")


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def _empty(_: Request) -> Response:
    return Response(status_code=204)


def test_uvicorn_serves_through_it() -> None:
    app = Starlette(
        routes=[
            Route("/json", _json),
            Route("/stream", _stream),
            Route("/echo", _echo, methods=["POST"]),
            Route("/empty", _empty),
        ]
    )

    async def scenario() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, http=HttpProtocol, log_level="warning", lifespan="off"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(3):  # keep-alive: each response ends where the next begins
                    assert (await client.get("/json")).json() == {"ok": True}
                    assert (await client.get("/empty")).status_code == 204
                got = []
                async with client.stream("GET", "/stream") as resp:
                    async for line in resp.aiter_lines():
                        got.append(line)
                assert got == ["0", "1", "2"]
                body = b"x" * (1 << 20)
                answer = await client.post("/echo", content=body, headers={"Expect": "100-continue"})
                assert answer.content == body
        finally:
            server.should_exit = True
            await serving

    asyncio.run(scenario())


# ---- fast routes served by the protocol itself ------------------------------------------------------

fast = FastRoutes("/v2/{name}", "test")
held: dict[str, asyncio.Event] = {}  # a route's "client gone" seen, by name


@fast.route("/echo", ["POST"], "Echo the body")
async def _fast_echo(request: Request) -> Response:
    body = await request.body()
    if body == b"boom":
        raise RuntimeError("boom")
    if body == b"bad":
        raise InvalidInput("bad body")
    name = request.path_params["name"]
    return Response(name.encode() + b":" + body, media_type="text/plain")


@fast.route("/hello", ["GET"], "Say hello")
async def _fast_hello(request: Request) -> Response:
    return Response(b"hello " + request.path_params["name"].encode(), media_type="text/plain")


@fast.route("/header", ["GET"], "Answer with the header the query names")
async def _fast_header(request: Request) -> Response:
    value = request.url.query.replace("%0D%0A", "\r\n")  # a value with a line break, when asked
    return Response(b"ok", media_type="text/plain", headers={"x-echo": value})


@fast.route("/hold", ["GET"], "Wait until the client hangs up")
async def _fast_hold(request: Request) -> Response:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    held.setdefault(request.path_params["name"], asyncio.Event()).set()
    return Response(status_code=204)


released: dict[str, asyncio.Event] = {}  # lets an early-answered route return, by name
early_sent: dict[str, tuple[bool, bool]] = {}  # what its two early answers returned, by name


@fast.route("/early", ["POST"], "Answer before returning")
async def _fast_early(request: Request) -> Response:
    name = request.path_params["name"]
    send = request.scope.get(ANSWER)
    if send is None:  # served by the ASGI stack: no early answer
        return Response(b"late " + name.encode(), media_type="text/plain")
    first = send(Response(b"early " + name.encode(), media_type="text/plain"))
    again = send(Response(b"again", media_type="text/plain"))
    early_sent[name] = (first, again)
    await released.setdefault(name, asyncio.Event()).wait()
    return Response(b"dropped", media_type="text/plain")


class CountingApp(App):
    """An `App` that counts the requests that reach it through ASGI, by path."""

    asgi_paths: list[str]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.asgi_paths.append(scope["path"])
        await super().__call__(scope, receive, send)


def _app() -> CountingApp:
    app = CountingApp()
    app.asgi_paths = []
    app.add_api_route("/slow/{name}", _slow, methods=["GET"])
    install(app, fast)
    return app


async def _slow(name: str) -> dict[str, str]:
    return {"slow": name}


class Served:
    """A uvicorn server on `_app()` with `HttpProtocol`, and raw connections to it."""

    def __init__(self, server: uvicorn.Server, port: int, app: CountingApp) -> None:
        self.server = server
        self.port = port
        self.app = app

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def _serving() -> AsyncIterator[Served]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = _app()
    config = uvicorn.Config(app, http=HttpProtocol, log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield Served(server, sock.getsockname()[1], app)
    finally:
        server.should_exit = True
        await task


async def _answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path.encode(),
        len(body),
        extra,
        body,
    )


def test_a_fast_route_is_answered_from_the_connection_as_the_asgi_stack_answers_it() -> None:
    async def scenario() -> None:
        async with _serving() as served:
            reader, writer = await served.connect()
            for i in range(3):  # keep-alive
                writer.write(_post("/v2/ada/echo", b"hi%d" % i))
                status, headers, body = await _answer(reader)
                assert status == b"HTTP/1.1 200 OK" and body == b"ada:hi%d" % i
                assert headers[b"content-type"].startswith(b"text/plain") and b"date" in headers
            # The same route through the ASGI stack (an in-process client) answers alike.
            transport = httpx.ASGITransport(app=_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                assert (await client.post("/v2/ada/echo", content=b"hi0")).content == b"ada:hi0"
            # A route's errors: a bad request's 4xx, a bug's bare 500; the connection stays usable.
            writer.write(_post("/v2/ada/echo", b"bad"))
            status, _, body = await _answer(reader)
            assert status.startswith(b"HTTP/1.1 400") and b"bad body" in body
            writer.write(_post("/v2/ada/echo", b"boom"))
            status, _, body = await _answer(reader)
            assert status.startswith(b"HTTP/1.1 500") and b"internal" in body
            # HEAD (uvicorn's): the head alone, and the connection goes on where it ends.
            writer.write(b"HEAD /v2/eve/hello HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 9" in head
            writer.write(b"GET /v2/eve/hello HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await _answer(reader))[2] == b"hello eve"
            writer.write(b"GET /slow/bob HTTP/1.1\r\nhost: x\r\n\r\n")  # the full stack, same connection
            status, _, body = await _answer(reader)
            assert status == b"HTTP/1.1 200 OK" and body == b'{"slow":"bob"}'
            assert served.app.asgi_paths == ["/v2/eve/hello", "/slow/bob"]  # the HEAD and the slow route
            writer.close()

    asyncio.run(scenario())


def test_a_body_that_comes_after_its_head_and_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> None:
        async with _serving() as served:
            reader, writer = await served.connect()
            request = _post("/v2/ada/echo", b"x" * 1000)
            writer.write(request[:-400])  # the head and part of the body
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(request[-400:])
            _, _, body = await _answer(reader)
            assert body == b"ada:" + b"x" * 1000
            # Three at once, a slow route among them: answered in the order they were sent.
            writer.write(
                _post("/v2/a/echo", b"1")
                + b"GET /slow/b HTTP/1.1\r\nhost: x\r\n\r\n"
                + _post("/v2/c/echo", b"3")
            )
            answers = [(await _answer(reader))[2] for _ in range(3)]
            assert answers == [b"a:1", b'{"slow":"b"}', b"c:3"]
            # Connection: close is honoured (uvicorn serves such a request).
            writer.write(_post("/v2/d/echo", b"4", b"connection: close\r\n"))
            _, headers, body = await _answer(reader)
            assert body == b"d:4" and headers[b"connection"] == b"close"
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            # uvicorn served the body that came late, the request sent behind another, and the close.
            assert served.app.asgi_paths == ["/v2/ada/echo", "/slow/b", "/v2/c/echo", "/v2/d/echo"]

    asyncio.run(scenario())


def test_a_held_fast_route_hears_its_client_hang_up() -> None:
    async def scenario() -> None:
        async with _serving() as served:
            held["carl"] = asyncio.Event()
            reader, writer = await served.connect()
            writer.write(b"GET /v2/carl/hold HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)
            assert not held["carl"].is_set()
            writer.close()
            await asyncio.wait_for(held["carl"].wait(), 10)

    asyncio.run(scenario())


def test_a_fast_route_may_answer_before_it_returns_and_the_connection_moves_on_at_once() -> None:
    async def scenario() -> None:
        async with _serving() as served:
            released["ann"] = asyncio.Event()
            reader, writer = await served.connect()
            writer.write(_post("/v2/ann/early", b""))
            status, _, body = await _answer(reader)
            assert status == b"HTTP/1.1 200 OK" and body == b"early ann"
            assert early_sent["ann"] == (True, False)  # once only
            # The request is complete: the next one on the connection is served while the route runs.
            writer.write(b"GET /v2/bob/hello HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await _answer(reader))[2] == b"hello bob"
            released["ann"].set()  # what the route returns now is dropped
            await asyncio.sleep(0.05)
            writer.write(b"GET /v2/cy/hello HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await _answer(reader))[2] == b"hello cy"
            assert served.app.asgi_paths == []  # all served from the connection
            # A client that leaves after its early answer, while its route still runs: the server goes on.
            released["dee"] = asyncio.Event()
            gone_reader, gone_writer = await served.connect()
            gone_writer.write(_post("/v2/dee/early", b""))
            assert (await _answer(gone_reader))[2] == b"early dee"
            gone_writer.close()
            released["dee"].set()
            writer.write(b"GET /v2/eve/hello HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await _answer(reader))[2] == b"hello eve"
            writer.close()
            # Through the ASGI stack the route has no early answer and returns its own.
            transport = httpx.ASGITransport(app=_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                assert (await client.post("/v2/fay/early")).content == b"late fay"

    asyncio.run(scenario())


def test_a_fast_route_is_found_by_its_whole_segments_as_starlettes_route_matches_it() -> None:
    app = _app()
    found = app.lane_for("POST", "/v2/ada/echo")
    assert found is not None and found[0].template == "/v2/{name}/echo" and found[1] == {"name": "ada"}
    assert app.lane_for("GET", "/v2/ada/echo") is None  # another method: the full stack answers 405
    for path in ("/v2//echo", "/v2/ada/echo/", "/v2/ada/b/echo", "/v3/ada/echo", "/v2/ada/echoes", "/"):
        assert app.lane_for("POST", path) is None, path
    # Starlette's own matching of the routes agrees, path by path.
    for path in (
        "/v2/ada/echo",
        "/v2/bob/hello",
        "/v2//echo",
        "/v2/ada/echo/",
        "/v2/a/b/hello",
        "/v2/x/hold",
    ):
        for method in ("GET", "POST"):
            starlette = next(
                (
                    (r.path, child["path_params"])
                    for r in fast.routes
                    for match, child in [r.matches({"type": "http", "path": path, "method": method})]
                    if match is Match.FULL
                ),
                None,
            )
            ours = app.lane_for(method, path)
            got = (ours[0].template, ours[1]) if ours else None
            assert got == starlette, (method, path)


# ---- polling after an answer --------------------------------------------------------------------------


def test_the_loop_polls_for_a_while_after_an_answer_and_stops_polling_when_it_does_not_pay() -> None:
    async def scenario() -> None:
        async with _serving() as served:
            poll = served.app.idle_poll = IdlePoll(0.002)
            reader, writer = await served.connect()  # a connection made now finds the poller
            writer.write(_post("/v2/ada/echo", b"hi"))
            assert (await _answer(reader))[2] == b"ada:hi"
            assert poll.polling  # the answer started it: a callback is due at each turn of the loop
            await asyncio.sleep(0.02)
            assert not poll.polling  # the window passed: the loop may sleep again
            # Answers whose next request comes long after (here 20 ms, ten times the window): the
            # window halves each time, down to none.
            for i in range(5):
                writer.write(_post("/v2/ada/echo", b"%d" % i))
                await _answer(reader)
                await asyncio.sleep(0.02)
            assert poll.window_s == 0.0
            writer.write(_post("/v2/ada/echo", b"x"))
            await _answer(reader)
            assert not poll.polling  # no window: no polling after this answer
            # Requests that follow their answers at once: the window grows back to the longest.
            for i in range(5):
                writer.write(_post("/v2/ada/echo", b"%d" % i))
                await _answer(reader)
            assert poll.window_s == 0.002
            writer.close()

    asyncio.run(scenario())


def test_a_fast_routes_header_with_a_line_break_is_refused_every_time_and_good_ones_pass() -> None:
    async def scenario() -> None:
        async with _serving() as served:
            for _ in range(2):  # a header found bad is not remembered as checked
                reader, writer = await served.connect()
                writer.write(b"GET /v2/ada/header?a%0D%0Aset-cookie:x HTTP/1.1\r\nhost: x\r\n\r\n")
                assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing sent
                writer.close()
            reader, writer = await served.connect()
            for _ in range(2):  # a good one, checked once, then known
                writer.write(b"GET /v2/ada/header?fine HTTP/1.1\r\nhost: x\r\n\r\n")
                status, headers, body = await _answer(reader)
                assert status == b"HTTP/1.1 200 OK" and headers[b"x-echo"] == b"fine" and body == b"ok"
            writer.close()

    asyncio.run(scenario())
