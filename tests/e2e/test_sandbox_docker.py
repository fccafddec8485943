"""The Docker backend's confinement end to end: on a server with two tenants, account B's hostile
handler (the unmodified runpod SDK in a container) and B's `exec` try to read what is not theirs
(EMBER_HOME's keys and database, the engine's socket, account A's volume and worker environment) and
to write where they may not, and B's worker key tries to post a result to A's job; every attempt fails,
A's data and job are intact, and B's own volume works at /runpod-volume."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from ember.volumes.store import VolumeManager
from tests.e2e.test_docker_deploy import docker_server, fixture_image, remove_containers  # noqa: F401
from tests.support.live import LiveServer, wait_for
from tests.support.tenants import assert_b_cannot_post_to_a_job, assert_nothing_leaked, exec_as_b

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def dserver(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str
) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("ember-docker-tenants")
    s = docker_server(home, registry)
    try:
        yield s
    finally:
        s.stop()
        remove_containers(docker_client, s)
        manager = VolumeManager(home / "volumes")
        for info in manager.list():  # unmount the loop images of the volumes
            manager.delete(info.volume_id)


def _endpoint(server: LiveServer, key: str, name: str, image: str, handler: str, volume_name: str) -> str:
    resp = server.api("POST", "/v1/networkvolumes", key, json={"name": volume_name, "size": 1})
    assert resp.status_code == 201, resp.text
    body = {
        "name": name,
        "imageName": image,
        "dockerStartCmd": f"python3 -u {handler}",
        "env": {"EMBER_TEST_SDK": "runpod"},
        "networkVolumeId": resp.json()["id"],
        "workersMin": 1,
        "workersMax": 1,
    }
    resp = server.api("POST", "/v1/endpoints", key, json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _runsync(server: LiveServer, key: str, endpoint_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
    resp = server.api(
        "POST",
        f"/v2/{endpoint_id}/runsync",
        key,
        json={"input": job_input},
        params={"wait": 120000},
        timeout=150,
    )
    assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text
    return dict(resp.json()["output"])


def _worker(server: LiveServer, key: str, endpoint_id: str) -> str:
    def find() -> str | None:
        return next(
            (w["id"] for w in server.workers(endpoint_id, key) if w["state"] in ("IDLE", "RUNNING")), None
        )

    return str(wait_for(find, 120, what=f"a ready worker of {endpoint_id}\n{server.log()[-3000:]}"))


# The environment of the worker's process: its identity (key included) reaches it through Ember's
# launcher in the container, not through the container's configuration.
_WORKER_ENVIRON = (
    "import os, sys\n"
    "for p in os.listdir('/proc'):\n"
    "    try: env = open('/proc/%s/environ' % p, 'rb').read() if p.isdigit() else b''\n"
    "    except OSError: continue\n"
    "    if b'RUNPOD_POD_ID=' in env: sys.stdout.buffer.write(env); break\n"
)


def _container_env(docker_client: Any, worker_id: str) -> dict[str, str]:
    container = docker_client.containers.get(f"ember-{worker_id}")
    code, out = container.exec_run(["python3", "-c", _WORKER_ENVIRON])
    assert code == 0 and out, out
    return dict(e.split("=", 1) for e in out.decode().split("\0") if "=" in e)


@pytest.fixture(scope="module")
def tenants(dserver: LiveServer, fixture_image: str, docker_client: Any) -> dict[str, Any]:  # noqa: F811
    key_a, key_b = dserver.new_account("alice"), dserver.new_account("mallory")
    ep_a = _endpoint(dserver, key_a, "a-data", fixture_image, "volume_rw.py", "a-vol")
    ep_b = _endpoint(dserver, key_b, "b-probe", fixture_image, "hostile.py", "b-vol")
    assert _runsync(dserver, key_a, ep_a, {"write": "x", "text": "alice-secret"})["root"] == "/runpod-volume"
    worker_a, worker_b = _worker(dserver, key_a, ep_a), _worker(dserver, key_b, ep_b)
    a_volume = next(p for p in (dserver.home / "volumes").rglob("x") if p.read_text() == "alice-secret")
    a_key = _container_env(docker_client, worker_a)["RUNPOD_AI_API_KEY"]
    home = dserver.home
    return {
        "key_a": key_a,
        "key_b": key_b,
        "ep_a": ep_a,
        "ep_b": ep_b,
        "worker_a": worker_a,
        "worker_b": worker_b,
        "b_key": _container_env(docker_client, worker_b)["RUNPOD_AI_API_KEY"],
        "a_volume": a_volume,
        "secrets": [dserver.admin_key, a_key, "alice-secret"],
        "targets": [
            str(home / "admin_key"),
            str(home / "secret.key"),
            str(home / "ember.db"),
            str(home),
            str(a_volume),
            str(a_volume.parent),
            "/var/run/docker.sock",
            "/run/docker.sock",
        ],
    }


def test_a_hostile_container_reads_nothing_of_the_server_or_another_tenant(
    dserver: LiveServer, tenants: dict[str, Any]
) -> None:
    probe = {
        "read": tenants["targets"],
        "write": [str(tenants["a_volume"]), "/proc/sysrq-trigger", "/sys/kernel/x"],
        "volume": "mallory's own",
    }
    out = _runsync(dserver, tenants["key_b"], tenants["ep_b"], probe)
    assert_nothing_leaked(json.dumps(out), tenants)
    assert all("error" in result for result in out["reads"].values()), out["reads"]
    assert all("error" in result for result in out["writes"].values()), out["writes"]
    # Its own pid namespace: docker's init, the handler and nothing of A's.
    assert len(out["processes"]) < 10, out["processes"]
    assert out["volume"] == "mallory's own"
    assert tenants["a_volume"].read_text() == "alice-secret"
    assert _runsync(dserver, tenants["key_a"], tenants["ep_a"], {"read": "x"})["text"] == "alice-secret"


def test_exec_stays_inside_the_container(dserver: LiveServer, tenants: dict[str, Any]) -> None:
    output = exec_as_b(
        dserver,
        tenants,
        [f"cat {t} 2>&1 | head -c 300" for t in tenants["targets"]]
        + ['echo "volume=$(cat /runpod-volume/x)"', "grep NoNewPrivs /proc/self/status"],
    )
    assert "volume=mallory's own" in output.splitlines(), output
    assert "NoNewPrivs:\t1" in output, output


def test_a_worker_key_cannot_post_to_another_tenants_job(
    dserver: LiveServer, tenants: dict[str, Any]
) -> None:
    assert_b_cannot_post_to_a_job(dserver, tenants, tenants["b_key"])
