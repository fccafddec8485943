"""Warm containers on the real Docker engine, at the backend's interface: a parked container is paused,
renamed and no worker's; a resume gives the same container a new worker's identity through the launcher;
only a launch of the same account, endpoint, release and image gets it; time up, a new release, a
deleted endpoint, the maximum and shutdown remove it; a container that cannot be kept is stopped."""

# ruff: noqa: F401, F811

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from ember.backends.base import LaunchSpec, Mount, WarmParking
from ember.backends.docker import HARDENED_CAPS, LABEL_ENDPOINT, DockerBackend
from ember.backends.docker_warm import LABEL_CONTROL, LABEL_WARM_KEY, WARM_PREFIX, WarmConfig
from ember.core.errors import BackendError
from tests.support.docker_env import base_image, docker_client

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

# The worker: says who it is and which GPUs it has, leaves a stray process behind (a daemon of its
# own), and waits.
WORKER_CODE = (
    "import os, subprocess, sys, time\n"
    "env = os.environ\n"
    "print('worker', env['RUNPOD_POD_ID'], env['RUNPOD_AI_API_KEY'], env.get('CUDA_VISIBLE_DEVICES'),\n"
    "      sys.argv[1:], __name__, flush=True)\n"
    "subprocess.Popen(['sleep', '100000'], start_new_session=True)\n"
    "time.sleep(100000)\n"
)
WORKER = ["python3", "-u", "-c", WORKER_CODE, "an-arg"]
# What runs in a container now: each process's command line (docker-init, the launcher, a worker).
PROCESSES = (
    "import json, os\n"
    "out = []\n"
    "for p in os.listdir('/proc'):\n"
    "    if p.isdigit() and int(p) != os.getpid():\n"
    "        try: out.append(open('/proc/%s/cmdline' % p, 'rb').read().decode().split('\\0'))\n"
    "        except OSError: pass\n"
    "print(json.dumps(out))\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint_id(docker_client: Any) -> Iterator[str]:
    endpoint = f"ep_w{uuid.uuid4().hex[:10]}"
    yield endpoint
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint}"}
    ):
        container.remove(force=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_backend(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., DockerBackend]]:
    """Backends of one control plane (one instance id, one control root); the last made is closed."""
    instance = f"ei_w{uuid.uuid4().hex[:10]}"
    made: list[DockerBackend] = []

    def make(hold_s: float = 600.0, max_containers: int = 4) -> DockerBackend:
        warm = WarmConfig(hold_s, max_containers, tmp_path / "containers")
        backend = DockerBackend(instance=instance, logs_dir=tmp_path / "logs", warm=warm, clock=clock)
        made.append(backend)
        return backend

    yield make


def spec(endpoint_id: str, image: str, worker: str, **changes: Any) -> LaunchSpec:
    fields: dict[str, Any] = {
        "worker_id": f"wk_{endpoint_id}_{worker}",
        "endpoint_id": endpoint_id,
        "account_id": "acct_a",
        "release": 2,
        "env": {"RUNPOD_POD_ID": f"wk_{endpoint_id}_{worker}", "RUNPOD_AI_API_KEY": f"key-{worker}"},
        "image": image,
        "command": WORKER,
    }
    fields.update(changes)
    return LaunchSpec(**fields)


async def poll(probe: Callable[[], Awaitable[Any]], deadline_s: float = 30.0) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < end, f"condition not met within {deadline_s}s"
        await asyncio.sleep(0.1)


async def lines(backend: DockerBackend, worker_id: str) -> list[str]:
    return [line async for line in backend.logs(worker_id)]


async def started(backend: DockerBackend, s: LaunchSpec) -> list[str]:
    """The worker's log once it has said who it is."""

    async def said() -> list[str] | None:
        found = await lines(backend, s.worker_id)
        return found if any(line.startswith("worker ") for line in found) else None

    return list(await poll(said))


def parked(docker_client: Any, endpoint_id: str) -> list[Any]:
    found = docker_client.containers.list(all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint_id}"})
    return [c for c in found if c.name.startswith(WARM_PREFIX)]


def said(s: LaunchSpec, gpus: str | None = None) -> list[str]:
    return [f"worker {s.worker_id} key-{s.worker_id.rsplit('_', 1)[1]} {gpus} ['an-arg'] __main__"]


@pytest.mark.parametrize("form", ["script", "inline"])
async def test_a_parked_container_is_resumed_as_the_next_worker_with_its_own_identity(
    form: str,
    base_image: str,
    endpoint_id: str,
    docker_client: Any,
    make_backend: Callable[..., DockerBackend],
    tmp_path: Path,
) -> None:
    """`python script` resumes in the standby interpreter the launcher keeps; `python -c` starts afresh."""
    backend = make_backend()
    assert isinstance(backend, WarmParking)
    more: dict[str, Any] = {}
    if form == "script":
        (tmp_path / "app").mkdir()
        (tmp_path / "app" / "worker.py").write_text(WORKER_CODE)
        more = {
            "command": ["python3", "-u", "/app/worker.py", "an-arg"],
            "mounts": (Mount(str(tmp_path / "app"), "/app"),),
        }
    first = spec(endpoint_id, base_image, "w1", **more)
    await backend.launch(first)
    assert await started(backend, first) == said(first)
    container = docker_client.containers.get(f"ember-{first.worker_id}")
    # The identity reaches the worker through the launcher: the key is not in the container's config.
    assert not any("key-w1" in e for e in container.attrs["Config"]["Env"] or [])
    host = container.attrs["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["CapDrop"] == ["ALL"]
    assert sorted(host["CapAdd"]) == sorted(HARDENED_CAPS) and not host["Privileged"]
    assert ("/.ember", True) in [(m["Target"], m["ReadOnly"]) for m in host["Mounts"]]

    assert await backend.park(first.worker_id, grace_s=5) is True
    (kept,) = parked(docker_client, endpoint_id)
    assert kept.id == container.id and kept.status == "paused"
    assert kept.labels["ember.account-id"] == "acct_a" and kept.labels["ember.release"] == "2"
    assert kept.labels[LABEL_WARM_KEY] and kept.labels[LABEL_CONTROL]
    assert await backend.observe(endpoint_id) == []  # parked: no worker's
    assert await lines(backend, first.worker_id) == said(first)  # its kept log

    second = spec(endpoint_id, base_image, "w2", gpu_devices=("3",), **more)  # a GPU of its own
    await backend.launch(second)
    assert await started(backend, second) == said(second, "3")  # and none of w1's lines
    resumed = docker_client.containers.get(f"ember-{second.worker_id}")
    assert resumed.id == container.id and resumed.status == "running"
    assert [o.worker_id for o in await backend.observe(endpoint_id)] == [second.worker_id]
    # Nothing of the first worker runs on: not its process, nor the stray it left.
    ps = json.loads((await backend.exec(second.worker_id, ["python3", "-c", PROCESSES])).output)
    assert sum(argv[:2] == ["sleep", "100000"] for argv in ps) == 1, ps
    workers = [argv for argv in ps if "an-arg" in argv and "-I" not in argv]  # not init, not the launcher
    assert len(workers) == 1, ps
    assert ("--standby" in workers[0]) == (form == "script"), ps

    await backend.stop(second.worker_id, grace_s=2)
    assert docker_client.containers.list(all=True, filters={"id": container.id}) == []
    assert not (Path(backend._pool.dirs.root) / kept.labels[LABEL_CONTROL]).exists()  # type: ignore[union-attr]
    await backend.aclose()


async def test_only_the_same_account_endpoint_and_release_resume_a_parked_container(
    base_image: str, endpoint_id: str, docker_client: Any, make_backend: Callable[..., DockerBackend]
) -> None:
    backend = make_backend()
    first = spec(endpoint_id, base_image, "w1")
    await backend.launch(first)
    await started(backend, first)
    assert await backend.park(first.worker_id, grace_s=5)
    (kept,) = parked(docker_client, endpoint_id)

    others = [
        spec(endpoint_id, base_image, "b1", account_id="acct_b"),
        spec(endpoint_id, base_image, "r3", release=3),
        spec(endpoint_id, base_image, "c1", command=[*WORKER, "another command"]),
    ]
    for other in others:
        await backend.launch(other)
        assert docker_client.containers.get(f"ember-{other.worker_id}").id != kept.id, other
        await backend.stop(other.worker_id, grace_s=1)
    assert [c.id for c in parked(docker_client, endpoint_id)] == [kept.id]
    assert docker_client.containers.get(kept.id).status == "paused"
    await backend.aclose()
    assert parked(docker_client, endpoint_id) == []  # shutdown removes what is parked


async def test_time_up_a_new_release_a_deleted_endpoint_and_the_maximum_remove_parked_containers(
    base_image: str,
    endpoint_id: str,
    docker_client: Any,
    make_backend: Callable[..., DockerBackend],
    clock: Clock,
) -> None:
    backend = make_backend(hold_s=60, max_containers=2)

    async def park(*workers: str) -> list[str]:
        """Launch these workers side by side, then park them one by one (a second apart)."""
        specs = [spec(endpoint_id, base_image, w) for w in workers]
        for s in specs:
            await backend.launch(s)
            await started(backend, s)
        ids = [docker_client.containers.get(f"ember-{s.worker_id}").id for s in specs]
        for s in specs:
            clock.now += 1
            assert await backend.park(s.worker_id, grace_s=5)
        return ids

    ids = await park("w1", "w2", "w3")  # the first parked goes at once: at most 2
    assert {c.id for c in parked(docker_client, endpoint_id)} == set(ids[1:])

    await backend.sweep_warm({endpoint_id: 2})
    assert len(parked(docker_client, endpoint_id)) == 2  # in time, release served: kept
    clock.now += 61
    await backend.sweep_warm({endpoint_id: 2})
    assert parked(docker_client, endpoint_id) == []  # time is up

    await park("w4")
    await backend.sweep_warm({endpoint_id: 3})
    assert parked(docker_client, endpoint_id) == []  # the endpoint serves another release now

    await park("w5")
    await backend.sweep_warm({})
    assert parked(docker_client, endpoint_id) == []  # the endpoint is gone
    await backend.aclose()


async def test_a_restarted_control_plane_adopts_parked_containers(
    base_image: str, endpoint_id: str, docker_client: Any, make_backend: Callable[..., DockerBackend]
) -> None:
    first_backend = make_backend()
    first = spec(endpoint_id, base_image, "w1")
    await first_backend.launch(first)
    await started(first_backend, first)
    assert await first_backend.park(first.worker_id, grace_s=5)
    (kept,) = parked(docker_client, endpoint_id)
    # A crash (no aclose): the next process's backend finds the parked container and resumes it.
    second_backend = make_backend()
    second = spec(endpoint_id, base_image, "w2")
    await second_backend.launch(second)
    assert docker_client.containers.get(f"ember-{second.worker_id}").id == kept.id
    assert await started(second_backend, second) == said(second)
    await second_backend.stop(second.worker_id, grace_s=1)
    await second_backend.aclose()


async def test_a_container_that_cannot_be_kept_is_stopped_instead(
    base_image: str, endpoint_id: str, docker_client: Any, make_backend: Callable[..., DockerBackend]
) -> None:
    # Not started by a python interpreter: no launcher to hand identities over, so a plain container.
    backend = make_backend()
    plain = spec(endpoint_id, base_image, "w1", command=["sleep", "100000"])
    await backend.launch(plain)
    container = docker_client.containers.get(f"ember-{plain.worker_id}")
    assert any(e.startswith("RUNPOD_POD_ID=") for e in container.attrs["Config"]["Env"])
    assert await backend.park(plain.worker_id, grace_s=1) is False
    assert docker_client.containers.list(all=True, filters={"id": container.id}) == []
    await backend.aclose()
    # Warm containers off (hold 0): a python worker's container is plain too, and is stopped.
    off = make_backend(hold_s=0)
    s = spec(endpoint_id, base_image, "w2")
    await off.launch(s)
    assert await off.park(s.worker_id, grace_s=1) is False
    assert await off.observe(endpoint_id) == [] and parked(docker_client, endpoint_id) == []
    await off.aclose()


async def test_an_image_whose_python_cannot_run_the_launcher_gets_plain_containers_after_one_try(
    base_image: str, endpoint_id: str, docker_client: Any, make_backend: Callable[..., DockerBackend]
) -> None:
    backend = make_backend()
    missing = ["python3.99", "-u", "handler.py"]  # named like a python, but not in the image
    with pytest.raises(BackendError, match="launcher"):
        await backend.launch(spec(endpoint_id, base_image, "w1", command=missing))
    await backend.stop(f"wk_{endpoint_id}_w1", grace_s=1)
    await backend.launch(spec(endpoint_id, base_image, "w2", command=missing))
    plain = docker_client.containers.get(f"ember-wk_{endpoint_id}_w2")
    assert LABEL_CONTROL not in plain.labels  # no launcher: the command itself, as without warm containers
    await backend.stop(f"wk_{endpoint_id}_w2", grace_s=1)
    await backend.aclose()


async def test_following_a_workers_logs_ends_when_its_container_is_parked(
    base_image: str, endpoint_id: str, make_backend: Callable[..., DockerBackend]
) -> None:
    backend = make_backend()
    s = spec(endpoint_id, base_image, "w1")
    await backend.launch(s)
    await started(backend, s)
    follower = asyncio.create_task(_follow(backend, s.worker_id))

    async def following() -> bool:
        return s.worker_id in backend._follows

    await poll(following)
    assert await backend.park(s.worker_id, grace_s=5)
    assert await asyncio.wait_for(follower, 30) == said(s)
    await backend.aclose()


async def _follow(backend: DockerBackend, worker_id: str) -> list[str]:
    return [line async for line in backend.logs(worker_id, follow=True)]
