"""Worker SDK overhead: Ember's `ember.serverless` beside RunPod's `runpod.serverless`, each as one worker
of the same Ember server, running a no-op handler with concurrency_modifier 1 and 8. Per configuration:
jobs/s over a bounded batch queued with /run before the worker starts, and the worker-side time per job
(the server's executionTime: job-take answered -> job-done received, median); then a cold import of
each SDK in fresh interpreters. Targets (issue): Ember >= 3x RunPod's jobs/s at concurrency 1; a cold
`import ember.serverless` under 60 ms."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

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
    ember_import = cold_import_ms("ember.serverless", IMPORT_RUNS)
    runpod_import = cold_import_ms("runpod", IMPORT_RUNS)
    bare = cold_import_ms("sys", IMPORT_RUNS)
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
    print_table("one worker, no-op handler, one Ember server (SQLite), jobs queued before the worker starts",
                rows)  # fmt: skip
    title = f"cold import in a fresh interpreter, median of {IMPORT_RUNS} (import alone; whole process)"
    print_table(title, [
        ("import ember.serverless", f"{ember_import[0]:.1f} ms; {ember_import[1]:.0f} ms (target < 60 ms)"),
        ("import runpod", f"{runpod_import[0]:.1f} ms; {runpod_import[1]:.0f} ms"),
        ("python -c pass (interpreter start-up alone)", f"{bare[1]:.0f} ms"),
    ])  # fmt: skip
    print(f"\nload average (1, 5, 15 min): before {load_before}; after {load_after}; {os.cpu_count()} CPUs")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
