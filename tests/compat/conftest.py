"""Fixtures for the compatibility suites: one real Ember server for the whole session, endpoints
deployed once per (handler fixture, worker SDK, settings) and kept warm, and the real `runpod` client
pointed at the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import runpod

from tests.support.live import LiveServer, handler_dir, live_server, wait_for

SDKS = ("runpod", "ember")
WARM_IDLE_S = 600  # endpoints of the suite stay warm for the whole session


class Endpoints:
    """Deploys each (fixture, sdk, fields) once and hands out its endpoint id. Endpoints keep one active
    worker by default (workersMin 1), so a test finds it warm and deploying early hides cold starts."""

    def __init__(self, server: LiveServer, root: Path) -> None:
        self.server = server
        self.root = root
        self._ids: dict[str, str] = {}

    def get(self, fixture: str, sdk: str = "runpod", **fields: Any) -> str:
        fields.setdefault("workersMax", 1)
        fields.setdefault("workersMin", min(1, fields["workersMax"]))
        fields.setdefault("idleTimeout", WARM_IDLE_S)
        env = {"EMBER_TEST_SDK": sdk, **fields.pop("env", {})}
        key = json.dumps([fixture, sdk, env, fields], sort_keys=True)
        if key not in self._ids:
            name = f"{fixture.replace('_', '-')}-{sdk}-{len(self._ids)}"
            source = handler_dir(self.root / name, fixture)
            self._ids[key] = self.server.deploy(name, source, env=env, **fields)["id"]
        return self._ids[key]

    def wait_ready(self, endpoint_id: str, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Until the endpoint has a worker that has talked to the server (IDLE or RUNNING)."""
        return wait_for(
            lambda: [w for w in self.server.workers(endpoint_id) if w["state"] in ("IDLE", "RUNNING")],
            timeout_s,
            what=f"a ready worker on {endpoint_id}",
        )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("ember-compat-home")) as s:
        yield s


@pytest.fixture(scope="session")
def endpoints(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Endpoints:
    return Endpoints(server, tmp_path_factory.mktemp("compat-handlers"))


@pytest.fixture
def rp(server: LiveServer) -> Iterator[Any]:
    """The `runpod` module, configured the way a user points it at Ember (read when an Endpoint is built)."""
    saved = runpod.api_key, runpod.endpoint_url_base
    runpod.api_key = server.admin_key
    runpod.endpoint_url_base = server.url + "/v2"
    yield runpod
    runpod.api_key, runpod.endpoint_url_base = saved


def job_status(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v2/{endpoint_id}/status/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def wait_final(server: LiveServer, endpoint_id: str, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
    return wait_for(
        lambda: (r := job_status(server, endpoint_id, job_id))["status"] in final and r,
        timeout_s,
        interval_s=0.1,
        what=f"job {job_id} to finish",
    )


def worker_key(server: LiveServer, worker_id: str) -> str:
    """A worker's own key, read from its process environment (as the worker sees it)."""
    return server.worker_key(worker_id)


def post_raw(server: LiveServer, path: str, body: bytes, key: str | None = None) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        return c.post(
            path,
            content=body,
            headers={
                "Authorization": f"Bearer {key or server.admin_key}",
                "Content-Type": "application/json",
            },
        )
