"""A private image through the account's registry auth, on the real Docker engine and the loopback
registry that wants a password: a server whose home holds no registry login pulls the image with the
endpoint's `containerRegistryAuthId` and serves it; without one, the worker fails to start and says
why. The password shows in no CLI output and no server log."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ember.build.image import build_image, push_image
from ember.build.registry import CredentialStore, registry_host
from ember.build.scaffold import vendor_sdk
from tests.e2e.test_docker_deploy import ember, ok, remove_containers, runsync
from tests.support.docker_env import AuthRegistry
from tests.support.live import HANDLERS, LiveServer, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def private_image(
    tmp_path_factory: pytest.TempPathFactory, base_image: str, auth_registry: AuthRegistry, docker_client: Any
) -> Iterator[str]:
    """The echo handler with Ember's SDK, pushed to the password-protected registry and then removed from
    the engine, so a worker has to pull it."""
    context = tmp_path_factory.mktemp("private-image")
    vendor_sdk(context)
    shutil.copyfile(HANDLERS / "echo.py", context / "handler.py")
    (context / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/ember-sdk\n"
        "COPY vendor/ /opt/ember-sdk/\nCOPY handler.py /app/\n"
        'WORKDIR /app\nCMD ["python3", "-u", "handler.py"]\n'
    )
    ref = f"{auth_registry.host}/ember-test/cra-{uuid.uuid4().hex[:8]}:v1"
    build_image(context, ref, on_log=lambda _line: None)
    push_image(ref, auth=auth_registry.auth_config(), on_log=lambda _line: None)
    docker_client.images.remove(ref)
    yield ref
    remove_from_engine(docker_client, ref)


def remove_from_engine(docker_client: Any, ref: str) -> None:
    try:
        docker_client.images.remove(ref, force=True)
    except Exception:  # never pulled (an earlier failure) or already gone
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[LiveServer]:
    """A Docker-backend server with a fresh home (no `ember registry login`) and an empty Docker client
    config, so no credential can come from anywhere but the endpoint's registry auth."""
    home = tmp_path_factory.mktemp("ember-cra-home")
    docker_config = tmp_path_factory.mktemp("docker-config")
    s = LiveServer(home, args=["--backend", "docker"], env={"DOCKER_CONFIG": str(docker_config)}).start()
    try:
        yield s
    finally:
        s.stop()
        remove_containers(docker_client, s)


def failed_pull(server: LiveServer, endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """Create `endpoint`, queue a job, and return its workers whose start failed on the registry's
    credentials (the hint "no or wrong registry credentials?"); the endpoint is deleted afterwards."""
    created = server.api("POST", "/v1/endpoints", json=endpoint)
    assert created.status_code == 201, created.text
    endpoint_id = created.json()["id"]
    assert server.api("POST", f"/v2/{endpoint_id}/run", json={"input": {}}).status_code == 200
    failed = wait_for(
        lambda: [
            w
            for w in server.workers(endpoint_id, include_stopped=True)
            if "no or wrong registry credentials?" in (w["reason"] or "")
        ],
        120,
        interval_s=0.2,
        what=f"the worker of endpoint {endpoint['name']} to fail its pull",
    )
    assert server.api("DELETE", f"/v1/endpoints/{endpoint_id}").status_code == 200
    return failed  # type: ignore[no-any-return]


def test_a_private_image_runs_with_the_endpoints_registry_auth_and_fails_clearly_without(
    server: LiveServer, private_image: str, auth_registry: AuthRegistry
) -> None:
    assert CredentialStore(server.home).get(registry_host(private_image)) is None

    # Without an auth the pull is anonymous: the worker cannot start, and its reason says why.
    failed = failed_pull(
        server,
        {"name": "no-auth", "imageName": private_image, "env": {"EMBER_TEST_SDK": "ember"}, "workersMax": 1},
    )
    assert "could not start" in failed[0]["reason"] and private_image in failed[0]["reason"], failed
    assert "no or wrong registry credentials?" in failed[0]["reason"], failed

    # With the account's auth (added and used through the CLI) the same image is pulled and serves.
    added = ember(
        server,
        "registry",
        "add",
        "ci-registry",
        "--username",
        auth_registry.username,
        "--password-stdin",
        stdin=auth_registry.password + "\n",
    )
    auth_id = ok(added).strip()
    record = json.loads(
        ok(
            ember(
                server,
                "deploy",
                "--image",
                private_image,
                "--name",
                "with-auth",
                "--registry-auth",
                "ci-registry",
                "--env",
                "EMBER_TEST_SDK=ember",
                "--workers-max",
                "1",
                "--json",
            )
        )
    )
    assert record["containerRegistryAuthId"] == auth_id
    result = runsync(server, record["id"], {"private": True})
    assert result["status"] == "COMPLETED", result
    assert result["output"]["echo"] == {"private": True}

    assert CredentialStore(server.home).hosts() == []  # the host never had a login of its own
    outputs = [added.stdout, added.stderr, json.dumps(record), server.log()]
    outputs += [
        r.text for r in (server.api("GET", "/v1/containerregistryauth"), server.api("GET", "/v1/endpoints"))
    ]
    assert not [text for text in outputs if auth_registry.password in text]


def test_a_wrong_password_fails_the_start_with_the_credentials_hint(
    server: LiveServer, private_image: str, auth_registry: AuthRegistry, docker_client: Any
) -> None:
    remove_from_engine(docker_client, private_image)  # the previous test's pull must not serve this one
    wrong = server.api(
        "POST",
        "/v1/containerregistryauth",
        json={"name": "wrong", "username": auth_registry.username, "password": "not-the-password"},
    )
    assert wrong.status_code == 201, wrong.text
    fields = {"name": "wrong-auth", "imageName": private_image, "workersMax": 1}
    failed = failed_pull(server, {**fields, "containerRegistryAuthId": wrong.json()["id"]})
    assert "not-the-password" not in json.dumps(failed) + server.log()
