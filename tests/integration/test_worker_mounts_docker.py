"""What a container worker gets from the model and volume launch hooks, against the real Docker engine:
the host model cache read-only at RunPod's /runpod-volume/huggingface-cache with the hub's offline env,
and the network volume read-write at /runpod-volume with its size enforced."""

# ruff: noqa: F401, F811

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.backends.base import LaunchSpec
from ember.backends.docker import LABEL_ENDPOINT, DockerBackend
from ember.control.clock import ManualClock
from ember.control.model_preparer import ModelPreparer
from ember.control.volume_mounts import volume_hook
from ember.core.specs import EndpointSpec
from ember.models.cache import ModelCache
from ember.store.facade import Store
from ember.volumes.store import VolumeManager
from tests.support.docker_env import base_image, docker_client
from tests.support.fakehub import FakeHub

pytestmark = [pytest.mark.docker]
UNIT_BYTES = 16 * 1024 * 1024
SCRIPT = r"""
import errno, json, os
out = {}
snap = os.environ["EMBER_MODEL_PATH"]
out["config"] = json.load(open(os.path.join(snap, "config.json")))
out["hub_layout"] = os.path.isdir(os.path.join(os.environ["HF_HUB_CACHE"], "models--org--tiny", "snapshots"))
out["offline"] = os.environ.get("HF_HUB_OFFLINE")
try:
    open(os.path.join(snap, "tamper.txt"), "w").write("x")
    out["cache_writable"] = True
except OSError:
    out["cache_writable"] = False
open("/runpod-volume/from-container.txt", "w").write("hello from the container")
written, code = 0, None
try:
    with open("/runpod-volume/fill.bin", "wb") as f:
        while written < 64 * 1024 * 1024:
            f.write(b"x" * 1048576); f.flush(); os.fsync(f.fileno()); written += 1048576
except OSError as exc:
    code = exc.errno
os.unlink("/runpod-volume/fill.bin")
out["enospc"] = code == errno.ENOSPC
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture
def endpoint_id(docker_client: Any) -> Iterator[str]:
    endpoint = f"ep_m{uuid.uuid4().hex[:10]}"
    yield endpoint
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint}"}
    ):
        container.remove(force=True)


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[VolumeManager]:
    manager = VolumeManager(tmp_path / "volumes", unit_bytes=UNIT_BYTES)
    yield manager
    for info in manager.list():
        manager.delete(info.volume_id)


def test_container_reads_the_cache_read_only_and_writes_the_volume_up_to_its_size(
    base_image: str, endpoint_id: str, volumes: VolumeManager, tmp_path: Path
) -> None:
    with FakeHub({"org/tiny": {"config.json": b'{"model_type": "tiny"}', "w.bin": b"w" * 50_000}}) as hub:
        cache = ModelCache(tmp_path / "models", endpoint_url=hub.url)
        cache.ensure("org/tiny")
    vol = volumes.create("vol-docker", 1)
    store = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")
    preparer = ModelPreparer(cache, store, ManualClock())
    ep = EndpointSpec(name="m", image_name=base_image, model_name="org/tiny", network_volume_id="vol-docker")

    async def scenario() -> str:
        mounts, env = [], {}
        for hook in (volume_hook(volumes), preparer.launch_hook):
            more_mounts, more_env = await hook("docker", ep)
            mounts.extend(more_mounts)
            env.update(more_env)
        backend = DockerBackend()
        worker_id = f"wk_{endpoint_id}"
        await backend.launch(
            LaunchSpec(
                worker_id=worker_id,
                endpoint_id=endpoint_id,
                account_id="acct_test",
                release=1,
                env=env,
                image=base_image,
                command=["python3", "-c", SCRIPT],
                mounts=tuple(mounts),
            )
        )
        deadline = time.monotonic() + 60
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = [line async for line in backend.logs(worker_id)]
            if any(line.startswith("RESULT ") for line in lines):
                break
            await asyncio.sleep(0.2)
        await backend.aclose()
        return next((line for line in lines if line.startswith("RESULT ")), "\n".join(lines))

    try:
        line = asyncio.run(scenario())
    finally:
        store.close()
    assert line.startswith("RESULT "), line
    out = json.loads(line[len("RESULT ") :])
    assert out["config"] == {"model_type": "tiny"} and out["hub_layout"] is True and out["offline"] == "1"
    assert out["cache_writable"] is False
    assert (Path(vol.path) / "from-container.txt").read_text() == "hello from the container"
    assert out["enospc"] is vol.enforced
