"""The worker SDK's HTTP/1.1 client against a scripted loopback peer: answer framing (length, chunked,
read-to-close, interim 1xx), keep-alive reuse, resending on a connection the server had closed, cut
polls, and result posting with its retries."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ember.serverless.transport import HttpTransport, TransportFailure

CLOSE = b"<close>"  # a reply that closes the connection without answering
OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Peer:
    """A loopback server: each request (head and Content-Length body) goes to `reply(conn_no, request)`,
    whose bytes are sent back; CLOSE closes the connection unanswered, and a reply ending in CLOSE
    is sent and then the connection is closed. Requests are recorded as (connection no, bytes)."""

    def __init__(self, reply: Callable[[int, bytes], bytes]) -> None:
        self.reply = reply
        self.requests: list[tuple[int, bytes]] = []
        self.closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def targets(self) -> list[str]:
        return [req.split(b" ", 2)[1].decode() for _, req in self.requests]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            number = len(self._conns) - 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            self._answer(conn, number)
        except OSError:
            pass  # the client (or stop()) closed the connection

    def _answer(self, conn: socket.socket, number: int) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                request, buf = head + b"\r\n\r\n" + buf[:length], buf[length:]
                self.requests.append((number, request))
                answer = self.reply(number, request)
                if answer.endswith(CLOSE):
                    conn.sendall(answer[: -len(CLOSE)])
                    conn.shutdown(socket.SHUT_RDWR)
                    self.closed.set()
                    return
                conn.sendall(answer)

    def stop(self) -> None:
        self._listener.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, bytes], bytes]], Peer]]:
    peers: list[Peer] = []

    def start(reply: Callable[[int, bytes], bytes]) -> Peer:
        peers.append(Peer(reply))
        return peers[-1]

    yield start
    for peer in peers:
        peer.stop()


@pytest.fixture
def transport() -> Iterator[HttpTransport]:
    t = HttpTransport("raw-key", "ember-test/1")
    yield t
    t.close()


def answer(status: int, body: bytes = b"", *, extra: bytes = b"") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + extra + b"\r\n" + body


def test_a_get_carries_the_workers_headers_and_reads_a_length_framed_answer(serve, transport):
    peer = serve(lambda n, req: answer(200, b'{"id": "j"}'))
    resp = transport.request("GET", peer.url("/v2/ep/job-take/wk?gpu=x&job_in_progress=0"), timeout_s=5)
    assert (resp.status, resp.content_type, resp.body) == (200, "application/json", b'{"id": "j"}')
    head = peer.requests[0][1].decode()
    assert head.startswith("GET /v2/ep/job-take/wk?gpu=x&job_in_progress=0 HTTP/1.1\r\n")
    lines = head.split("\r\n")
    assert f"Host: 127.0.0.1:{peer.port}" in lines
    assert "Authorization: raw-key" in lines  # RunPod's raw key, no "Bearer"
    assert "User-Agent: ember-test/1" in lines
    assert not any(line.lower().startswith("content-length") for line in lines)


def test_a_post_sends_its_json_body_with_length_and_type(serve, transport):
    peer = serve(lambda n, req: answer(200, b"{}"))
    body = '{"output": "é"}'.encode()
    transport.request("POST", peer.url("/v2/ep/job-done/wk/j?isStream=false"), body, timeout_s=5)
    request = peer.requests[0][1]
    assert request.endswith(b"\r\n\r\n" + body)
    assert f"Content-Length: {len(body)}".encode() in request
    assert b"Content-Type: application/json" in request


def test_keep_alive_serves_many_requests_on_one_connection(serve, transport):
    peer = serve(lambda n, req: answer(200, b"{}"))
    for _ in range(5):
        assert transport.request("GET", peer.url("/ping"), timeout_s=5).status == 200
    assert {number for number, _ in peer.requests} == {0}


def test_a_chunked_answer_is_joined_and_the_connection_stays_usable(serve, transport):
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b'5;ext=1\r\n{"a":\r\n3\r\n 1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    peer = serve(lambda n, req: chunked)
    assert transport.request("GET", peer.url("/a"), timeout_s=5).body == b'{"a": 1}'
    assert transport.request("GET", peer.url("/b"), timeout_s=5).body == b'{"a": 1}'
    assert {number for number, _ in peer.requests} == {0}


def test_an_interim_100_answer_is_skipped(serve, transport):
    peer = serve(lambda n, req: b"HTTP/1.1 100 Continue\r\n\r\n" + answer(201, b"{}"))
    assert transport.request("POST", peer.url("/x"), b"{}", timeout_s=5).status == 201


def test_no_content_answers_have_no_body(serve, transport):
    peer = serve(lambda n, req: b"HTTP/1.1 204 No Content\r\n\r\n")
    assert transport.request("GET", peer.url("/x"), timeout_s=5).body == b""
    assert transport.request("GET", peer.url("/x"), timeout_s=5).status == 204
    assert {number for number, _ in peer.requests} == {0}


def test_an_answer_without_length_is_read_until_close_and_the_connection_is_not_reused(serve, transport):
    peer = serve(lambda n, req: b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it" + CLOSE)
    assert transport.request("GET", peer.url("/x"), timeout_s=5).body == b"all of it"
    assert transport.request("GET", peer.url("/x"), timeout_s=5).body == b"all of it"
    assert [number for number, _ in peer.requests] == [0, 1]


def test_connection_close_in_the_answer_is_honoured(serve, transport):
    peer = serve(lambda n, req: answer(200, b"{}", extra=b"Connection: close\r\n"))
    transport.request("GET", peer.url("/x"), timeout_s=5)
    transport.request("GET", peer.url("/x"), timeout_s=5)
    assert [number for number, _ in peer.requests] == [0, 1]


def test_an_idle_connection_the_server_closed_is_replaced_before_sending(serve, transport):
    peer = serve(lambda n, req: answer(200, b"{}") + CLOSE)  # closes without saying so
    transport.request("GET", peer.url("/first"), timeout_s=5)
    assert peer.closed.wait(5)
    time.sleep(0.05)
    transport.request("POST", peer.url("/done?take=1"), b"{}", timeout_s=5, resend_url=peer.url("/done"))
    # The close was seen before the request went out: sent once, in its first form, on a new connection.
    assert peer.targets() == ["/first", "/done?take=1"]
    assert [number for number, _ in peer.requests] == [0, 1]


def test_a_reused_connection_that_dies_unanswered_is_resent_once_to_the_resend_url(serve, transport):
    def reply(number: int, request: bytes) -> bytes:
        return CLOSE if request.startswith(b"POST") and number == 0 else answer(200, b"{}")

    peer = serve(reply)
    transport.request("GET", peer.url("/first"), timeout_s=5)
    resp = transport.request(
        "POST", peer.url("/done?take=1"), b"{}", timeout_s=5, resend_url=peer.url("/done")
    )
    assert resp.status == 200 and resp.resent
    assert peer.targets() == ["/first", "/done?take=1", "/done"]
    assert [number for number, _ in peer.requests] == [0, 0, 1]


def test_post_result_has_no_first_answer_when_the_first_form_was_resent(serve, transport):
    def reply(number: int, request: bytes) -> bytes:
        return CLOSE if b"take=1" in request else answer(200, b'{"status": "ok"}')

    peer = serve(reply)
    transport.request("GET", peer.url("/first"), timeout_s=5)
    delivery = transport.post_result(peer.url("/done"), b"{}", first_url=peer.url("/done?take=1"))
    assert delivery.delivered and delivery.first_answer is None
    assert peer.targets() == ["/first", "/done?take=1", "/done"]


def test_a_new_connection_that_dies_unanswered_is_a_failure_not_a_resend(serve, transport):
    peer = serve(lambda n, req: CLOSE)
    with pytest.raises(TransportFailure):
        transport.request("GET", peer.url("/x"), timeout_s=5)
    assert len(peer.requests) == 1


def test_no_answer_within_the_timeout_is_a_failure(serve, transport):
    peer = serve(lambda n, req: (time.sleep(1.0), answer(200))[1])
    began = time.monotonic()
    with pytest.raises(TransportFailure):
        transport.request("GET", peer.url("/x"), timeout_s=0.2)
    assert time.monotonic() - began < 0.9


def test_abort_polls_cuts_an_abortable_request_which_is_not_resent(serve, transport):
    release = threading.Event()

    def reply(number: int, request: bytes) -> bytes:
        if b"/poll" in request:
            release.wait(10)
        return answer(204)

    peer = serve(reply)
    transport.request("GET", peer.url("/warm"), timeout_s=5)  # the poll will reuse this connection
    errors: list[Exception] = []

    def poll() -> None:
        try:
            transport.request("GET", peer.url("/poll"), timeout_s=30, abortable=True)
        except TransportFailure as exc:
            errors.append(exc)

    poller = threading.Thread(target=poll)
    poller.start()
    deadline = time.monotonic() + 5
    while len(peer.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    transport.abort_polls()
    poller.join(5)
    release.set()
    assert not poller.is_alive() and len(errors) == 1
    assert peer.targets() == ["/warm", "/poll"]


def test_an_abortable_request_is_not_sent_once_its_unless_event_is_set(serve, transport):
    peer = serve(lambda n, req: answer(204))
    stopping = threading.Event()
    transport.request("GET", peer.url("/x"), timeout_s=5, abortable=True, unless=stopping)
    stopping.set()
    with pytest.raises(TransportFailure, match="not sent"):
        transport.request("GET", peer.url("/x"), timeout_s=5, abortable=True, unless=stopping)
    assert len(peer.requests) == 1


def test_post_result_returns_the_first_attempts_answer(serve, transport):
    peer = serve(lambda n, req: answer(200, b'{"status": "ok", "jobs": []}'))
    delivery = transport.post_result(peer.url("/done"), b"{}", first_url=peer.url("/done?take=1"))
    assert delivery.delivered and delivery.first_answer is not None
    assert delivery.first_answer.body == b'{"status": "ok", "jobs": []}'
    assert peer.targets() == ["/done?take=1"]


def test_post_result_retries_5xx_and_only_the_first_attempt_goes_to_the_first_url(serve, transport):
    statuses = iter([503, 502, 200])
    peer = serve(lambda n, req: answer(next(statuses), b"{}"))
    sleeps: list[float] = []
    retries: list[str] = []
    delivery = transport.post_result(
        peer.url("/done"),
        b"{}",
        first_url=peer.url("/done?take=1"),
        sleep=sleeps.append,
        on_retry=lambda detail, delay_s: retries.append(detail),
    )
    assert delivery.delivered and delivery.first_answer is None
    assert peer.targets() == ["/done?take=1", "/done", "/done"]
    assert sleeps == [0.2, 0.4] and len(retries) == 2


def test_post_result_does_not_retry_a_4xx(serve, transport):
    peer = serve(lambda n, req: answer(404, b'{"error": "no"}'))
    delivery = transport.post_result(peer.url("/done"), b"{}", sleep=lambda s: None)
    assert not delivery.delivered and "404" in delivery.detail
    assert len(peer.requests) == 1


def test_post_result_gives_up_after_its_retry_window(transport):
    refused = socket.create_server(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    sleeps: list[float] = []
    delivery = transport.post_result(f"http://127.0.0.1:{port}/done", b"{}", retry_s=1.0, sleep=sleeps.append)
    assert not delivery.delivered and sleeps  # retried, then gave up


@pytest.mark.parametrize("url", ["ftp://h/x", "http://", "http:///x", "http://h/a b", "h/x", "http://h/\r\n"])
def test_unusable_urls_are_transport_failures(transport, url):
    with pytest.raises(TransportFailure):
        transport.request("GET", url, timeout_s=1)


def test_a_key_with_a_line_break_is_refused():
    with pytest.raises(ValueError):
        HttpTransport("key\r\nX-Injected: 1", "ua")


def test_a_32_mib_answer_arrives_whole_and_the_connection_stays_usable(serve, transport):
    big = bytes(range(256)) * (32 * 1024 * 1024 // 256)
    peer = serve(lambda n, req: answer(200, big) if b"/big" in req else answer(200, b"{}"))
    resp = transport.request("GET", peer.url("/big"), timeout_s=30)
    assert len(resp.body) == len(big) and resp.body == big
    assert transport.request("GET", peer.url("/small"), timeout_s=5).body == b"{}"
    assert {n for n, _ in peer.requests} == {0}


def test_a_large_chunked_answer_in_many_chunks_is_joined_in_order(serve, transport):
    pieces = [bytes([i % 251]) * (256 * 1024 + i) for i in range(40)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    peer = serve(lambda n, req: head + chunked)
    assert transport.request("GET", peer.url("/c"), timeout_s=30).body == b"".join(pieces)


def test_a_server_that_trickles_its_answer_cannot_stretch_the_request_past_its_timeout(transport):
    """Each byte arrives well within the timeout, but the whole answer would take 20 s: the request's
    deadline ends it after its timeout_s, not after the last byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
            for _ in range(200):
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    began = time.monotonic()
    try:
        with pytest.raises(TransportFailure, match="time limit|timed out"):
            transport.request("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/t", timeout_s=0.6)
        assert time.monotonic() - began < 10  # the answer itself would have taken 20 s
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_post_result_tells_once_that_the_result_was_sent_before_its_held_answer_comes(serve, transport):
    release = threading.Event()
    told: list[int] = []  # how many requests the peer had when told

    def reply(number: int, request: bytes) -> bytes:
        if b"take=1" in request:
            assert release.wait(5)  # held, as a job-done asking for its next job is
            return CLOSE  # then dies unanswered: the result is resent, without `take`
        return answer(200, b'{"status": "ok"}')

    peer = serve(reply)
    transport.request("GET", peer.url("/first"), timeout_s=5)

    def sent() -> None:
        told.append(len(peer.requests))
        release.set()

    delivery = transport.post_result(
        peer.url("/done"), b"{}", first_url=peer.url("/done?take=1"), on_sent=sent
    )
    assert delivery.delivered
    assert peer.targets() == ["/first", "/done?take=1", "/done"]
    assert len(told) == 1  # once, for the first send, though it was sent twice
