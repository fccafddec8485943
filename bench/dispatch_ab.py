"""The job path of this working tree against a git revision of it (default HEAD: with a clean tree, the
noise floor), run side by side: two control planes, each with its own copy of `src`, measured in
alternating rounds so that a change in the machine's speed (it is shared, and virtual) weighs on both
alike. Whole `dispatch.py` runs a minute apart can differ by more than a change does; rounds a few
seconds apart cannot.

Prints, for each side, throughput (4 workers, 16 concurrent clients) and runsync latency (one worker,
sequential), each with the control plane's CPU per job, and the ratio of this tree to the revision.

Options (environment): BENCH_AB_BASE=<git revision> (default HEAD), BENCH_AB_ROUNDS (default 6),
BENCH_AB_JOBS (jobs per throughput round, default 3000), BENCH_AB_SEQ (jobs per sequential round,
default 400)."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _support import ROOT, cpu_seconds, handler_source, print_table, start_ember, wait_idle
from dispatch import concurrent, sequential

ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "6"))
JOBS = int(os.environ.get("BENCH_AB_JOBS", "3000"))
SEQ = int(os.environ.get("BENCH_AB_SEQ", "400"))
CLIENTS = 16


@dataclass
class Side:
    name: str
    server: Any
    endpoint_id: str
    load_s: float = 0.0
    load_cpu_s: float = 0.0
    seq_cpu_s: float = 0.0
    seq_times: list[float] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/v2/{self.endpoint_id}/runsync"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.admin_key}"}

    def cpu(self) -> float:
        return cpu_seconds([self.server.proc.pid])


def base_tree(revision: str) -> Path:
    """`src` of `revision`, unpacked into a fresh folder (which is returned, for PYTHONPATH)."""
    out = Path(tempfile.mkdtemp(prefix="ember-ab-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def alternate(sides: list[Side], rounds: int, measure: Any) -> None:
    """`measure(side)` for each side, `rounds` times, the order reversed every other round."""
    for r in range(rounds):
        for side in sides if r % 2 == 0 else sides[::-1]:
            measure(side)


def load_round(side: Side) -> None:
    before = side.cpu()
    rate = asyncio.run(concurrent(side.server.port, side.path, side.auth, JOBS, CLIENTS))
    side.load_cpu_s += side.cpu() - before
    side.load_s += JOBS / rate


def seq_round(side: Side) -> None:
    before = side.cpu()
    side.seq_times += sequential(side.server.port, side.path, side.auth, SEQ)
    side.seq_cpu_s += side.cpu() - before


def main() -> None:
    revision = os.environ.get("BENCH_AB_BASE", "HEAD")
    trees = [("this tree", ROOT / "src"), (revision, base_tree(revision))]
    sides: list[Side] = []
    try:
        for name, src in trees:
            server = start_ember({"PYTHONPATH": str(src)})
            sides.append(Side(name, server, ""))
            ep = server.deploy("noop", handler_source("noop"), workersMin=4, workersMax=4)
            sides[-1].endpoint_id = ep["id"]
        for side in sides:
            wait_idle(side.server, side.endpoint_id, 4)
            asyncio.run(concurrent(side.server.port, side.path, side.auth, 600, CLIENTS))
        alternate(sides, ROUNDS, load_round)
        for side in sides:
            side.server.api(
                "PATCH", f"/v1/endpoints/{side.endpoint_id}", json={"workersMin": 1, "workersMax": 1}
            )
        for side in sides:
            wait_idle(side.server, side.endpoint_id, 1)
            sequential(side.server.port, side.path, side.auth, 200)
        alternate(sides, ROUNDS, seq_round)
    finally:
        for side in sides:
            side.server.stop()
            side.server.kill_workers()

    jobs = ROUNDS * JOBS
    seq_jobs = ROUNDS * SEQ
    rows = []
    for side in sides:
        p50 = statistics.median(side.seq_times) * 1000
        rows.append(
            (
                side.name,
                f"{jobs / side.load_s:,.0f} jobs/s, {side.load_cpu_s / jobs * 1000:.3f} ms CPU/job | "
                f"runsync p50 {p50:.3f} ms, {side.seq_cpu_s / seq_jobs * 1000:.3f} ms CPU/job",
            )
        )
    new, old = sides
    rows.append(
        (
            "ratio, this tree / " + revision,
            f"{old.load_s / new.load_s:.3f} jobs/s, {new.load_cpu_s / old.load_cpu_s:.3f} CPU | "
            f"{statistics.median(new.seq_times) / statistics.median(old.seq_times):.3f} p50, "
            f"{new.seq_cpu_s / old.seq_cpu_s:.3f} CPU",
        )
    )
    print_table(
        f"this tree against {revision}, side by side, {ROUNDS} alternating rounds each "
        f"(throughput: {JOBS} jobs, 4 workers, {CLIENTS} clients; latency: {SEQ} sequential runsyncs)",
        rows,
    )


if __name__ == "__main__":
    main()
