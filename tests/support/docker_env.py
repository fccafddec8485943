"""Pytest fixtures for the real Docker engine, the test base image and the loopback registries.

`.ci/services.sh` provides them and prints their EMBER_TEST_* variables; a missing one skips on a
developer machine and fails in CI (through `tests.conftest.need`).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import need

_HINT = 'run `eval "$(bash .ci/services.sh)"` as root'


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client for the local engine (skips, or fails in CI, when the engine is down)."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:  # any failure means "no usable engine"
        need("docker", False, f"cannot reach the Docker engine ({exc}); {_HINT}")
        raise  # unreachable: need() skips or fails
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """A local image with python3 (EMBER_TEST_BASE_IMAGE), present in the engine."""
    import docker.errors

    name = os.environ.get("EMBER_TEST_BASE_IMAGE", "")
    need("docker", bool(name), f"EMBER_TEST_BASE_IMAGE is not set; {_HINT}")
    try:
        docker_client.images.get(name)
    except docker.errors.ImageNotFound:
        need("docker", False, f"base image {name} is not in the engine; {_HINT}")
    return name


@pytest.fixture(scope="session")
def registry() -> str:
    """host:port of a plain-HTTP registry on loopback (EMBER_TEST_REGISTRY), checked with GET /v2/."""
    address = os.environ.get("EMBER_TEST_REGISTRY", "")
    need("registry", bool(address), f"EMBER_TEST_REGISTRY is not set; {_HINT}")
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=5) as response:
            ok = response.status == 200
    except OSError as exc:
        ok = False
        address = f"{address} ({exc})"
    need("registry", ok, f"no registry answers at {address}; {_HINT}")
    return os.environ["EMBER_TEST_REGISTRY"]


@dataclass(frozen=True)
class AuthRegistry:
    host: str
    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password, "serveraddress": self.host}


@pytest.fixture(scope="session")
def auth_registry() -> AuthRegistry:
    """A loopback registry that wants a password (EMBER_TEST_AUTH_REGISTRY = user:password@host:port)."""
    value = os.environ.get("EMBER_TEST_AUTH_REGISTRY", "")
    credentials, _, host = value.rpartition("@")
    username, _, password = credentials.partition(":")
    need("registry", bool(host and username and password), f"EMBER_TEST_AUTH_REGISTRY is not set; {_HINT}")
    try:
        urllib.request.urlopen(f"http://{host}/v2/", timeout=5).close()
        status = 200
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    need("registry", status == 401, f"no password-protected registry answers at {host}; {_HINT}")
    return AuthRegistry(host, username, password)
