"""Dispatch overhead: runsync latency (p50/p99 over sequential requests, one warm worker, no-op handler)
and end-to-end throughput (4 workers, 16 concurrent clients), each beside a bare uvicorn+Starlette JSON
echo measured in the same run. Targets: runsync p50 <= 4x the echo round trip; >= 2,000 jobs/s; <= 0.6 ms
of the control plane's CPU per job.

Both servers run side by side and are measured in alternating rounds, so that a change in the machine's
speed during the run (it is shared, and virtual) weighs on both sides alike.

Options (environment): BENCH_CALLGRIND=0 skips the instruction count; BENCH_PROFILE=N samples the
control plane with py-spy (when installed) over N more sequential jobs and prints where its time goes,
by function, inclusive and self."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
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
ROUNDS = 5


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
    """CPU time the control plane and the endpoint's worker processes spend between `resume` and
    `pause` calls."""

    def __init__(self, server: Any, endpoint_id: str) -> None:
        self.server_pids = [server.proc.pid]
        self.worker_pids = [server.worker_pid(w["id"]) for w in server.workers(endpoint_id)]
        self.spent = [0.0, 0.0]
        self._at = (0.0, 0.0)

    def _now(self) -> tuple[float, float]:
        return cpu_seconds(self.server_pids), cpu_seconds(self.worker_pids)

    def resume(self) -> None:
        self._at = self._now()

    def pause(self) -> None:
        now = self._now()
        self.spent = [self.spent[0] + now[0] - self._at[0], self.spent[1] + now[1] - self._at[1]]

    def per_job(self, jobs: int) -> str:
        return f"{self.spent[0] / jobs * 1000:.2f} / {self.spent[1] / jobs * 1000:.2f} ms"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def callgrind_per_job(jobs: int) -> tuple[float, float] | None:
    """Instructions the control plane executes per sequential runsync job, counted by valgrind's
    callgrind (the same count on any machine of the architecture, whatever else it is doing): the server
    runs under callgrind with counting off, is warmed up, then counts over `jobs` jobs. Also the count
    for as many echo requests, the baseline. None when valgrind is missing."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        return None
    out = Path(tempfile.mkdtemp(prefix="ember-callgrind-"))
    wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p"]
    counts = []
    for target in ("echo", "ember"):
        if target == "echo":
            srv: Any = EchoServer(wrap=wrap, up_timeout_s=300)
            path, headers, pid = "/echo", {}, srv.proc.pid
        else:
            # The loops that run on a timer (lifecycle, meter, worker pings) slowed right down, so that
            # what is counted is the jobs' work and not how long callgrind made them take.
            quiet = {
                "EMBER_TICK_S": "30",
                "EMBER_METER_INTERVAL_S": "600",
                "EMBER_PING_INTERVAL_MS": "60000",
                "EMBER_PING_TIMEOUT_S": "600",
            }
            srv = start_ember(quiet, wrap=wrap, up_timeout_s=600)
            ep = srv.deploy("noop", handler_source("noop"), workersMin=1, workersMax=1)
            wait_idle(srv, ep["id"], 1, timeout_s=300)
            path, headers = f"/v2/{ep['id']}/runsync", {"Authorization": f"Bearer {srv.admin_key}"}
            pid = srv.proc.pid
        try:
            sequential(srv.port, path, headers, 50)
            subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
            sequential(srv.port, path, headers, jobs)
            subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
        finally:
            srv.stop()
            if target == "ember":
                srv.kill_workers()
        total = 0
        for dump in out.glob(f"cg.{pid}*"):
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    total = max(total, int(line.split()[1]))
        counts.append(total / jobs)
    shutil.rmtree(out, ignore_errors=True)
    return counts[0], counts[1]


def profile(server: Any, path: str, headers: dict[str, str], jobs: int, top: int = 30) -> None:
    """Sample the control plane with py-spy over `jobs` sequential runsync jobs; print the functions that
    hold the most samples, inclusive (anywhere on the stack) and self (on top)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("\nprofile: py-spy is not installed (pip install py-spy)")
        return
    out = Path(tempfile.mkdtemp(prefix="ember-pyspy-")) / "stacks.txt"
    cmd = [
        spy,
        "record",
        "-r",
        "1000",
        "-f",
        "raw",
        "-o",
        str(out),
        "-p",
        str(server.proc.pid),
        "--nonblocking",
    ]
    recorder = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    sequential(server.port, path, headers, jobs)
    recorder.send_signal(signal.SIGINT)
    recorder.wait(timeout=60)
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    shutil.rmtree(out.parent, ignore_errors=True)
    if not total:
        print("\nprofile: no samples (py-spy needs ptrace rights over the server)")
        return
    for title, counts in (("inclusive", inclusive), ("self", own)):
        print(f"\nprofile of the control plane over {jobs} jobs, {total} samples, {title}")
        for frame, n in counts.most_common(top):
            print(f"  {n / total * 100:5.1f}%  {frame}")


def main() -> None:
    if os.environ.get("BENCH_CALLGRIND", "1") != "0":
        counted = callgrind_per_job(int(os.environ.get("BENCH_CALLGRIND_JOBS", "300")))
    else:
        counted = None
    echo = EchoServer()
    server = start_ember()
    try:
        auth = {"Authorization": f"Bearer {server.admin_key}"}
        ep = server.deploy("noop", handler_source("noop"), workersMin=1, workersMax=1)
        wait_idle(server, ep["id"], 1)
        path = f"/v2/{ep['id']}/runsync"
        sequential(echo.port, "/echo", {}, 200)
        sequential(server.port, path, auth, 200)
        echo_times: list[float] = []
        ember_times: list[float] = []
        cpu = Cpu(server, ep["id"])
        for _ in range(ROUNDS):
            echo_times += sequential(echo.port, "/echo", {}, N_LATENCY // ROUNDS)
            cpu.resume()
            ember_times += sequential(server.port, path, auth, N_LATENCY // ROUNDS)
            cpu.pause()
        echo_lat, ember_lat = summary(echo_times), summary(ember_times)
        seq_cpu = cpu.per_job(len(ember_times))
        if int(os.environ.get("BENCH_PROFILE", "0")) > 0:
            profile(server, path, auth, int(os.environ["BENCH_PROFILE"]))

        server.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"workersMin": 4, "workersMax": 4})
        wait_idle(server, ep["id"], 4)
        asyncio.run(concurrent(echo.port, "/echo", {}, 400, CLIENTS))
        asyncio.run(concurrent(server.port, path, auth, 400, CLIENTS))
        per_round = N_THROUGHPUT // ROUNDS
        echo_s = ember_s = 0.0
        cpu = Cpu(server, ep["id"])
        for _ in range(ROUNDS):
            echo_s += per_round / asyncio.run(concurrent(echo.port, "/echo", {}, per_round, CLIENTS))
            cpu.resume()
            ember_s += per_round / asyncio.run(concurrent(server.port, path, auth, per_round, CLIENTS))
            cpu.pause()
        echo_rps, ember_rps = ROUNDS * per_round / echo_s, ROUNDS * per_round / ember_s
        conc_cpu = cpu.per_job(ROUNDS * per_round)
    finally:
        echo.stop()
        server.stop()
        server.kill_workers()

    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs)")
    if counted is not None:
        print_table(
            "instructions per request under callgrind, control plane only (machine-independent)",
            [
                ("echo baseline, per request", f"{counted[0] / 1e6:.2f} M"),
                ("ember runsync, per job (server side)", f"{counted[1] / 1e6:.2f} M"),
                ("ratio", f"{counted[1] / counted[0]:.1f}x"),
            ],
        )
    ratio = ember_lat["p50_ms"] / echo_lat["p50_ms"]
    print_table(
        "runsync latency, one warm worker, no-op handler, sequential, raw keep-alive socket",
        [
            (
                f"echo baseline p50 / p99 (n={len(echo_times)})",
                f"{echo_lat['p50_ms']:.3f} / {echo_lat['p99_ms']:.3f} ms",
            ),
            (
                f"ember runsync p50 / p99 (n={len(ember_times)})",
                f"{ember_lat['p50_ms']:.3f} / {ember_lat['p99_ms']:.3f} ms",
            ),
            ("ratio p50 (target <= 4x)", f"{ratio:.2f}x"),
            ("CPU per job: server / worker (target <= 0.6 ms)", seq_cpu),
        ],
    )
    print_table(
        f"throughput, 4 workers, {CLIENTS} concurrent clients, durable SQLite",
        [
            (f"echo baseline (n={ROUNDS * per_round})", f"{echo_rps:,.0f} req/s"),
            (f"ember runsync end to end (n={ROUNDS * per_round})", f"{ember_rps:,.0f} jobs/s"),
            ("ratio ember / echo", f"{ember_rps / echo_rps:.2f}"),
            ("CPU per job: server / workers", conc_cpu),
            ("target", ">= 2,000 jobs/s"),
        ],
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
