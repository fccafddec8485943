"""The control plane's HTTP protocol (`ember.api.serving`): a response's head and body leave in one
write; a head whose body comes later (a stream) still leaves at once; uvicorn serves through it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ember.api.serving import CoalescingTransport, HttpProtocol


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
