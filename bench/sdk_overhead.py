"""Worker SDK overhead: Ember's `ember.serverless` beside RunPod's `runpod.serverless`, each as one worker
of the same Ember server, running a no-op handler with concurrency_modifier 1 and 8. Per configuration:
jobs/s over a bounded batch queued with /run before the worker starts, and the worker-side time per job
(the server's executionTime: job-take answered -> job-done received, median); then a cold import of
each SDK in fresh interpreters. A last row runs Ember's loop against a bare stdlib server, to show
what the SDK itself costs apart from the control plane. Targets (issue): Ember >= 3x RunPod's jobs/s
at concurrency 1; a cold `import ember.serverless` under 60 ms."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from _support import RawClient, handler_source, print_table, start_ember, wait_for

# RunPod's worker waits about a second between jobs at concurrency 1 (spec §3), so its batches are small.
JOBS = {
    ("ember", 1): int(os.environ.get("BENCH_SDK_JOBS", "1500")),
    ("ember", 8): int(os.environ.get("BENCH_SDK_JOBS", "1500")),
    ("runpod", 1): int(os.environ.get("BENCH_SDK_JOBS_RUNPOD_C1", "15")),
    ("runpod", 8): int(os.environ.get("BENCH_SDK_JOBS_RUNPOD_C8", "200")),
}
IMPORT_RUNS = int(os.environ.get("BENCH_IMPORT_RUNS", "10"))
FIXTURES = {1: "noop", 8: "noop_c8"}


@dataclass
class Result:
    sdk: str
    concurrency: int
    jobs: int
    jobs_per_s: float
    exec_p50_ms: float
    exec_p90_ms: float


def measure(server, sdk: str, concurrency: int, jobs: int) -> Result:  # type: ignore[no-untyped-def]
    """Queue `jobs` no-op jobs with no worker, start one worker, and time how fast it drains them."""
    name = f"{sdk}-c{concurrency}"
    ep = server.deploy(name, handler_source(FIXTURES[concurrency]), workersMin=0, workersMax=0,
                       idleTimeout=600, env={"EMBER_TEST_SDK": sdk})  # fmt: skip
    auth = {"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"}
    client = RawClient(server.port)
    body = json.dumps({"input": {}}).encode()
    submitted: dict[str, float] = {}
    for _ in range(jobs):
        status, data = client.request("POST", f"/v2/{ep['id']}/run", body, auth)
        if status != 200:
            raise SystemExit(f"/run answered {status}: {data[:200]!r}")
        submitted[json.loads(data)["id"]] = time.time()
    server.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"workersMin": 1, "workersMax": 1})

    def completed() -> bool:
        _, data = client.request("GET", f"/v2/{ep['id']}/health", b"", auth)
        return json.loads(data)["jobs"]["completed"] >= jobs

    wait_for(completed, 120 + jobs * 2.0, interval_s=0.2, what=f"{jobs} jobs on {name}")
    started, finished, exec_ms = [], [], []
    for job_id, at in submitted.items():
        _, data = client.request("GET", f"/v2/{ep['id']}/status/{job_id}", b"", auth)
        rec = json.loads(data)
        begin = at + rec["delayTime"] / 1000
        started.append(begin)
        finished.append(begin + rec["executionTime"] / 1000)
        exec_ms.append(float(rec["executionTime"]))
    client.close()
    server.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"workersMin": 0, "workersMax": 0})
    wait_for(lambda: not server.workers(ep["id"]), 60, what=f"{name} workers to stop")
    window_s = max(finished) - min(started)
    deciles = statistics.quantiles(exec_ms, n=10)
    return Result(sdk, concurrency, jobs, jobs / window_s, statistics.median(exec_ms), deciles[8])


def cold_import_ms(module: str, runs: int) -> tuple[float, float]:
    """Medians over fresh interpreters of (the `import module` statement, the whole `python -c` process
    including interpreter start-up)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    imports, processes = [], []
    for _ in range(runs):
        began = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        processes.append((time.perf_counter() - began) * 1000)
        imports.append(float(out.stdout.strip()) * 1000)
    return statistics.median(imports), statistics.median(processes)


class _BareProtocol(BaseHTTPRequestHandler):
    """A bare worker-protocol server: answers job-take at once with a fresh job (204 once `total` are
    out), records when each job went out and when its job-done came back."""

    protocol_version = "HTTP/1.1"
    total = 0
    issued: dict[str, float] = {}
    latencies_s: list[float] = []
    finished = threading.Event()

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802
        cls = type(self)
        if "/job-take/" not in self.path or len(cls.issued) >= cls.total:
            self.finished.wait(1.0)
            self._answer(204 if "/job-take/" in self.path else 200, b"")
            return
        job_id = f"job-{len(cls.issued)}"
        self._answer(200, json.dumps({"id": job_id, "input": {}}).encode())
        cls.issued[job_id] = time.perf_counter()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        at = time.perf_counter()
        self._answer(200, b"{}")
        cls = type(self)
        job_id = self.path.split("/job-done/bench/", 1)[-1].split("?", 1)[0]
        if job_id in cls.issued:
            cls.latencies_s.append(at - cls.issued[job_id])
            if len(cls.latencies_s) >= cls.total:
                cls.finished.set()


def ember_sdk_alone(jobs: int) -> tuple[float, float]:
    """Ember's worker loop in this process against the bare server: (jobs/s, median take-answered ->
    job-done-received in ms). What the SDK itself costs, without Ember's server in the way."""
    from ember.serverless import log
    from ember.serverless.env import WorkerEnv
    from ember.serverless.transport import HttpTransport
    from ember.serverless.worker import Worker, WorkerConfig

    log.configure({"RUNPOD_LOG_LEVEL": "WARN"})
    _BareProtocol.total = jobs
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BareProtocol)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/v2/bench"
    env = WorkerEnv.from_environ({
        "RUNPOD_WEBHOOK_GET_JOB": base + "/job-take/$ID?gpu=cpu",
        "RUNPOD_WEBHOOK_POST_OUTPUT": base + "/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
        "RUNPOD_POD_ID": "bench",
    })  # fmt: skip
    worker = Worker(WorkerConfig(handler=lambda job: {}), env, HttpTransport("", "bench"), version="bench")
    began = time.perf_counter()
    threading.Thread(target=worker.run, daemon=True).start()
    if not _BareProtocol.finished.wait(120):
        raise SystemExit("the bare-server run did not finish in 120 s")
    elapsed_s = time.perf_counter() - began
    worker.stop_now("bench done")
    server.shutdown()
    return jobs / elapsed_s, statistics.median(_BareProtocol.latencies_s) * 1000


BIG_ANSWER_BYTES = 32 * 1024 * 1024


def big_answer_read_ms(runs: int = 5) -> tuple[float, float]:
    """Median ms to read a 32 MiB answer: through the SDK's transport, and as raw `recv_into` on a socket
    (the baseline: the same bytes with no HTTP at all), from one loopback server in this process."""
    from ember.serverless.transport import HttpTransport

    body = b"x" * BIG_ANSWER_BYTES
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    listener = socket.create_server(("127.0.0.1", 0))

    def answer(conn: socket.socket) -> None:
        with conn:
            while conn.recv(65536):
                conn.sendall(head + body)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/big"
    transport = HttpTransport("", "bench")
    sdk_ms, raw_ms = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        got = transport.request("GET", url, timeout_s=60).body
        sdk_ms.append((time.perf_counter() - t0) * 1000)
        assert len(got) == len(body)
        with socket.create_connection(listener.getsockname()) as sock:
            buf = memoryview(bytearray(len(head) + len(body)))
            t0 = time.perf_counter()
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            n = 0
            while n < len(buf):
                n += sock.recv_into(buf[n:])
            raw_ms.append((time.perf_counter() - t0) * 1000)
    transport.close()
    listener.close()
    return statistics.median(sdk_ms), statistics.median(raw_ms)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    load_before = load_average()
    server = start_ember()
    results: dict[tuple[str, int], Result] = {}
    try:
        for concurrency in (1, 8):
            for sdk in ("ember", "runpod"):
                results[(sdk, concurrency)] = measure(server, sdk, concurrency, JOBS[(sdk, concurrency)])
    finally:
        server.stop()
        server.kill_workers()
    alone_rate, alone_ms = ember_sdk_alone(JOBS[("ember", 1)])
    ember_import = cold_import_ms("ember.serverless", IMPORT_RUNS)
    runpod_import = cold_import_ms("runpod", IMPORT_RUNS)
    bare = cold_import_ms("sys", IMPORT_RUNS)
    big_sdk_ms, big_raw_ms = big_answer_read_ms()
    load_after = load_average()

    rows = []
    for concurrency in (1, 8):
        e, r = results[("ember", concurrency)], results[("runpod", concurrency)]
        for res in (e, r):
            rows.append((
                f"{res.sdk} SDK, concurrency {concurrency} (n={res.jobs})",
                f"{res.jobs_per_s:8.1f} jobs/s   executionTime p50 {res.exec_p50_ms:.0f} ms, "
                f"p90 {res.exec_p90_ms:.0f} ms",
            ))  # fmt: skip
        rows.append(
            (f"ratio ember / runpod jobs/s, concurrency {concurrency}", f"{e.jobs_per_s / r.jobs_per_s:.1f}x")
        )
    rows.append(("target at concurrency 1", ">= 3x"))
    rows.append((
        "ember SDK alone, bare stdlib server, concurrency 1",
        f"{alone_rate:8.1f} jobs/s   take answered -> job-done received p50 {alone_ms:.2f} ms",
    ))  # fmt: skip
    print_table("one worker, no-op handler, one Ember server (SQLite), jobs queued before the worker starts",
                rows)  # fmt: skip
    title = f"cold import in a fresh interpreter, median of {IMPORT_RUNS} (import alone; whole process)"
    print_table(title, [
        ("import ember.serverless", f"{ember_import[0]:.1f} ms; {ember_import[1]:.0f} ms (target < 60 ms)"),
        ("import runpod", f"{runpod_import[0]:.1f} ms; {runpod_import[1]:.0f} ms"),
        ("python -c pass (interpreter start-up alone)", f"{bare[1]:.0f} ms"),
    ])  # fmt: skip
    print_table("a 32 MiB job answer read by the worker SDK's transport, median of 5", [
        ("ember.serverless transport", f"{big_sdk_ms:.1f} ms (target < 100 ms)"),
        ("raw recv_into on a socket (baseline)", f"{big_raw_ms:.1f} ms"),
        ("ratio transport / raw", f"{big_sdk_ms / big_raw_ms:.1f}x"),
    ])  # fmt: skip
    print(f"\nload average (1, 5, 15 min): before {load_before}; after {load_after}; {os.cpu_count()} CPUs")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
