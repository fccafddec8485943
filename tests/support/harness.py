"""An in-process control plane on a manual clock: the real app, store (SQLite in a temp dir), lifecycle
and meter, with the shipped in-memory backend. Tests drive time with `clock.advance` and the loops with
`tick()`, and play the worker's part over the real worker API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ember.app import create_app
from ember.backends.memory import MemoryBackend
from ember.control.clock import ManualClock
from ember.settings import Settings
from ember.store.facade import Store

ADMIN_KEY = "ek_admin_harness"
# Tests' webhook receivers and git servers listen here; other loopback addresses (127.0.0.2) stay refused.
LOOPBACK_ALLOW = "127.0.0.1/32,::1/128"


@dataclass
class Harness:
    app: Any
    clock: ManualClock
    backend: MemoryBackend
    store: Store
    api: httpx.AsyncClient
    home: Path

    async def tick(self) -> None:
        """One lifecycle pass, with its launches and stops carried out."""
        lifecycle = self.app.state.lifecycle
        await lifecycle.tick()
        await lifecycle.drain()

    async def meter(self) -> None:
        await self.app.state.runner.meter.tick()

    async def deploy(self, name: str, **fields: Any) -> dict[str, Any]:
        src = self.home / "src" / name
        src.mkdir(parents=True, exist_ok=True)
        (src / "handler.py").write_text("def handler(job):\n    return job['input']\n")
        resp = await self.api.post("/v1/endpoints", json={"name": name, "sourceDir": str(src), **fields})
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    async def workers(self, endpoint_id: str, include_stopped: bool = True) -> list[dict[str, Any]]:
        resp = await self.api.get(
            f"/v1/endpoints/{endpoint_id}/workers", params={"includeStopped": str(include_stopped).lower()}
        )
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def worker_headers(self, worker_id: str) -> dict[str, str]:
        return {"Authorization": self.backend.launched(worker_id).env["RUNPOD_AI_API_KEY"]}

    async def take(self, endpoint_id: str, worker_id: str) -> httpx.Response:
        return await self.api.get(
            f"/v2/{endpoint_id}/job-take/{worker_id}?job_in_progress=0",
            headers=self.worker_headers(worker_id),
        )

    async def ping(self, endpoint_id: str, worker_id: str) -> httpx.Response:
        return await self.api.get(
            f"/v2/{endpoint_id}/ping/{worker_id}", headers=self.worker_headers(worker_id)
        )

    async def done(
        self, endpoint_id: str, worker_id: str, job_id: str, body: dict[str, Any]
    ) -> httpx.Response:
        return await self.api.post(
            f"/v2/{endpoint_id}/job-done/{worker_id}/{job_id}?isStream=false",
            json=body,
            headers=self.worker_headers(worker_id),
        )


def build(home: Path, *, gpus: str = "TEST_GPU:2", store: Store | None = None, **settings: Any) -> Harness:
    """The harness on `store` (default: a new SQLite file under `home`)."""
    clock = ManualClock(start=1_800_000_000.0)
    backend = MemoryBackend(clock=clock)
    store = store or Store.open(f"sqlite:///{home / 'ember.db'}")
    settings.setdefault("outbound_allow", LOOPBACK_ALLOW)  # the tests' receivers listen on loopback
    cfg = Settings(home=home, backend="memory", gpus=gpus, admin_key=ADMIN_KEY, take_hold_s=0.05, **settings)
    app = create_app(cfg, store=store, backends={"memory": backend}, clock=clock, start_loops=False)
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://ember.test",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    return Harness(app, clock, backend, store, api, home)
