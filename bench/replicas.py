"""Control-plane replicas: runsync latency (sequential, one warm worker, no-op handler) and throughput
(4 workers, 16 clients spread over the replicas), for one SQLite process, one process on PostgreSQL,
and 3 processes on one PostgreSQL database. With replicas, the worker long-polls the process that
started it; a runsync sent to another process reaches it by LISTEN/NOTIFY. Target (issue): runsync p50
through another replica within 2 ms of the same replica's.

Needs PostgreSQL at EMBER_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test); its
`public` schema is dropped and made again."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from _support import LiveServer, handler_source, print_table, start_ember, summary, wait_idle
from dispatch import concurrent, sequential

from tests.integration.store_fixtures import PG_URL, reset_pg

N_LATENCY = int(os.environ.get("BENCH_N", "600"))
N_THROUGHPUT = int(os.environ.get("BENCH_JOBS", "2400"))
ROUNDS = 3
CLIENTS = 16
QUIET = {"EMBER_LOG_LEVEL": "WARNING", "EMBER_TAKE_HOLD_S": "20", "EMBER_TICK_S": "0.5"}


def replicas(count: int) -> list[LiveServer]:
    """`count` servers on PostgreSQL, each with a home of its own and one shared directory; the first
    runs the loops."""
    reset_pg(PG_URL)
    root = Path(tempfile.mkdtemp(prefix="ember-bench-replicas-"))
    env = {**QUIET, "EMBER_DATABASE_URL": PG_URL, "EMBER_SHARED_DIR": str(root / "shared")}
    first = LiveServer(root / "server0", env=env).start()
    out = [first]
    for i in range(1, count):
        s = LiveServer(root / f"server{i}", env=env)
        s.admin_key = first.admin_key
        out.append(s.start())
    return out


def measure(servers: list[LiveServer], label: str) -> list[tuple[str, str]]:
    first = servers[0]
    auth = {"Authorization": f"Bearer {first.admin_key}"}
    ep = first.deploy("noop", handler_source("noop"), workersMin=1, workersMax=1)
    wait_idle(first, ep["id"], 1)
    path = f"/v2/{ep['id']}/runsync"
    same: list[float] = []
    other: list[float] = []
    for s in servers:
        sequential(s.port, path, auth, 100)
    for _ in range(ROUNDS):
        same += sequential(first.port, path, auth, N_LATENCY // ROUNDS)
        if len(servers) > 1:
            other += sequential(servers[1].port, path, auth, N_LATENCY // ROUNDS)
    lat = summary(same)
    rows = [(f"{label}: runsync p50 / p99, same process", f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} ms")]
    if other:
        far = summary(other)
        rows.append(
            (f"{label}: runsync p50 / p99, other process", f"{far['p50_ms']:.2f} / {far['p99_ms']:.2f} ms")
        )
        gap = far["p50_ms"] - lat["p50_ms"]
        rows.append((f"{label}: other minus same, p50 (target <= 2 ms)", f"{gap:.2f} ms"))
    first.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"workersMin": 4, "workersMax": 4})
    wait_idle(first, ep["id"], 4)

    async def spread() -> float:
        per = N_THROUGHPUT // len(servers)
        rates = await asyncio.gather(
            *(concurrent(s.port, path, auth, per, CLIENTS // len(servers) or 1) for s in servers)
        )
        return float(sum(rates))

    asyncio.run(spread())  # warm-up
    rows.append(
        (f"{label}: throughput, 4 workers, {CLIENTS} clients", f"{asyncio.run(spread()):,.0f} jobs/s")
    )
    return rows


def main() -> None:
    rows: list[tuple[str, str]] = []
    for label, make in (
        ("SQLite, 1 process", lambda: [start_ember(QUIET)]),
        ("PostgreSQL, 1 process", lambda: replicas(1)),
        ("PostgreSQL, 3 processes", lambda: replicas(3)),
    ):
        servers = make()
        try:
            rows += measure(servers, label)
        finally:
            for s in servers:
                s.stop()
                s.kill_workers()
    print_table("control-plane replicas: runsync latency and throughput", rows)


if __name__ == "__main__":
    main()
