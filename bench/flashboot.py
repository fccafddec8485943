"""FlashBoot: scale from zero (runsync at an endpoint resting at zero workers -> result) once a release's
template has imported what its handler imports, so the worker is forked from it, beside a bare
`python -c "import X"` spawn measured just before each cold start (medians of both), and beside a
plain start (templates off): for
a numpy handler (target <= 0.25x the spawn) and, when torch is installed, a torch handler (target
<= 0.1x); unsandboxed, and in the bubblewrap sandbox when bwrap is installed. Each measured cold
start's worker is checked to be a forked one (its log says so)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from _support import RawClient, handler_source, print_table, start_ember, wait_for

RUNS = int(os.environ.get("BENCH_RUNS", "9"))
SETTLE_S = 1.0
TARGETS = {"numpy": 0.25, "torch": 0.1}


def spawn_s(module: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - t0


def ready_template(home: str, endpoint_id: str) -> bool:
    for meta in (os.path.join(home, "runtime", "templates", d, "meta.json") for d in _dirs(home)):
        try:
            with open(meta) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if info.get("endpoint_id") == endpoint_id and info.get("state") == "ready":
            return True
    return False


def _dirs(home: str) -> list[str]:
    try:
        return os.listdir(os.path.join(home, "runtime", "templates"))
    except OSError:
        return []


def forked_logs(home: str) -> int:
    logs = os.path.join(home, "runtime", "logs")
    count = 0
    for name in os.listdir(logs):
        with open(os.path.join(logs, name), errors="replace") as f:
            count += "[ember] forking from template" in f.read()
    return count


def cold_starts(module: str, sandbox: str, templates: bool = True) -> tuple[list[float], list[float]]:
    """Scale-from-zero times (with `templates`, only of workers forked from a ready template), each
    run right after a bare `import module` spawn, whose times come second: on a shared machine both
    see the same load."""
    handler = f"{module}_import"
    env = {"EMBER_TICK_S": "0.5", "EMBER_SANDBOX": sandbox, "EMBER_TEMPLATES_MAX": "4" if templates else "0"}
    server = start_ember(env)
    cold: list[float] = []
    spawns: list[float] = []
    try:
        auth = {"Authorization": f"Bearer {server.admin_key}"}
        ep = server.deploy(handler, handler_source(handler), workersMin=0, workersMax=1, idleTimeout=0)
        client = RawClient(server.port)

        def runsync() -> float:
            wait_for(lambda: server.workers(ep["id"]) == [], 60, what="scale to zero")
            time.sleep(SETTLE_S)  # an endpoint at rest at zero, not one still scaling down
            t0 = time.perf_counter()
            status, body = client.request("POST", f"/v2/{ep['id']}/runsync", b'{"input": {}}', auth)
            elapsed = time.perf_counter() - t0
            record = json.loads(body)
            if status != 200 or record.get("status") != "COMPLETED":
                raise SystemExit(f"unexpected answer {status}: {body[:300]!r}")
            return elapsed

        runsync()  # the release's first cold start is plain: it tells Ember what to pre-import
        home = str(server.home)
        if templates:
            wait_for(lambda: ready_template(home, ep["id"]), 300, what="the template")
        runsync()  # warm the page cache of the path measured
        for _ in range(RUNS):
            wait_for(lambda: server.workers(ep["id"]) == [], 60, what="scale to zero")
            spawns.append(spawn_s(module))
            cold.append(runsync())
        if templates and forked_logs(home) < RUNS + 1:
            raise SystemExit(f"only {forked_logs(home)} of {RUNS + 1} cold starts were forked")
    finally:
        server.stop()
        server.kill_workers()
    return cold, spawns


def main() -> None:
    modules = ["numpy"] + (["torch"] if importlib.util.find_spec("torch") else [])
    modes = ["off", "required"] if shutil.which("bwrap") else ["off"]
    rows: list[tuple[str, str]] = []
    for module in modules:
        spawn_s(module)  # warm the page cache
        for mode in modes:
            label = "sandboxed" if mode == "required" else "unsandboxed"
            for templates in (True, False):
                cold, spawns = cold_starts(module, mode, templates)
                med, base = statistics.median(cold), statistics.median(spawns)
                how = "forked from a template" if templates else "plain start (EMBER_TEMPLATES_MAX=0)"
                target = f" (target <= {TARGETS[module]}x)" if templates else ""
                rows.append(
                    (
                        f"{module}: ember cold runsync, {how}, {label}",
                        f"{med * 1000:.1f} ms (min {min(cold) * 1000:.1f}, max {max(cold) * 1000:.1f}) "
                        f"beside spawn `python -c 'import {module}'` {base * 1000:.0f} ms: "
                        f"{med / base:.3f}x{target}",
                    )
                )
    if "torch" not in modules:
        rows.append(("torch", "not measured: torch is not installed (pip install torch)"))
    if len(modes) == 1:
        rows.append(("sandboxed", "not measured: bubblewrap (bwrap) is not installed"))
    print_table(
        f"FlashBoot: scale from zero -> result, worker forked from its release's template ({RUNS} runs)", rows
    )


if __name__ == "__main__":
    main()
