"""Dispatch overhead: runsync latency (p50/p99 over sequential requests, one warm worker, no-op handler)
and end-to-end throughput (4 workers, 16 concurrent clients), each beside a bare uvicorn+Starlette JSON
echo measured in the same run. Targets (issue): runsync p50 <= 6x the echo round trip; >= 1,000 jobs/s."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from _support import (
    AsyncRawClient,
    EchoServer,
    RawClient,
    cpu_seconds,
    handler_source,
    print_table,
    start_ember,
    summary,
    wait_idle,
)

N_LATENCY = int(os.environ.get("BENCH_N", "2000"))
N_THROUGHPUT = int(os.environ.get("BENCH_JOBS", "6000"))
CLIENTS = 16


def sequential(port: int, path: str, headers: dict[str, str], n: int) -> list[float]:
    client = RawClient(port)
    body = json.dumps({"input": {"n": 1}}).encode()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, data = client.request("POST", path, body, headers)
        times.append(time.perf_counter() - t0)
        if status != 200 or b"COMPLETED" not in data:
            raise SystemExit(f"unexpected answer {status}: {data[:200]!r}")
    client.close()
    return times


async def concurrent(port: int, path: str, headers: dict[str, str], total: int, clients: int) -> float:
    body = json.dumps({"input": {"n": 1}}).encode()
    remaining = [total]

    async def one() -> None:
        c = await AsyncRawClient.open(port)
        while remaining[0] > 0:
            remaining[0] -= 1
            status, data = await c.request("POST", path, body, headers)
            if status != 200 or b"COMPLETED" not in data:
                raise SystemExit(f"unexpected answer {status}: {data[:200]!r}")
        c.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(clients))), timeout=300)
    return total / (time.perf_counter() - t0)


class Cpu:
    """CPU time the control plane and the endpoint's worker processes spend from now on."""

    def __init__(self, server: Any, endpoint_id: str) -> None:
        self.server_pids = [server.proc.pid]
        self.worker_pids = [server.worker_pid(w["id"]) for w in server.workers(endpoint_id)]
        self.start = (cpu_seconds(self.server_pids), cpu_seconds(self.worker_pids))

    def per_job(self, jobs: int) -> str:
        server = (cpu_seconds(self.server_pids) - self.start[0]) / jobs * 1000
        workers = (cpu_seconds(self.worker_pids) - self.start[1]) / jobs * 1000
        return f"{server:.2f} / {workers:.2f} ms"


def main() -> None:
    echo = EchoServer()
    try:
        sequential(echo.port, "/echo", {}, 200)
        echo_lat = summary(sequential(echo.port, "/echo", {}, N_LATENCY))
        echo_rps = asyncio.run(concurrent(echo.port, "/echo", {}, N_THROUGHPUT, CLIENTS))
    finally:
        echo.stop()

    server = start_ember()
    try:
        auth = {"Authorization": f"Bearer {server.admin_key}"}
        ep = server.deploy("noop", handler_source("noop"), workersMin=1, workersMax=1)
        wait_idle(server, ep["id"], 1)
        path = f"/v2/{ep['id']}/runsync"
        sequential(server.port, path, auth, 200)
        cpu = Cpu(server, ep["id"])
        ember_lat = summary(sequential(server.port, path, auth, N_LATENCY))
        seq_cpu = cpu.per_job(N_LATENCY)
        server.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"workersMin": 4, "workersMax": 4})
        wait_idle(server, ep["id"], 4)
        asyncio.run(concurrent(server.port, path, auth, 400, CLIENTS))
        cpu = Cpu(server, ep["id"])
        ember_rps = asyncio.run(concurrent(server.port, path, auth, N_THROUGHPUT, CLIENTS))
        conc_cpu = cpu.per_job(N_THROUGHPUT)
    finally:
        server.stop()
        server.kill_workers()

    ratio = ember_lat["p50_ms"] / echo_lat["p50_ms"]
    print_table(
        "runsync latency, one warm worker, no-op handler, sequential, raw keep-alive socket",
        [
            (
                f"echo baseline p50 / p99 (n={N_LATENCY})",
                f"{echo_lat['p50_ms']:.3f} / {echo_lat['p99_ms']:.3f} ms",
            ),
            (
                f"ember runsync p50 / p99 (n={N_LATENCY})",
                f"{ember_lat['p50_ms']:.3f} / {ember_lat['p99_ms']:.3f} ms",
            ),
            ("ratio p50 (target <= 6x, stretch 4x)", f"{ratio:.2f}x"),
            ("CPU per job: server / worker", seq_cpu),
        ],
    )
    print_table(
        f"throughput, 4 workers, {CLIENTS} concurrent clients, durable SQLite",
        [
            (f"echo baseline (n={N_THROUGHPUT})", f"{echo_rps:,.0f} req/s"),
            (f"ember runsync end to end (n={N_THROUGHPUT})", f"{ember_rps:,.0f} jobs/s"),
            ("ratio ember / echo", f"{ember_rps / echo_rps:.2f}"),
            ("CPU per job: server / workers", conc_cpu),
            ("target", ">= 1,000 jobs/s"),
        ],
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
