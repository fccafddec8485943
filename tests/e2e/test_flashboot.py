"""FlashBoot on the local backend, end to end: a release's first cold start teaches Ember what its
handler imports, a template process imports it, and later cold starts are forked from that template,
each its own worker (id, key, GPU); a dead template means a plain start, a new release never runs the
old one's template, and a sandboxed tenant's forked worker is as isolated as any. Real servers, real
worker processes (numpy is imported for real)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.volumes.store import VolumeManager
from tests.conftest import need
from tests.support.live import FINAL_STATES, LiveServer, handler_dir, live_server, wait_for
from tests.support.tenants import (
    assert_b_cannot_post_to_a_job,
    assert_hostile_handler_contained,
    exec_as_b,
    run_as,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"EMBER_GPUS": "TEST_GPU:2", "EMBER_TEMPLATES_MAX": "4"}
    with live_server(tmp_path_factory.mktemp("ember-flashboot"), env=env) as s:
        yield s


def _templates(server: LiveServer, endpoint_id: str) -> list[dict[str, Any]]:
    found = []
    for meta in (server.home / "runtime" / "templates").glob("*/meta.json"):
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if info.get("endpoint_id") == endpoint_id:
            found.append(info)
    return found


def _alive(pid: int | None) -> bool:
    return bool(pid) and os.path.exists(f"/proc/{pid}")


def _ready_template(server: LiveServer, endpoint_id: str, not_pid: int | None = None) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next(
            (
                t
                for t in _templates(server, endpoint_id)
                if t["state"] == "ready" and t.get("pid") != not_pid and _alive(t.get("pid"))
            ),
            None,
        )

    return wait_for(find, 120, what=f"a ready template of {endpoint_id}\n{server.log()[-3000:]}")


def _log(server: LiveServer, worker_id: str) -> str:
    return (server.home / "runtime" / "logs" / f"{worker_id}.log").read_text(errors="replace")


def _scaled_to_zero(server: LiveServer, endpoint_id: str, key: str | None = None) -> None:
    wait_for(lambda: server.workers(endpoint_id, key) == [], 60, what=f"{endpoint_id} to scale to zero")


def _learned(server: LiveServer, endpoint_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first cold start (plain: it teaches the template), then the template it made, at zero."""
    first = server.run_job(endpoint_id, {})
    assert "forking from template" not in _log(server, first["worker"])
    template = _ready_template(server, endpoint_id)
    _scaled_to_zero(server, endpoint_id)
    return first, template


def _deploy(server: LiveServer, name: str, tmp_path: Path, **fields: Any) -> str:
    fields = {"workersMin": 0, "workersMax": 2, "idleTimeout": 1, "gpuTypeIds": ["TEST_GPU"], **fields}
    return str(server.deploy(name, handler_dir(tmp_path, "numpy_identity"), **fields)["id"])


def test_a_numpy_handler_scales_from_zero_forked_from_its_template(
    server: LiveServer, tmp_path: Path
) -> None:
    ep = _deploy(server, "fb-numpy", tmp_path)
    first, template = _learned(server, ep)
    second = server.run_job(ep, {})
    assert second["sum"] == 45
    assert second["worker"] != first["worker"]
    assert second["ppid"] == template["pid"]  # the template is the worker's parent
    assert f"[ember] forking from template {template['key']}" in _log(server, second["worker"])
    assert template["imported"] >= 1  # numpy, at least, was imported before the worker existed


def test_forked_workers_have_their_own_id_key_and_gpu(server: LiveServer, tmp_path: Path) -> None:
    ep = _deploy(server, "fb-identity", tmp_path, scalerType="REQUEST_COUNT", scalerValue=1, idleTimeout=30)
    _first, template = _learned(server, ep)
    ids = []
    for _ in range(2):  # two jobs at once: two workers, both forked
        resp = server.api("POST", f"/v2/{ep}/run", json={"input": {"seconds": 3}})
        ids.append(resp.json()["id"])

    def outputs() -> list[dict[str, Any]] | None:
        records = [server.api("GET", f"/v2/{ep}/status/{i}").json() for i in ids]
        return [r["output"] for r in records] if all(r["status"] in FINAL_STATES for r in records) else None

    outs = wait_for(outputs, 120, what="two jobs")
    assert len({o["worker"] for o in outs}) == 2
    assert all(o["ppid"] == template["pid"] for o in outs)
    assert len({o["key_sha"] for o in outs}) == 2
    assert sorted(o["gpus"] for o in outs) == ["0", "1"]
    listed = {w["id"]: w for w in server.workers(ep)}
    for out in outs:
        assert listed[out["worker"]]["gpuDevices"] == [out["gpus"]]
        # /proc shows the worker's own environment (what exec and operators read), not the template's.
        assert hashlib.sha256(server.worker_key(out["worker"]).encode()).hexdigest() == out["key_sha"]
    template_env = Path(f"/proc/{template['pid']}/environ").read_bytes()
    assert b"RUNPOD_AI_API_KEY=" not in template_env and b"RUNPOD_POD_ID=" not in template_env
    resp = server.api("POST", f"/v1/workers/{outs[0]['worker']}/exec", json={"command": ["env"]})
    assert resp.status_code == 200 and f"RUNPOD_POD_ID={outs[0]['worker']}" in resp.json()["output"]


def test_with_its_template_killed_the_next_cold_start_falls_back(server: LiveServer, tmp_path: Path) -> None:
    ep = _deploy(server, "fb-killed", tmp_path)
    _first, template = _learned(server, ep)
    os.kill(template["pid"], signal.SIGKILL)
    wait_for(lambda: not _alive(template["pid"]), 30, what="the template to die")
    plain = server.run_job(ep, {})
    assert plain["sum"] == 45 and plain["ppid"] != template["pid"]
    # A fresh template takes over for the cold starts after that one.
    fresh = _ready_template(server, ep, not_pid=template["pid"])
    _scaled_to_zero(server, ep)
    forked = server.run_job(ep, {})
    assert forked["ppid"] == fresh["pid"]


def test_a_new_release_never_runs_the_old_releases_template(server: LiveServer, tmp_path: Path) -> None:
    ep = _deploy(server, "fb-release", tmp_path, env={"RELEASE": "1"})
    _first, old = _learned(server, ep)
    resp = server.api("PATCH", f"/v1/endpoints/{ep}", json={"env": {"RELEASE": "2"}})
    assert resp.status_code == 200 and resp.json()["release"] == 2
    # The old release's template is retired (it has no workers left, so it exits) and forgotten.
    wait_for(lambda: not _alive(old["pid"]), 30, what="the old release's template to exit")
    wait_for(lambda: not (server.home / "runtime" / "templates" / old["key"]).exists(), 30, what="its dir")
    second = server.run_job(ep, {})
    assert second["release"] == "2" and second["ppid"] != old["pid"]
    assert old["key"] not in _log(server, second["worker"])
    new = _ready_template(server, ep)
    assert new["release"] == 2 and new["key"] != old["key"]
    _scaled_to_zero(server, ep)
    third = server.run_job(ep, {})
    assert third["release"] == "2" and third["ppid"] == new["pid"]
    # Deleting the endpoint stops its template.
    assert server.api("DELETE", f"/v1/endpoints/{ep}").status_code in (200, 204)
    wait_for(lambda: not _alive(new["pid"]), 60, what="the deleted endpoint's template to exit")


def test_a_forked_worker_outlives_a_control_plane_restart_and_so_does_its_template(
    server: LiveServer, tmp_path: Path
) -> None:
    ep = _deploy(server, "fb-restart", tmp_path)
    _first, template = _learned(server, ep)
    resp = server.api("PATCH", f"/v1/endpoints/{ep}", json={"workersMin": 1, "idleTimeout": 600})
    assert resp.status_code == 200 and resp.json()["release"] == 1
    worker = wait_for(lambda: [w["id"] for w in server.workers(ep) if w["state"] == "IDLE"], 60)[0]
    assert f"forking from template {template['key']}" in _log(server, worker)
    server.kill()  # SIGKILL: the template's line to the control plane is cut
    server.start()
    out = server.run_job(ep, {})
    assert out["worker"] == worker and out["ppid"] == template["pid"]  # adopted, still its template's
    assert _alive(template["pid"])  # kept while its worker runs (it forks no more: its line is gone)
    resp = server.api("PATCH", f"/v1/endpoints/{ep}", json={"workersMin": 0, "idleTimeout": 1})
    assert resp.status_code == 200
    _scaled_to_zero(server, ep)
    wait_for(lambda: not _alive(template["pid"]), 60, what="the orphaned template to exit")
    # The restarted control plane's first cold start of the release is plain and starts a template of
    # its own (what to import is still known) for the next ones.
    assert server.run_job(ep, {})["ppid"] != template["pid"]
    fresh = _ready_template(server, ep, not_pid=template["pid"])
    _scaled_to_zero(server, ep)
    assert server.run_job(ep, {})["ppid"] == fresh["pid"]


# ---- the sandbox: a hostile tenant's forked worker --------------------------------------------------


@pytest.fixture(scope="module")
def sserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    need(
        "bwrap", shutil.which("bwrap") is not None, "bubblewrap is not installed (apt-get install bubblewrap)"
    )
    home = tmp_path_factory.mktemp("ember-flashboot-sandbox")
    try:
        with live_server(home, env={"EMBER_SANDBOX": "required", "EMBER_TEMPLATES_MAX": "4"}) as s:
            yield s
    finally:
        manager = VolumeManager(home / "volumes")
        for info in manager.list():
            manager.delete(info.volume_id)


def _volume(server: LiveServer, key: str, name: str) -> str:
    resp = server.api("POST", "/v1/networkvolumes", key, json={"name": name, "size": 1})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _idle_workers(server: LiveServer, key: str, endpoint_id: str, count: int) -> list[str]:
    def find() -> list[str] | None:
        idle = [w["id"] for w in server.workers(endpoint_id, key) if w["state"] == "IDLE"]
        return idle if len(idle) == count else None

    return wait_for(find, 90, what=f"{count} idle workers of {endpoint_id}\n{server.log()[-3000:]}")


@pytest.fixture(scope="module")
def tenants(sserver: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A's endpoint holding A's secret in its volume; B's hostile endpoint (Ember's SDK, so it learns)
    scaled from zero once, then to two workers that are both forked from B's template."""
    root = tmp_path_factory.mktemp("fb-tenants")
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
        networkVolumeId=_volume(sserver, key_b, "b-vol"),
        workersMin=0,
        idleTimeout=1,
    )["id"]
    run_as(sserver, key_b, ep_b, {})  # B's first, plain, cold start teaches B's template
    template = _ready_template(sserver, ep_b)
    _scaled_to_zero(sserver, ep_b, key_b)
    resp = sserver.api("PATCH", f"/v1/endpoints/{ep_b}", key_b, json={"workersMin": 2, "workersMax": 2})
    assert resp.status_code == 200 and resp.json()["release"] == 1, resp.text
    workers_b = _idle_workers(sserver, key_b, ep_b, 2)
    worker_a = _idle_workers(sserver, key_a, ep_a, 1)[0]
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
        "template": template,
        "worker_a": worker_a,
        "worker_b": workers_b[0],
        "workers_b": workers_b,
        "a_volume": a_volume,
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


def test_a_sandboxed_tenants_workers_are_forked(sserver: LiveServer, tenants: dict[str, Any]) -> None:
    template = tenants["template"]
    for worker in tenants["workers_b"]:
        assert f"[ember] forking from template {template['key']}" in _log(sserver, worker)
        meta = json.loads((sserver.home / "runtime" / "workers" / worker / "meta.json").read_text())
        assert meta["template"]["pid"] == template["pid"] and meta["sandbox"]["forked"] is True
        assert Path(f"/proc/{meta['pid']}/stat").read_text().split(") ")[1].split()[1] == str(template["pid"])


def test_a_forked_hostile_handler_reads_nothing_of_the_server_or_another_tenant(
    sserver: LiveServer, tenants: dict[str, Any]
) -> None:
    # In the template's pid namespace: its init, the template and B's own workers.
    assert_hostile_handler_contained(sserver, tenants)


def test_exec_in_a_forked_worker_runs_in_its_own_namespaces(
    sserver: LiveServer, tenants: dict[str, Any]
) -> None:
    seen = []
    for worker in tenants["workers_b"]:
        output = exec_as_b(
            sserver,
            {**tenants, "worker_b": worker},
            [f"cat {t} 2>&1 | head -c 300" for t in tenants["targets"]]
            + [
                f"echo {worker} > /tmp/mark-{worker}",
                "echo tmp=$(ls /tmp | grep mark- | tr '\\n' ,)",
                'echo "uid=$(id -u)"',
                'echo "volume=$(cat /runpod-volume/x)"',
                f"echo owned > {sserver.home / 'models' / 'x'} 2>&1",
                "cat /proc/[0-9]*/environ 2>&1 | tr '\\0' '\\n' | grep -c RUNPOD_AI_API_KEY",
            ],
        )
        lines = output.splitlines()
        assert "uid=0" not in lines and any(line.startswith("uid=") for line in lines), output
        assert "Read-only file system" in output or "No such file or directory" in output
        seen.append(next(line for line in lines if line.startswith("tmp=")))
    # Each forked worker has a /tmp of its own: neither sees the other's mark.
    assert seen == [f"tmp=mark-{w}," for w in tenants["workers_b"]], seen
    assert tenants["a_volume"].read_text() == "alice-secret"


def test_a_forked_workers_key_cannot_post_to_another_tenants_job(
    sserver: LiveServer, tenants: dict[str, Any]
) -> None:
    assert_b_cannot_post_to_a_job(sserver, tenants, sserver.worker_key(tenants["worker_b"]))
