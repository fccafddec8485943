"""The backend contract, held against the real Docker engine with the small Debian base image."""

# ruff: noqa: F401, F811

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ember.backends.base import LaunchSpec, Mount, Observed
from ember.backends.docker import LABEL_ENDPOINT, DockerBackend
from ember.core.errors import BackendError, NotFound

# The fixtures are imported by name until tests/conftest.py lists tests.support.docker_env in pytest_plugins.
from tests.support.docker_env import AuthRegistry, auth_registry, base_image, docker_client, registry

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

SLEEP_FOREVER = ["python3", "-c", "import time\nwhile True: time.sleep(1)"]


@pytest.fixture
def endpoint_id(docker_client: Any) -> Iterator[str]:
    """A fresh endpoint id; every container labelled with it is removed afterwards."""
    endpoint = f"ep_t{uuid.uuid4().hex[:10]}"
    yield endpoint
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint}"}
    ):
        container.remove(force=True)


def spec(endpoint_id: str, image: str, worker: str = "w1", **changes: Any) -> LaunchSpec:
    fields: dict[str, Any] = {
        "worker_id": f"wk_{endpoint_id}_{worker}",
        "endpoint_id": endpoint_id,
        "account_id": "acct_test",
        "release": 2,
        "env": {"EMBER_TEST_VAR": "hello"},
        "image": image,
        "command": SLEEP_FOREVER,
    }
    fields.update(changes)
    return LaunchSpec(**fields)


async def poll(probe: Callable[[], Awaitable[Any]], deadline_s: float = 30.0) -> Any:
    """Await `probe` until it returns something truthy, or fail after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < end, f"condition not met within {deadline_s}s"
        await asyncio.sleep(0.1)


async def test_launch_is_idempotent_and_observe_reports_the_worker(base_image: str, endpoint_id: str) -> None:
    backend = DockerBackend()
    s = spec(endpoint_id, base_image)
    await backend.launch(s)
    await backend.launch(s)
    observed = await backend.observe(endpoint_id)
    assert len(observed) == 1
    worker = observed[0]
    assert (worker.worker_id, worker.endpoint_id, worker.release) == (s.worker_id, endpoint_id, 2)
    assert worker.running and worker.exit_code is None
    assert worker.started_at is not None and abs(worker.started_at - time.time()) < 120
    assert worker in await backend.observe()  # unfiltered listing includes it
    await backend.aclose()


async def test_stop_removes_the_worker_and_is_idempotent(base_image: str, endpoint_id: str) -> None:
    backend = DockerBackend()
    s = spec(endpoint_id, base_image)
    await backend.launch(s)
    await backend.stop(s.worker_id, grace_s=1)
    assert await backend.observe(endpoint_id) == []
    await backend.stop(s.worker_id, grace_s=1)
    await backend.stop("wk_never_existed", grace_s=1)
    await backend.aclose()


async def test_stop_sends_sigterm_first_so_the_worker_can_exit_cleanly(
    base_image: str, endpoint_id: str
) -> None:
    backend = DockerBackend()
    s = spec(endpoint_id, base_image)  # python as the worker's main process, with no SIGTERM handler
    await backend.launch(s)
    started = time.monotonic()
    await backend.stop(s.worker_id, grace_s=30)
    assert time.monotonic() - started < 15, "SIGTERM did not reach the worker; it waited for the kill"
    await backend.aclose()


async def test_a_crashed_worker_is_observed_stopped_with_its_exit_code(
    base_image: str, endpoint_id: str
) -> None:
    backend = DockerBackend()
    s = spec(endpoint_id, base_image, command=["python3", "-c", "import sys; sys.exit(3)"])
    await backend.launch(s)

    async def exited() -> Observed | None:
        found = await backend.observe(endpoint_id)
        return found[0] if found and not found[0].running else None

    worker = await poll(exited)
    assert worker.exit_code == 3
    assert "exited" in worker.detail
    # Launching the same id again replaces the dead container with a running one.
    await backend.launch(spec(endpoint_id, base_image))
    assert [o.running for o in await backend.observe(endpoint_id)] == [True]
    await backend.aclose()


async def test_a_fresh_backend_instance_readopts_running_workers(base_image: str, endpoint_id: str) -> None:
    first = DockerBackend()
    s = spec(endpoint_id, base_image)
    await first.launch(s)
    await first.aclose()
    second = DockerBackend()
    assert [o.worker_id for o in await second.observe(endpoint_id)] == [s.worker_id]
    await second.launch(s)  # still a no-op: identity lives in the container labels
    assert len(await second.observe(endpoint_id)) == 1
    await second.stop(s.worker_id, grace_s=1)
    assert await second.observe(endpoint_id) == []
    await second.aclose()


async def test_logs_returns_stdout_and_stderr_lines_and_follow_ends_with_the_container(
    base_image: str,
    endpoint_id: str,
) -> None:
    backend = DockerBackend()
    code = (
        "import sys,time\nprint('one', flush=True)\nprint('two', file=sys.stderr, flush=True)\n"
        "time.sleep(1)\nprint('three')"
    )
    s = spec(endpoint_id, base_image, command=["python3", "-c", code])
    await backend.launch(s)

    async def collect(**kwargs: Any) -> list[str]:
        return [line async for line in backend.logs(s.worker_id, **kwargs)]

    # stdout and stderr are separate pipes: lines written within a moment of each other on the two may
    # be logged in either order, so only the order within a stream (and the later "three") is fixed.
    followed = await asyncio.wait_for(collect(follow=True), timeout=30)
    assert sorted(followed[:2]) == ["one", "two"] and followed[2:] == ["three"]
    again = await collect()
    assert sorted(again[:2]) == ["one", "two"] and again[2:] == ["three"]
    assert await collect(tail=1) == ["three"]
    await backend.aclose()


async def test_exec_runs_inside_the_debian_container(base_image: str, endpoint_id: str) -> None:
    backend = DockerBackend()
    s = spec(endpoint_id, base_image)
    await backend.launch(s)
    result = await backend.exec(s.worker_id, ["cat", "/etc/os-release"])
    assert result.exit_code == 0
    assert b"Debian" in result.output
    failing = await backend.exec(s.worker_id, ["sh", "-c", "exit 7"])
    assert failing.exit_code == 7
    with pytest.raises(NotFound):
        await backend.exec("wk_never_existed", ["true"])
    argv = backend.shell_command(s.worker_id)
    assert argv[:3] == ["docker", "exec", "-it"] and argv[-1] == "/bin/sh"
    await backend.aclose()


async def test_worker_gets_env_gpu_devices_bind_mounts_and_host_network(
    base_image: str,
    endpoint_id: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "model.txt").write_text("weights")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    backend = DockerBackend()
    s = spec(
        endpoint_id,
        base_image,
        gpu_devices=("1", "3"),
        mounts=(Mount(source=str(tmp_path), target="/models", read_only=True),),
    )
    await backend.launch(s)
    env = (await backend.exec(s.worker_id, ["env"])).output.decode()
    assert "EMBER_TEST_VAR=hello" in env.splitlines()
    assert "CUDA_VISIBLE_DEVICES=1,3" in env.splitlines()
    read = await backend.exec(s.worker_id, ["cat", "/models/model.txt"])
    assert read.output == b"weights"
    write = await backend.exec(s.worker_id, ["sh", "-c", "echo x > /models/new.txt"])
    assert write.exit_code != 0, "a read-only mount accepted a write"
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
    reached = await backend.exec(s.worker_id, ["python3", "-c", connect])
    listener.close()
    assert reached.exit_code == 0, reached.output.decode()
    await backend.aclose()


async def test_launch_pulls_a_missing_image_from_the_registry_and_reports_progress(
    base_image: str,
    registry: str,
    endpoint_id: str,
    docker_client: Any,
) -> None:
    ref = f"{registry}/ember-test/pull-{endpoint_id}:v1"
    docker_client.images.get(base_image).tag(ref)
    for event in docker_client.api.push(ref, stream=True, decode=True):
        assert "error" not in event, event
    docker_client.images.remove(ref)
    progress: list[tuple[str, str]] = []
    backend = DockerBackend(on_progress=lambda worker, text: progress.append((worker, text)))
    s = spec(endpoint_id, ref)
    try:
        await backend.launch(s)
        assert [o.running for o in await backend.observe(endpoint_id)] == [True]
        assert progress and progress[0] == (s.worker_id, f"pulling {ref}")
    finally:
        await backend.stop(s.worker_id, grace_s=0)
        await backend.aclose()
        docker_client.images.remove(ref, force=True)


async def test_missing_image_and_unreachable_engine_raise_backend_errors(
    registry: str,
    endpoint_id: str,
) -> None:
    backend = DockerBackend()
    with pytest.raises(BackendError, match="no-such-image"):
        await backend.launch(spec(endpoint_id, f"{registry}/ember-test/no-such-image:v1"))
    await backend.aclose()
    offline = DockerBackend(client_factory=lambda: docker.DockerClient(base_url="unix:///nonexistent.sock"))
    with pytest.raises(BackendError, match="docker"):
        await offline.observe()
    await offline.aclose()


async def test_launch_pulls_from_a_password_protected_registry_with_the_spec_auth(
    base_image: str,
    auth_registry: AuthRegistry,
    endpoint_id: str,
    docker_client: Any,
) -> None:
    ref = f"{auth_registry.host}/ember-test/private-{endpoint_id}:v1"
    docker_client.images.get(base_image).tag(ref)
    for event in docker_client.api.push(
        ref, stream=True, decode=True, auth_config=auth_registry.auth_config()
    ):
        assert "error" not in event, event
    docker_client.images.remove(ref)
    backend = DockerBackend()
    try:
        with pytest.raises(BackendError, match="pulling .* failed: .*basic auth credentials"):
            await backend.launch(spec(endpoint_id, ref, worker="anon"))
        s = spec(endpoint_id, ref, registry_auth=auth_registry.auth_config())
        await backend.launch(s)
        assert [o.worker_id for o in await backend.observe(endpoint_id) if o.running] == [s.worker_id]
    finally:
        await backend.aclose()
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


async def test_a_worker_container_is_hardened(base_image: str, endpoint_id: str, docker_client: Any) -> None:
    """No new privileges, only the documented capabilities, a pids limit, nothing but the spec's mounts,
    and never the engine's socket."""
    backend = DockerBackend(pids_limit=40)
    s = spec(endpoint_id, base_image)
    await backend.launch(s)
    host = docker_client.containers.get(f"ember-{s.worker_id}").attrs["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["PidsLimit"] == 40
    assert host["CapDrop"] == ["ALL"] and not host["Privileged"] and not host.get("Binds")
    status = (await backend.exec(s.worker_id, ["cat", "/proc/self/status"])).output.decode()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    cap_net_raw, cap_sys_admin, cap_chown = 13, 21, 0
    effective = int(fields["CapEff"], 16)
    assert not effective & (1 << cap_net_raw) and not effective & (1 << cap_sys_admin)
    assert effective & (1 << cap_chown)
    spawn = "import subprocess\nps = [subprocess.Popen(['sleep', '30']) for _ in range(80)]"
    forked = await backend.exec(s.worker_id, ["python3", "-c", spawn])
    assert forked.exit_code != 0 and b"Resource temporarily unavailable" in forked.output
    socket_spec = spec(
        endpoint_id, base_image, worker="w2", mounts=(Mount(source="/var/run/docker.sock", target="/d.sock"),)
    )
    with pytest.raises(BackendError, match="may not mount"):
        await backend.launch(socket_spec)
    await backend.aclose()
