"""Console render time with a busy database: one endpoint with 10,000 jobs, 200 workers (their state
transitions over the last hour), the scaler's decisions and the meter's ledger rows, on SQLite and, when
it answers, PostgreSQL (EMBER_TEST_PG_URL, default 127.0.0.1:5432, in a database of its own that is
dropped afterwards). The app runs in-process (no loops, no backends); each page is requested BENCH_N
times through an ASGI client signed in as the admin, timed around the whole request. Target (issue):
the endpoint page in under 300 ms server time."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _support import pct, print_table
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from ember.app import create_app
from ember.control.clock import ManualClock
from ember.settings import Settings
from ember.store.facade import Store
from ember.store.schema import jobs, ledger, scale_events, worker_events, workers

N = int(os.environ.get("BENCH_N", "20"))
JOBS = 10_000
WORKERS = 200
TARGET_MS = 300.0
NOW = 1_800_000_000.0 + 6 * 3600  # 14:00 UTC: the jobs of the last 12 hours all count as "today"
ADMIN_KEY = "ek_admin_bench_console"
PG_URL = os.environ.get("EMBER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# A worker's life over the hour: the states it passes through, in turn, after it starts.
CYCLE = ("RUNNING", "IDLE")
NOW_STATES = ["RUNNING"] * 120 + ["IDLE"] * 40 + ["INITIALIZING"] * 20 + ["THROTTLED"] * 10
NOW_STATES += ["UNHEALTHY"] * 5 + ["STOPPED"] * 5


def seed(store: Store, endpoint_id: str, account_id: str) -> dict[str, int]:
    """Bulk rows on the schema's own tables, as the loops would have written them."""
    rnd = random.Random(7)
    owner = {"endpoint_id": endpoint_id, "account_id": account_id}
    worker_rows: list[dict[str, Any]] = []
    event_rows: list[dict[str, Any]] = []
    ledger_rows: list[dict[str, Any]] = []
    for i, state in enumerate(NOW_STATES):
        wid = f"wk-bench{i:05d}"
        born = NOW - rnd.uniform(1800, 5400)  # some started before the hour the timeline shows
        events: list[tuple[str | None, str, float]] = [
            (None, "THROTTLED", born),
            ("THROTTLED", "INITIALIZING", born + 2),
        ]
        at = born + 2 + rnd.uniform(5, 30)
        events.append(("INITIALIZING", CYCLE[0], at))
        k = 0
        while True:
            at += rnd.uniform(30, 300)
            if at >= NOW - 60:
                break
            events.append((CYCLE[k % 2], CYCLE[(k + 1) % 2], at))
            k += 1
        last = events[-1][1]
        if state != last:
            events.append((last, state, NOW - rnd.uniform(1, 59)))
        for frm, to, when in events:
            reason = "health check failed" if to == "UNHEALTHY" else "bench"
            event_rows.append(
                {"worker_id": wid, **owner, "from_state": frm, "to_state": to, "at": when, "reason": reason}
            )
        worker_rows.append(
            {
                "id": wid,
                **owner,
                "release": 1,
                "type": "FLEX",
                "state": state,
                "state_since": events[-1][2],
                "reason": "",
                "gpu_type": "TEST_GPU",
                "gpu_count": 1,
                "gpu_devices": str(i % 8),
                "host": "local",
                "backend": "local",
                "launched_at": born,
                "last_seen_at": NOW - 1,
                "created_at": born,
            }
        )
        for minute in range(int(born), int(NOW) - 60, 60):  # the meter's rows, one a minute
            ledger_rows.append(
                {
                    **owner,
                    "kind": "usage",
                    "worker_id": wid,
                    "state": "RUNNING",
                    "worker_type": "FLEX",
                    "gpu_type": "TEST_GPU",
                    "seconds": 60,
                    "amount_micros": 60 * 100,
                    "from_at": float(minute),
                    "to_at": float(minute + 60),
                    "created_at": float(minute + 61),
                }
            )
    live = [w["id"] for w in worker_rows if w["state"] in ("RUNNING", "IDLE")]
    job_rows: list[dict[str, Any]] = []
    for i in range(JOBS):
        created = NOW - rnd.uniform(0, 12 * 3600)
        state = "COMPLETED" if i % 50 else "FAILED"
        started: float | None = created + rnd.expovariate(1 / 0.4)
        completed: float | None = (started or created) + rnd.expovariate(1 / 1.5)
        if i < 300:
            state, started, completed, created = "IN_QUEUE", None, None, NOW - rnd.uniform(0, 30)
        elif i < 420:
            state, completed, created = "IN_PROGRESS", None, NOW - rnd.uniform(0, 30)
            started = created + 0.2
        job_rows.append(
            {
                "id": f"job-bench{i:06d}",
                **owner,
                "state": state,
                "input": '{"prompt": "bench"}',
                "execution_timeout_ms": 600_000,
                "created_at": created,
                "expires_at": created + 86400,
                "started_at": started,
                "completed_at": completed,
                "worker_id": rnd.choice(live) if started else None,
                "output": '{"ok": true}' if completed else None,
                "error": "Traceback: bench" if state == "FAILED" else None,
            }
        )
    decisions: list[dict[str, Any]] = [
        {
            "endpoint_id": endpoint_id,
            "at": NOW - 20 * k,
            "desired": 100 + k % 50,
            "reason": "backlog",
            "queued": k % 300,
            "workers": 150,
        }
        for k in range(2000)
    ]
    with store.db.engine.begin() as conn:
        for table, rows in (
            (workers, worker_rows),
            (worker_events, event_rows),
            (jobs, job_rows),
            (ledger, ledger_rows),
            (scale_events, decisions),
        ):
            for start in range(0, len(rows), 2000):
                conn.execute(insert(table), rows[start : start + 2000])
    return {
        "jobs": len(job_rows),
        "workers": len(worker_rows),
        "worker_events": len(event_rows),
        "ledger rows": len(ledger_rows),
        "scale_events": len(decisions),
    }


@dataclass
class Figures:
    """Per request: wall time around it, this process's CPU time in it (on a loaded machine the wall
    time waits for the CPU; the CPU time does not, though PostgreSQL's own work is not in it), and the
    template's share (the server-timing header)."""

    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    template_ms: list[float] = field(default_factory=list)


async def measure(store: Store, home: Path) -> tuple[dict[str, int], dict[str, Figures]]:
    settings = Settings(home=home, admin_key=ADMIN_KEY, backend="local")
    app = create_app(settings, store=store, backends={}, clock=ManualClock(start=NOW), start_loops=False)
    transport = httpx.ASGITransport(app=app)
    api = httpx.AsyncClient(
        transport=transport, base_url="http://ember.bench", headers={"Authorization": ADMIN_KEY}
    )
    src = home / "src"
    src.mkdir()
    (src / "handler.py").write_text("def handler(job):\n    return job['input']\n")
    resp = await api.post("/v1/endpoints", json={"name": "bench", "sourceDir": str(src), "workersMax": 60})
    assert resp.status_code == 201, resp.text
    endpoint_id = resp.json()["id"]
    account_id = (await api.get("/v1/accounts/me")).json()["id"]
    counts = seed(store, endpoint_id, account_id)
    console = httpx.AsyncClient(transport=transport, base_url="http://ember.bench")
    resp = await console.post("/console/login", data={"key": ADMIN_KEY})
    assert resp.status_code == 303, resp.text
    pages = {
        "/console/": "/console/",
        "/console/endpoints/{id}": f"/console/endpoints/{endpoint_id}",
        "/console/billing": "/console/billing?days=30",
    }
    figures: dict[str, Figures] = {}
    for name, path in pages.items():
        first = await console.get(path)
        if first.status_code == 404 and name.startswith("/console/endpoints"):
            continue  # the endpoint page is not part of this tree yet
        assert first.status_code == 200, (path, first.status_code, first.text[:300])
        fig = Figures()
        for _ in range(N):
            t0, c0 = time.perf_counter(), time.process_time()
            resp = await console.get(path)
            fig.wall_ms.append((time.perf_counter() - t0) * 1000)
            fig.cpu_ms.append((time.process_time() - c0) * 1000)
            assert resp.status_code == 200, resp.text[:300]
            fig.template_ms.append(
                float(resp.headers.get("server-timing", "render;dur=0").rpartition("=")[2])
            )
        figures[name] = fig
    await console.aclose()
    await api.aclose()
    return counts, figures


@contextmanager
def pg_database() -> Iterator[str | None]:
    """A new, empty PostgreSQL database for the run (None when no server answers), dropped after."""
    url = make_url(PG_URL)
    name = "ember_bench_console"
    try:
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # no server, no driver, no rights: PostgreSQL is skipped
        print(f"\nPostgreSQL skipped ({url.render_as_string()}: {exc.__class__.__name__})")
        yield None
        return
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def report(db: str, counts: dict[str, int], figures: dict[str, Figures]) -> None:
    rows: list[tuple[str, Any]] = [("seeded", ", ".join(f"{v:,} {k}" for k, v in counts.items()))]
    for name, fig in figures.items():
        p50, p95 = statistics.median(fig.wall_ms), pct(fig.wall_ms, 0.95)
        verdict = "ok" if p95 < TARGET_MS else "OVER"
        rows.append(
            (
                f"{name} (n={len(fig.wall_ms)})",
                f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  (cpu p50 {statistics.median(fig.cpu_ms):5.1f} ms, "
                f"template {statistics.median(fig.template_ms):5.1f} ms)  "
                f"target < {TARGET_MS:.0f} ms: {verdict}",
            )
        )
    if "/console/endpoints/{id}" not in figures:
        rows.append(("/console/endpoints/{id}", "not measured: the page is not in this tree"))
    print_table(f"Console server time, {db}", rows)


def run_on(db: str, url: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="ember-bench-console-") as tmp:
        home = Path(tmp)
        store = Store.open(url or f"sqlite:///{home / 'ember.db'}")
        try:
            counts, figures = asyncio.run(measure(store, home))
        finally:
            store.close()
        report(db, counts, figures)


def main() -> None:
    run_on("SQLite", None)
    with pg_database() as url:
        if url is not None:
            run_on("PostgreSQL", url)


if __name__ == "__main__":
    main()
