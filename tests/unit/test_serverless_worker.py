"""The worker SDK's job loop against a loopback peer that speaks RunPod's worker protocol (spec §1.5-1.8),
optionally with Ember's piggy-back extension: a job-done POST carrying `take=N` may be answered with
up to N next jobs. The peer stands in for a third-party server (RunPod, or an Ember that ignores `take`);
the end-to-end tests run the same SDK against Ember's real control plane."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ember.serverless.env import WorkerEnv
from ember.serverless.transport import HttpTransport
from ember.serverless.worker import Worker, WorkerConfig


class Peer:
    """Queued jobs are handed out by job-take (or piggy-backed on job-done when `piggy_back`); results
    are recorded. An empty job-take (or job-stop) is held briefly, then answered 204."""

    def __init__(self, *, piggy_back: bool) -> None:
        self.piggy_back = piggy_back
        self.queue: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []  # (method, route, query)
        self.takes_with_job = 0
        self.fail_done: set[str] = set()  # job ids whose first job-done attempt gets a 503
        self.over_deliver = False  # job-take answers with every queued job, whatever was asked
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                peer.handle(self, b"")

            def do_POST(self) -> None:
                peer.handle(self, self.rfile.read(int(self.headers.get("Content-Length", "0"))))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{self.server.server_address[1]}/v2/ep"
        self.environ = {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=T",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=T",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=T",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=T",
            "RUNPOD_AI_API_KEY": "key",
            "RUNPOD_POD_ID": "wk-1",
        }

    def add_jobs(self, count: int, prefix: str = "job") -> list[str]:
        with self.lock:
            ids = [f"{prefix}-{len(self.queue) + i}" for i in range(count)]
            self.queue.extend({"id": job_id, "input": {"n": job_id}} for job_id in ids)
            self.changed.notify_all()
        return ids

    def wait_results(self, count: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while len(self.results) < count:
                assert self.changed.wait(max(0.0, deadline - time.monotonic())), self.results.keys()

    def done_posts(self) -> list[dict[str, list[str]]]:
        with self.lock:
            return [query for method, route, query in self.requests if route == "job-done"]

    def handle(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        parts = urlsplit(request.path)
        route = parts.path.split("/")[3]
        query = parse_qs(parts.query)
        status, answer = 200, b'{"status": "ok"}'
        with self.lock:
            self.requests.append((request.command, route, query))
            if route in ("job-take", "job-take-batch"):
                if not self.queue:
                    self.changed.wait(0.3)
                if self.queue and self.over_deliver:
                    self.takes_with_job += 1
                    answer = json.dumps(self.queue).encode()
                    self.queue = []
                elif self.queue:
                    self.takes_with_job += 1
                    answer = json.dumps(self.queue.pop(0)).encode()
                else:
                    status, answer = 204, b""
            elif route == "job-done":
                job_id = parts.path.split("/")[-1]
                if job_id in self.fail_done:
                    self.fail_done.discard(job_id)
                    status, answer = 503, b'{"error": "try again"}'
                else:
                    self.results.setdefault(job_id, json.loads(body))
                    take = int(query.get("take", ["0"])[0])
                    if self.piggy_back and take and self.queue:
                        jobs = [self.queue.pop(0) for _ in range(min(take, len(self.queue)))]
                        answer = json.dumps({"status": "ok", "jobs": jobs}).encode()
                self.changed.notify_all()
            elif route == "job-stop":
                self.changed.wait(0.3)
                status, answer = 204, b""
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(answer)))
        request.end_headers()
        request.wfile.write(answer)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Running:
    """A Worker serving on a thread; `stop()` drains it and returns its exit code."""

    def __init__(self, peer: Peer, config: dict[str, Any]) -> None:
        self.transport = HttpTransport("key", "ember-test")
        env = WorkerEnv.from_environ(peer.environ)
        self.worker = Worker(WorkerConfig.from_dict(config), env, self.transport, version="test")
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="worker-main")
        self.thread.start()

    def _run(self) -> None:
        self.code = self.worker.run()

    def stop(self) -> int | None:
        self.worker.stop_now("test over")
        self.thread.join(20)
        self.transport.close()
        return self.code


@pytest.fixture
def start() -> Iterator[Callable[..., tuple[Peer, Running]]]:
    started: list[tuple[Peer, Running]] = []

    def run(config: dict[str, Any], *, piggy_back: bool = True, jobs: int = 0) -> tuple[Peer, Running]:
        peer = Peer(piggy_back=piggy_back)
        peer.add_jobs(jobs)
        started.append((peer, Running(peer, config)))
        return started[-1]

    yield run
    for peer, running in started:
        if running.thread.is_alive():
            running.stop()
        running.transport.close()  # a worker that ended by itself leaves its pooled connections open
        peer.close()


def echo(job: dict[str, Any]) -> Any:
    return {"n": job["input"]["n"]}


def test_jobs_piggy_backed_on_results_need_no_job_take(start):
    peer, running = start({"handler": echo}, jobs=12)
    peer.wait_results(12)
    assert peer.takes_with_job == 1  # the first job; each later one came with the previous result
    assert all(peer.results[f"job-{i}"] == {"output": {"n": f"job-{i}"}} for i in range(12))
    assert all(query["take"] == ["1"] for query in peer.done_posts())
    assert running.stop() == 0


def test_a_server_that_ignores_take_serves_every_job_through_job_take(start):
    peer, running = start({"handler": echo}, piggy_back=False, jobs=5)
    peer.wait_results(5)
    assert peer.takes_with_job == 5
    assert sorted(peer.results) == [f"job-{i}" for i in range(5)]
    assert running.stop() == 0


def test_with_one_slot_jobs_run_on_the_take_loops_thread(start):
    threads: set[str] = set()

    def handler(job: dict[str, Any]) -> Any:
        threads.add(threading.current_thread().name)
        return 1

    peer, running = start({"handler": handler}, piggy_back=False, jobs=3)
    peer.wait_results(3)
    assert threads == {"worker-main"}  # no thread per job
    assert running.stop() == 0


def test_take_is_asked_on_the_first_attempt_only_never_on_a_retry(start):
    peer, running = start({"handler": echo})
    peer.fail_done.add("job-0")
    peer.add_jobs(2)
    peer.wait_results(2)
    assert [q.get("take") for q in peer.done_posts()] == [["1"], None, ["1"]]
    assert peer.takes_with_job == 2  # the retried result brought no job: job-1 came through job-take
    assert running.stop() == 0


def test_a_stopping_worker_asks_for_no_next_job_and_finishes_the_held_one(start):
    started, release = threading.Event(), threading.Event()

    def handler(job: dict[str, Any]) -> Any:
        started.set()
        release.wait(10)
        return "finished"

    peer, running = start({"handler": handler}, jobs=1)
    assert started.wait(10)
    peer.add_jobs(1, prefix="queued")
    running.worker.request_shutdown("test")
    release.set()
    running.thread.join(20)
    assert running.code == 0
    assert peer.results == {"job-0": {"output": "finished"}}
    assert [q.get("take") for q in peer.done_posts()] == [None]
    assert peer.queue == [{"id": "queued-0", "input": {"n": "queued-0"}}]  # never taken


def test_refresh_worker_asks_for_no_next_job(start):
    peer, running = start({"handler": echo, "refresh_worker": True}, jobs=2)
    running.thread.join(20)
    assert running.code == 0
    assert list(peer.results) == ["job-0"] and peer.results["job-0"]["stopPod"] is True
    assert [q.get("take") for q in peer.done_posts()] == [None]


def test_a_returned_refresh_worker_flag_asks_for_no_next_job_but_keeps_taking(start):
    def handler(job: dict[str, Any]) -> Any:
        return {"refresh_worker": True} if job["id"] == "job-0" else 1

    peer, running = start({"handler": handler}, jobs=2)
    peer.wait_results(2)
    assert [q.get("take") for q in peer.done_posts()] == [None, ["1"]]
    assert running.stop() == 0


def test_piggy_backed_jobs_keep_their_slot_under_a_concurrency_modifier(start):
    lock = threading.Lock()
    running_now = [0]
    most = [0]

    def handler(job: dict[str, Any]) -> Any:
        with lock:
            running_now[0] += 1
            most[0] = max(most[0], running_now[0])
        time.sleep(0.02)
        with lock:
            running_now[0] -= 1
        return 1

    peer, running = start({"handler": handler, "concurrency_modifier": lambda current: 3}, jobs=30)
    peer.wait_results(30)
    assert most[0] <= 3
    assert peer.takes_with_job < 30  # most jobs came piggy-backed
    assert running.stop() == 0


def test_a_lower_concurrency_drains_the_slots_instead_of_piggy_backing(start):
    lower, release = threading.Event(), threading.Event()
    lock = threading.Lock()
    running_now = [0]
    overlaps: list[int] = []

    def handler(job: dict[str, Any]) -> Any:
        with lock:
            running_now[0] += 1
            if job["id"].startswith("later") and running_now[0] > 1:
                overlaps.append(running_now[0])
        if job["id"].startswith("first"):
            release.wait(10)
        else:
            time.sleep(0.01)
        with lock:
            running_now[0] -= 1
        return 1

    peer, running = start({"handler": handler, "concurrency_modifier": lambda c: 1 if lower.is_set() else 3})
    peer.add_jobs(3, prefix="first")
    deadline = time.monotonic() + 10
    while running_now[0] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running_now[0] == 3
    peer.add_jobs(6, prefix="later")
    lower.set()
    time.sleep(1.3)  # the take loop re-checks the modifier at least once a second while slots are full
    release.set()
    peer.wait_results(9)
    firsts = peer.done_posts()[:3]
    assert all("take" not in q for q in firsts)
    assert not overlaps
    assert running.stop() == 0


def test_more_jobs_than_asked_for_run_one_after_another_in_the_one_slot(start):
    busy = threading.Lock()
    overlapped: list[str] = []

    def handler(job: dict[str, Any]) -> Any:
        if not busy.acquire(blocking=False):
            overlapped.append(job["id"])
            return 0
        time.sleep(0.01)
        busy.release()
        return 1

    peer, running = start({"handler": handler})
    peer.over_deliver = True
    peer.add_jobs(3)
    peer.wait_results(3)
    assert peer.takes_with_job == 1 and not overlapped
    assert running.stop() == 0
