"""The launch hook that mounts an endpoint's network volume into its workers (read-write, at
/runpod-volume), on the host that runs them."""

from __future__ import annotations

import anyio.to_thread

from ember.backends.base import Mount
from ember.control.launcher import MountHook
from ember.core.errors import BackendError, NotFound
from ember.core.specs import EndpointSpec
from ember.volumes.store import CONTAINER_PATH, VolumeManager


def volume_hook(volumes: VolumeManager) -> MountHook:
    """A launch hook mounting the endpoint's network volume read-write at /runpod-volume."""

    async def hook(backend: str, spec: EndpointSpec) -> tuple[list[Mount], dict[str, str]]:
        if not spec.network_volume_id:
            return [], {}
        volume_id = spec.network_volume_id
        try:
            info = await anyio.to_thread.run_sync(volumes.ensure_mounted, volume_id)
        except NotFound:
            raise BackendError(f"network volume {volume_id} does not exist on this host") from None
        return [Mount(info.path, CONTAINER_PATH, read_only=False)], {}

    return hook
