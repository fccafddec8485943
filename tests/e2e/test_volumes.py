"""Network volumes end to end: a real Ember server, local-process workers, `/runpod-volume` data that
outlives workers and releases, a hard size limit where the host allows it, deletion refused while
attached, per-second billing of the provisioned size, and the `ember volumes` commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.volumes.store import VolumeManager
from tests.conftest import need
from tests.support.live import LiveServer, handler_dir, live_server, wait_for

UNIT_BYTES = 16 * 1024 * 1024  # one "GB" of this server's volumes, so that filling one stays quick
# $2592 per GB-month is exactly $0.001 (1000 micro-dollars) per GB-second: easy to check exactly.
PRICE = "2592"


@pytest.fixture(scope="module")
def vserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("ember-volumes")
    env = {"EMBER_VOLUME_UNIT_BYTES": str(UNIT_BYTES), "EMBER_VOLUME_PRICE_GB_MONTH": PRICE}
    try:
        with live_server(home, env=env) as s:
            yield s
    finally:
        manager = VolumeManager(home / "volumes", unit_bytes=UNIT_BYTES)
        for info in manager.list():  # unmount loop images left behind by a failed test
            manager.delete(info.volume_id)


def idle_worker(server: LiveServer, endpoint_id: str, release: int) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for w in server.workers(endpoint_id):
            if w["state"] == "IDLE" and w["release"] == release:
                return w
        return None

    return wait_for(find, 90, what=f"an idle worker of release {release}\n{server.log()[-3000:]}")


def create_volume(server: LiveServer, name: str, size: int) -> dict[str, Any]:
    resp = server.api("POST", "/v1/networkvolumes", json={"name": name, "size": size})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_volume_data_outlives_worker_and_redeploy_and_an_attached_volume_cannot_be_deleted(
    vserver: LiveServer, tmp_path: Path
) -> None:
    vol = create_volume(vserver, "shared-data", 1)
    assert vol["size"] == 1 and vol["endpoints"] == [] and vol["usedBytes"] == 0
    ep = vserver.deploy(
        "volume-rw", handler_dir(tmp_path, "volume_rw"), networkVolumeId=vol["id"], workersMin=1, workersMax=1
    )
    first = idle_worker(vserver, ep["id"], 1)
    text = "written by the first worker " + os.urandom(4).hex()
    out = vserver.run_job(ep["id"], {"write": "hello.txt", "text": text})
    assert out["worker"] == first["id"]
    # The worker wrote into the volume's directory on the host, not somewhere of its own.
    assert Path(out["root"]).resolve() == (vserver.home / "volumes" / vol["id"] / "data").resolve()

    # A redeploy (new release) replaces the worker; the next worker reads what the first one wrote.
    resp = vserver.api("PATCH", f"/v1/endpoints/{ep['id']}", json={"env": {"REDEPLOY": "1"}})
    assert resp.status_code == 200 and resp.json()["release"] == 2, resp.text
    second = idle_worker(vserver, ep["id"], 2)
    wait_for(
        lambda: all(w["id"] != first["id"] for w in vserver.workers(ep["id"])), 60, what="old worker gone"
    )
    out = vserver.run_job(ep["id"], {"read": "hello.txt"})
    assert out == {**out, "text": text, "worker": second["id"]}

    info = vserver.api("GET", f"/v1/networkvolumes/{vol['id']}").json()
    assert info["usedBytes"] > 0
    assert info["endpoints"] == [{"id": ep["id"], "name": "volume-rw"}]

    resp = vserver.api("DELETE", f"/v1/networkvolumes/{vol['id']}")
    assert resp.status_code == 409, resp.text
    message = resp.json()["error"]
    assert "attached" in message and "volume-rw" in message and ep["id"] in message

    # Billed per second of provisioned size: 1 GB at $0.001 per GB-second.
    billed = wait_for(
        lambda: (
            (v := vserver.api("GET", f"/v1/networkvolumes/{vol['id']}").json())["billedSeconds"] >= 2 and v
        ),
        30,
        what="volume metered",
    )
    assert billed["billed"] == f"{billed['billedSeconds'] * 1000 / 1e6:.6f}"

    # Once the endpoint is gone the volume can be deleted; its data goes with it.
    assert vserver.api("DELETE", f"/v1/endpoints/{ep['id']}").status_code == 200
    resp = vserver.api("DELETE", f"/v1/networkvolumes/{vol['id']}")
    assert resp.status_code == 200, resp.text
    assert vserver.api("GET", f"/v1/networkvolumes/{vol['id']}").status_code == 404
    assert not (vserver.home / "volumes" / vol["id"]).exists()


def test_writing_past_the_size_fails_where_enforced_and_growing_makes_room(
    vserver: LiveServer, tmp_path: Path
) -> None:
    vol = create_volume(vserver, "small", 1)
    need(
        "loop-mounted volumes",
        vol["sizeEnforced"],
        vol.get("note", "the host cannot enforce volume sizes (root, mkfs.ext4 and loop devices needed)"),
    )
    ep = vserver.deploy(
        "volume-fill",
        handler_dir(tmp_path, "volume_rw"),
        networkVolumeId=vol["id"],
        workersMin=1,
        workersMax=1,
    )
    try:
        idle_worker(vserver, ep["id"], 1)
        out = vserver.run_job(ep["id"], {"fill_mb": 64})
        assert out["enospc"] is True and out["filled_bytes"] < UNIT_BYTES, out

        resp = vserver.api("PATCH", f"/v1/networkvolumes/{vol['id']}", json={"size": 3})
        assert resp.status_code == 200 and resp.json()["size"] == 3, resp.text
        out = vserver.run_job(ep["id"], {"fill_mb": 24})
        assert out["errno"] is None and out["filled_bytes"] == 24 * 1024 * 1024, out

        resp = vserver.api("PATCH", f"/v1/networkvolumes/{vol['id']}", json={"size": 2})
        assert resp.status_code == 400 and resp.json()["problems"][0]["field"] == "size"
    finally:
        vserver.api("DELETE", f"/v1/endpoints/{ep['id']}")
    wait_for(
        lambda: vserver.api("DELETE", f"/v1/networkvolumes/{vol['id']}").status_code == 200,
        60,
        what="volume deleted once its endpoint is gone",
    )


def test_bad_volume_requests_get_clear_errors(vserver: LiveServer, tmp_path: Path) -> None:
    for body in ({"name": "x", "size": 0}, {"name": "", "size": 1}, {"size": 1}, {"name": "x", "size": "1"}):
        resp = vserver.api("POST", "/v1/networkvolumes", json=body)
        assert resp.status_code == 400, (body, resp.text)
    assert vserver.api("GET", "/v1/networkvolumes/vol-missing").status_code == 404
    resp = vserver.api(
        "POST",
        "/v1/endpoints",
        json={
            "name": "no-volume",
            "sourceDir": str(handler_dir(tmp_path, "volume_rw")),
            "networkVolumeId": "vol-x",
        },
    )
    assert resp.status_code == 400 and "networkVolumeId" in resp.text


def test_volumes_cli_creates_lists_grows_and_removes(vserver: LiveServer) -> None:
    made = vserver.cli("volumes", "create", "cli-vol", "--size", "1", "--json")
    assert made.returncode == 0, made.stderr
    vol = json.loads(made.stdout)
    listed = vserver.cli("volumes", "ls", "--json")
    assert vol["id"] in [v["id"] for v in json.loads(listed.stdout)]
    grown = vserver.cli("volumes", "resize", vol["id"], "--size", "2")
    assert grown.returncode == 0 and "2 GB" in grown.stdout, grown.stderr
    shrink = vserver.cli("volumes", "resize", vol["id"], "--size", "1")
    assert shrink.returncode == 1 and "only grow" in shrink.stderr
    removed = vserver.cli("volumes", "rm", vol["id"])
    assert removed.returncode == 0, removed.stderr
    assert vol["id"] not in [v["id"] for v in json.loads(vserver.cli("volumes", "ls", "--json").stdout)]
