"""The local backend's sandbox end to end: account B's hostile handler, and B's `exec`, on a server
with two tenants, try to read what is not theirs (EMBER_HOME's keys and database, account A's worker
environment, source and volume) and to write where they may not; every attempt fails, A's data is
intact, and B's own volume works at /runpod-volume. Real bubblewrap, real processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from ember.volumes.store import VolumeManager
from tests.conftest import need
from tests.support.live import LiveServer, handler_dir, live_server, wait_for
from tests.support.tenants import (
    assert_b_cannot_post_to_a_job,
    assert_hostile_handler_contained,
    exec_as_b,
    run_as,
)


@pytest.fixture(scope="module")
def sserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    need(
        "bwrap", shutil.which("bwrap") is not None, "bubblewrap is not installed (apt-get install bubblewrap)"
    )
    home = tmp_path_factory.mktemp("ember-sandbox")
    try:
        with live_server(home, env={"EMBER_SANDBOX": "required"}) as s:
            yield s
    finally:
        manager = VolumeManager(home / "volumes")
        for info in manager.list():  # unmount the loop images of the volumes
            manager.delete(info.volume_id)


def _volume(server: LiveServer, key: str, name: str) -> str:
    resp = server.api("POST", "/v1/networkvolumes", key, json={"name": name, "size": 1})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _idle_worker(server: LiveServer, key: str, endpoint_id: str) -> str:
    def find() -> str | None:
        return next((w["id"] for w in server.workers(endpoint_id, key) if w["state"] == "IDLE"), None)

    return str(wait_for(find, 90, what=f"an idle worker of {endpoint_id}\n{server.log()[-3000:]}"))


@pytest.fixture(scope="module")
def tenants(sserver: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A's endpoint with a volume holding A's secret and a running worker; B's hostile endpoint."""
    root = tmp_path_factory.mktemp("tenants")
    key_a, key_b = sserver.new_account("alice"), sserver.new_account("mallory")
    ep_a = sserver.deploy(
        "a-data",
        handler_dir(root / "a", "volume_rw"),
        key_a,
        networkVolumeId=_volume(sserver, key_a, "a-vol"),
        workersMin=1,
    )["id"]
    assert run_as(sserver, key_a, ep_a, {"write": "x", "text": "alice-secret"})["root"] == "/runpod-volume"
    ep_b = sserver.deploy(
        "b-probe",
        handler_dir(root / "b", "hostile"),
        key_b,
        env={"EMBER_TEST_SDK": "runpod"},
        networkVolumeId=_volume(sserver, key_b, "b-vol"),
        workersMin=1,
    )["id"]
    worker_a = _idle_worker(sserver, key_a, ep_a)
    home = sserver.home
    a_volume = next(p for p in (home / "volumes").rglob("x") if p.read_text() == "alice-secret")
    a_source = next(
        p for p in (home / "sources").rglob("handler.py") if "RUNPOD_VOLUME_PATH" in p.read_text()
    )
    return {
        "key_a": key_a,
        "key_b": key_b,
        "ep_a": ep_a,
        "ep_b": ep_b,
        "worker_a": worker_a,
        "worker_b": _idle_worker(sserver, key_b, ep_b),
        "a_volume": a_volume,
        "a_key": sserver.worker_key(worker_a),
        "secrets": [sserver.admin_key, sserver.worker_key(worker_a), "alice-secret"],
        "targets": [
            str(home / "admin_key"),
            str(home / "secret.key"),
            str(home / "ember.db"),
            str(home),
            str(a_volume),
            str(a_volume.parent),
            str(a_source),
            f"/proc/{sserver.worker_pid(worker_a)}/environ",
        ],
    }


def test_a_hostile_handler_reads_nothing_of_the_server_or_another_tenant(
    sserver: LiveServer, tenants: dict[str, Any]
) -> None:
    assert_hostile_handler_contained(sserver, tenants)
    # A's worker still serves A's volume.
    assert run_as(sserver, tenants["key_a"], tenants["ep_a"], {"read": "x"})["text"] == "alice-secret"


def test_exec_runs_in_the_same_sandbox(sserver: LiveServer, tenants: dict[str, Any]) -> None:
    output = exec_as_b(
        sserver,
        tenants,
        [f"cat {t} 2>&1 | head -c 300" for t in tenants["targets"]]
        + [
            "cat /proc/[0-9]*/environ 2>&1 | tr '\\0' '\\n' | grep -c RUNPOD_AI_API_KEY",
            'echo "uid=$(id -u)"',
            'echo "volume=$(cat /runpod-volume/x)"',
            f"echo owned > {sserver.home / 'models' / 'x'} 2>&1",
            "ls /proc | grep -c '^[0-9]'",
        ],
    )
    lines = output.splitlines()
    assert "volume=mallory's own" in lines, output  # the worker's own volume at /runpod-volume
    assert "uid=0" not in lines and any(line.startswith("uid=") for line in lines), output
    assert "Read-only file system" in output or "No such file or directory" in output
    assert tenants["a_volume"].read_text() == "alice-secret"


def test_a_worker_key_cannot_post_to_another_tenants_job(
    sserver: LiveServer, tenants: dict[str, Any]
) -> None:
    assert_b_cannot_post_to_a_job(sserver, tenants, sserver.worker_key(tenants["worker_b"]))
