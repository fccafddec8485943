"""Warm containers end to end on the Docker engine: a flex worker that scales down leaves its container
paused (no worker, nothing billed) and the next cold start of its endpoint resumes that very container
as a new worker with its own id and key; a new release, another account's endpoint or a deleted endpoint
never get it; its time running out, and the server's shutdown, remove it."""

# ruff: noqa: F401, F811

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.backends.docker import LABEL_ENDPOINT, LABEL_INSTANCE
from ember.backends.docker_warm import LABEL_WARM_KEY, WARM_PREFIX
from tests.e2e.test_docker_deploy import fixture_image, remove_containers
from tests.support.live import LiveServer, wait_for

pytestmark = pytest.mark.docker


def warm_server(home: Path, registry: str, hold_s: float) -> LiveServer:
    env = {"EMBER_WARM_CONTAINER_S": str(hold_s), "EMBER_WARM_CONTAINERS_MAX": "4"}
    return LiveServer(home, env=env, args=["--backend", "docker", "--registry", registry]).start()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str
) -> Iterator[LiveServer]:
    s = warm_server(tmp_path_factory.mktemp("ember-warm-home"), registry, hold_s=600)
    try:
        yield s
    finally:
        s.stop()
        remove_containers(docker_client, s)


def instance(server: LiveServer) -> str:
    return (server.home / "instance_id").read_text().strip()


def containers_of(docker_client: Any, server: LiveServer, endpoint_id: str) -> list[Any]:
    labels = [f"{LABEL_INSTANCE}={instance(server)}", f"{LABEL_ENDPOINT}={endpoint_id}"]
    return list(docker_client.containers.list(all=True, filters={"label": labels}))


def parked(docker_client: Any, server: LiveServer, endpoint_id: str) -> list[Any]:
    return [c for c in containers_of(docker_client, server, endpoint_id) if c.name.startswith(WARM_PREFIX)]


def endpoint(server: LiveServer, name: str, image: str, key: str | None = None) -> str:
    body = {
        "name": name,
        "imageName": image,
        "dockerStartCmd": "python3 -u whoami.py",
        "env": {"EMBER_TEST_SDK": "ember"},
        "workersMax": 1,
        "idleTimeout": 1,
    }
    resp = server.api("POST", "/v1/endpoints", key, json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def job(server: LiveServer, endpoint_id: str, key: str | None = None) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    resp = server.api(
        "POST",
        f"/v2/{endpoint_id}/runsync",
        key,
        json={"input": {"tag": tag}},
        params={"wait": 120000},
        timeout=150,
    )
    assert resp.status_code == 200 and resp.json()["status"] == "COMPLETED", resp.text
    output: dict[str, Any] = resp.json()["output"]
    assert output["input"] == {"tag": tag}
    return output


def scaled_down(docker_client: Any, server: LiveServer, endpoint_id: str, key: str | None = None) -> Any:
    """The paused container the endpoint's idle flex worker left once it stopped."""

    def settled() -> Any:
        if server.workers(endpoint_id, key):
            return None
        found = parked(docker_client, server, endpoint_id)
        return found[0] if len(found) == 1 and found[0].status == "paused" else None

    return wait_for(
        settled, 120, interval_s=0.1, what=f"a paused container of {endpoint_id}\n{server.log()[-3000:]}"
    )


def test_a_scaled_down_flex_workers_container_is_paused_and_resumed_by_the_next_cold_start(
    server: LiveServer, fixture_image: str, docker_client: Any
) -> None:
    ep = endpoint(server, "warm-resume", fixture_image)
    first = job(server, ep)
    kept = scaled_down(docker_client, server, ep)
    assert (
        kept.labels[LABEL_ENDPOINT] == ep
        and kept.labels["ember.release"] == "1"
        and kept.labels[LABEL_WARM_KEY]
    )
    (stopped,) = server.workers(ep, include_stopped=True)
    assert (
        stopped["id"] == first["worker"] and stopped["state"] == "STOPPED"
    )  # no longer a worker: not billed

    second = job(server, ep)
    assert second["worker"] != first["worker"] and second["key_digest"] != first["key_digest"]
    assert second["container"] == first["container"]  # the same container's filesystem
    resumed = docker_client.containers.get(f"ember-{second['worker']}")
    assert resumed.id == kept.id and resumed.status == "running"
    assert parked(docker_client, server, ep) == []
    # It scales down again, into the same container; deleting the endpoint removes it.
    assert scaled_down(docker_client, server, ep).id == kept.id
    assert server.api("DELETE", f"/v1/endpoints/{ep}").status_code in (200, 204)
    wait_for(
        lambda: not containers_of(docker_client, server, ep),
        60,
        what="the deleted endpoint's container to go",
    )


def test_a_new_release_never_resumes_the_old_releases_container(
    server: LiveServer, fixture_image: str, docker_client: Any
) -> None:
    ep = endpoint(server, "warm-release", fixture_image)
    first = job(server, ep)
    kept = scaled_down(docker_client, server, ep)
    resp = server.api("PATCH", f"/v1/endpoints/{ep}", json={"env": {"EMBER_TEST_SDK": "ember", "V": "2"}})
    assert resp.status_code == 200 and resp.json()["release"] == 2, resp.text
    second = job(server, ep)
    assert second["container"] != first["container"]
    assert docker_client.containers.get(f"ember-{second['worker']}").id != kept.id
    # The old release's container is removed, not kept for a release that no longer serves.
    wait_for(
        lambda: kept.id not in {c.id for c in containers_of(docker_client, server, ep)},
        60,
        what="release 1's parked container to go",
    )


def test_another_accounts_endpoint_never_gets_a_parked_container(
    server: LiveServer, fixture_image: str, docker_client: Any
) -> None:
    ep_a = endpoint(server, "warm-a", fixture_image)
    first = job(server, ep_a)
    kept = scaled_down(docker_client, server, ep_a)
    key_b = server.new_account("warm-bob")
    ep_b = endpoint(server, "warm-b", fixture_image, key_b)  # the same image and command
    other = job(server, ep_b, key_b)
    assert other["container"] != first["container"]
    assert docker_client.containers.get(f"ember-{other['worker']}").id != kept.id
    assert docker_client.containers.get(kept.id).status == "paused"  # still parked, still A's
    assert (
        kept.labels["ember.account-id"]
        != docker_client.containers.get(f"ember-{other['worker']}").labels["ember.account-id"]
    )


def test_time_up_and_shutdown_remove_parked_containers(
    tmp_path: Path, registry: str, fixture_image: str, docker_client: Any
) -> None:
    short = warm_server(tmp_path / "home", registry, hold_s=5)
    try:
        ep = endpoint(short, "warm-expiry", fixture_image)
        job(short, ep)
        scaled_down(docker_client, short, ep)
        wait_for(
            lambda: not containers_of(docker_client, short, ep),
            60,
            what="the parked container's time to run out",
        )
        job(short, ep)  # a cold start without a parked container: a new one, parked again afterwards
        scaled_down(docker_client, short, ep)
        short.stop()
        assert containers_of(docker_client, short, ep) == []
    finally:
        short.stop()
        remove_containers(docker_client, short)
