"""What a worker needs to load a cached model with an unchanged handler: environment and a read-only mount.

`from_pretrained("org/name")` then resolves from the host cache, offline. Pure: no disk, no process env.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from ember.models.state import repo_folder

# RunPod mounts its model cache here (HF_HOME), with the hub layout under `hub/`; handlers written for
# RunPod that scan /runpod-volume/huggingface-cache/hub/ work unchanged in Ember's containers.
CONTAINER_HF_HOME = "/runpod-volume/huggingface-cache"


def repo_cache_dir(hf_home: str, repo_id: str) -> str:
    """Where one model lives in the hub cache under `hf_home` (`hub/models--org--name`): all a worker of
    that model is shown of the cache, so it sees no other account's models nor Ember's records."""
    return str(PurePosixPath(hf_home) / "hub" / repo_folder(repo_id))


@dataclass(frozen=True)
class CacheMount:
    """A bind mount of one model's folder of the host cache into a container."""

    host_path: str
    container_path: str
    read_only: bool = True


def model_env(hf_home: str, repo_id: str, snapshot_path: str) -> dict[str, str]:
    """Environment variables for a worker whose HF_HOME is `hf_home` (the hub cache at `hf_home/hub`)."""
    hub = str(PurePosixPath(hf_home) / "hub")
    return {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub,
        "HUGGINGFACE_HUB_CACHE": hub,  # the name older huggingface_hub / transformers releases read
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "EMBER_MODEL_ID": repo_id,
        "EMBER_MODEL_PATH": snapshot_path,
    }


def container_model_env(
    host_home: str, host_snapshot: str, repo_id: str, container_home: str = CONTAINER_HF_HOME
) -> tuple[CacheMount, dict[str, str]]:
    """The read-only mount of the model's folder of `host_home` at the same place under `container_home`,
    and the env with container paths."""
    rel = PurePosixPath(host_snapshot).relative_to(PurePosixPath(host_home))
    snapshot_in_container = str(PurePosixPath(container_home) / rel)
    env = model_env(container_home, repo_id, snapshot_in_container)
    # The cache is read-only in the container; remote-code modules need somewhere writable.
    env["HF_MODULES_CACHE"] = "/tmp/hf_modules"
    mount = CacheMount(repo_cache_dir(host_home, repo_id), repo_cache_dir(container_home, repo_id), True)
    return mount, env
