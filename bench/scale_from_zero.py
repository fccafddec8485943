"""Scale-from-zero latency: runsync on an endpoint with no worker -> result, for a handler that imports
numpy, beside the time to spawn `python -c "import numpy"` measured in the same run; once with the
worker unsandboxed (EMBER_SANDBOX=off) and once in the bubblewrap sandbox (EMBER_SANDBOX=required),
when bwrap is installed. Target (issue): <= 1.5x that spawn time, sandboxed too."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from _support import RawClient, handler_source, print_table, start_ember, wait_for

RUNS = int(os.environ.get("BENCH_RUNS", "7"))


def spawn_numpy_s() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy"], check=True)
    return time.perf_counter() - t0


def cold_starts(sandbox: str) -> list[float]:
    server = start_ember({"EMBER_TICK_S": "0.5", "EMBER_SANDBOX": sandbox})
    cold: list[float] = []
    try:
        auth = {"Authorization": f"Bearer {server.admin_key}"}
        ep = server.deploy("numpy", handler_source("numpy_import"), workersMin=0, workersMax=1, idleTimeout=0)
        client = RawClient(server.port)
        for _ in range(RUNS + 1):
            wait_for(lambda: server.workers(ep["id"]) == [], 60, what="scale to zero")
            t0 = time.perf_counter()
            status, body = client.request("POST", f"/v2/{ep['id']}/runsync", b'{"input": {}}', auth)
            elapsed = time.perf_counter() - t0
            record = json.loads(body)
            if status != 200 or record.get("status") != "COMPLETED":
                raise SystemExit(f"unexpected answer {status}: {body[:300]!r}")
            cold.append(elapsed)
        cold = cold[1:]  # the first start also builds caches (source snapshot, bytecode)
    finally:
        server.stop()
        server.kill_workers()
    return cold


def main() -> None:
    spawn_numpy_s()  # warm the page cache
    baseline = [spawn_numpy_s() for _ in range(RUNS)]
    modes = ["off", "required"] if shutil.which("bwrap") else ["off"]
    runs = {mode: cold_starts(mode) for mode in modes}
    base = statistics.median(baseline)
    rows = [("spawn `python -c 'import numpy'` median", f"{base * 1000:.0f} ms")]
    for mode, cold in runs.items():
        med = statistics.median(cold)
        label = "sandboxed" if mode == "required" else "unsandboxed"
        rows.append(
            (
                f"ember cold runsync median, {label}",
                f"{med * 1000:.0f} ms (min {min(cold) * 1000:.0f}, max {max(cold) * 1000:.0f}), "
                f"{med / base:.2f}x (target <= 1.5x)",
            )
        )
    if len(modes) == 1:
        rows.append(("sandboxed", "not measured: bubblewrap (bwrap) is not installed"))
    title = f"scale from zero: runsync at zero workers -> result, handler imports numpy ({RUNS} runs)"
    print_table(title, rows)


if __name__ == "__main__":
    main()
