"""Container worker cold start: an image endpoint deployed at zero workers, then one runsync (scale-up,
container start, SDK start, job, result), beside a bare `docker run --rm --network host IMAGE python3 -c
pass` measured in the same run, alternating. Then, once that worker has scaled down and left its
container paused (warm containers), a second runsync from zero workers resumes that container. Median of
BENCH_RUNS runs. Targets (issues): a new container <= 1.5x bare; a resumed one <= 0.5x bare.

CRIU checkpoints (`docker checkpoint`) are the other way to keep a container warm: the bench says whether
this engine could do them (an experimental daemon and a working criu); where it cannot, pause is all."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from _support import BASE_IMAGE, ROOT, LiveServer, docker_ready, print_table, wait_for

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
TARGET_RATIO = 1.5
TARGET_RESUMED_RATIO = 0.5


def build_worker_image(tag: str) -> None:
    """The `ember init` project (template handler, vendored SDK) built on the base image."""
    from ember.build.image import build_image
    from ember.build.scaffold import init_project

    project = Path(tempfile.mkdtemp(prefix="ember-bench-cold-"))
    init_project(project, base_image=BASE_IMAGE, force=True)
    build_image(project, tag, on_log=lambda _line: None)
    shutil.rmtree(project, ignore_errors=True)


def bare_run_s(image: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "host", image, "python3", "-c", "pass"],
        check=True,
        timeout=120,
    )
    return time.perf_counter() - t0


def containers_of(endpoint_id: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=ember.endpoint-id={endpoint_id}"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()


def checkpoint_support() -> str:
    """Whether `docker checkpoint` could work on this engine, in words."""
    experimental = subprocess.run(
        ["docker", "info", "--format", "{{.ExperimentalBuild}}"], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    if shutil.which("criu") is None:
        criu = "criu not installed"
    else:
        check = subprocess.run(["criu", "check"], capture_output=True, text=True, timeout=60)
        criu = "criu check ok" if check.returncode == 0 else "criu check fails: " + check.stderr.strip()[-80:]
    usable = experimental == "true" and criu == "criu check ok"
    return f"{'usable' if usable else 'not usable'} (daemon experimental={experimental or '?'}; {criu})"


def runsync_s(client: httpx.Client, endpoint_id: str) -> float:
    """One runsync on a kept-alive connection (as an SDK's session does: a new httpx client costs tens
    of milliseconds of its own, which is not the platform's)."""
    t0 = time.perf_counter()
    result = client.post(
        f"/v2/{endpoint_id}/runsync", json={"input": {"name": "bench"}}, params={"wait": "120000"}
    )
    elapsed = time.perf_counter() - t0
    body = result.json()
    if body.get("status") != "COMPLETED":
        raise SystemExit(f"cold-start job did not complete: {body}")
    return elapsed


def parked_of(endpoint_id: str) -> list[str]:
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-q",
            "--filter",
            f"label=ember.endpoint-id={endpoint_id}",
            "--filter",
            "status=paused",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()


def ember_cold_start_s(
    server: LiveServer, client: httpx.Client, image: str, run: int
) -> tuple[float, float, float]:
    """(runsync seconds on an endpoint at zero workers, deploy + runsync seconds, runsync seconds at
    zero workers once the first worker scaled down and left its container paused)."""
    client.get("/healthz")  # the connection is open before the clock starts
    t_deploy = time.perf_counter()
    resp = client.request(
        "POST",
        "/v1/endpoints",
        json={"name": f"cold-{run}", "imageName": image, "workersMin": 0, "workersMax": 1, "idleTimeout": 1},
    )
    resp.raise_for_status()
    endpoint_id = resp.json()["id"]
    cold = runsync_s(client, endpoint_id)
    with_deploy = time.perf_counter() - t_deploy
    wait_for(
        lambda: not server.workers(endpoint_id) and parked_of(endpoint_id),
        60,
        what=f"the worker of {endpoint_id} to scale down and leave its container paused",
    )
    client.get("/healthz")
    resumed = runsync_s(client, endpoint_id)
    server.api("DELETE", f"/v1/endpoints/{endpoint_id}").raise_for_status()
    wait_for(lambda: not containers_of(endpoint_id), 60, what=f"the containers of {endpoint_id} to go")
    return cold, with_deploy, resumed


def main() -> None:
    why = docker_ready()
    if why:
        print(f"docker_cold_start: skipped: {why}")
        return
    image = f"ember-bench/cold-{uuid.uuid4().hex[:8]}:v1"
    build_worker_image(image)
    home = Path(tempfile.mkdtemp(prefix="ember-bench-home-"))
    env = {
        "EMBER_LOG_LEVEL": "WARNING",
        "EMBER_TICK_S": "0.5",
        "EMBER_PING_INTERVAL_MS": "2000",
        "EMBER_WARM_CONTAINER_S": "300",
    }
    server = LiveServer(home, env=env, args=["--backend", "docker"]).start()
    checkpoint = checkpoint_support()
    client = server.client()
    bare: list[float] = []
    cold: list[float] = []
    total: list[float] = []
    resumed: list[float] = []
    try:
        bare_run_s(image)  # warm the engine's caches once for both sides
        for run in range(RUNS):
            bare.append(bare_run_s(image))
            cold_s, with_deploy_s, resumed_s = ember_cold_start_s(server, client, image, run)
            cold.append(cold_s)
            total.append(with_deploy_s)
            resumed.append(resumed_s)
    finally:
        client.close()
        server.stop()
        subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
    bare_med, cold_med, total_med, resumed_med = (statistics.median(v) for v in (bare, cold, total, resumed))
    ratio, resumed_ratio = cold_med / bare_med, resumed_med / bare_med
    print_table(
        f"Container worker cold start ({RUNS} runs, medians; image {BASE_IMAGE} + ember init project)",
        [
            ("bare docker run --rm --network host python3 -c pass", f"{bare_med * 1000:.0f} ms"),
            ("ember: runsync at zero workers -> first result", f"{cold_med * 1000:.0f} ms"),
            ("ember: deploy + runsync -> first result", f"{total_med * 1000:.0f} ms"),
            ("ember: runsync at zero workers, resumed container", f"{resumed_med * 1000:.0f} ms"),
            ("ratio (runsync cold start / bare docker run)", f"{ratio:.2f}x (target <= {TARGET_RATIO}x)"),
            (
                "ratio (resumed container / bare docker run)",
                f"{resumed_ratio:.2f}x (target <= {TARGET_RESUMED_RATIO}x)",
            ),
            ("all bare runs (ms)", " ".join(f"{v * 1000:.0f}" for v in bare)),
            ("all cold starts (ms)", " ".join(f"{v * 1000:.0f}" for v in cold)),
            ("all resumed starts (ms)", " ".join(f"{v * 1000:.0f}" for v in resumed)),
            ("docker checkpoint (CRIU)", checkpoint),
        ],
    )
    print(f"\n{'PASS' if ratio <= TARGET_RATIO else 'MISS'}: cold start is {ratio:.2f}x the bare docker run")
    verdict = "PASS" if resumed_ratio <= TARGET_RESUMED_RATIO else "MISS"
    print(f"{verdict}: a resumed container is {resumed_ratio:.2f}x the bare docker run")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
