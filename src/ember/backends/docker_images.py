"""Pulling a worker's image when the engine does not have it, with layer progress for the worker's
start (what `ember logs` and the worker's reason show while a big image arrives)."""

from __future__ import annotations

from collections.abc import Callable

import docker.errors
from docker.utils import parse_repository_tag

from ember.backends.docker_api import DockerClient
from ember.core.errors import BackendError

ProgressCallback = Callable[[str, str], None]

_LAYER_DONE = {"Pull complete", "Already exists"}


def ensure_image(
    client: DockerClient,
    worker_id: str,
    image: str,
    auth: dict[str, str] | None,
    on_progress: ProgressCallback | None,
) -> None:
    """Pull `image` (with `auth`) unless the engine has it; BackendError when the pull fails."""
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    repository, tag = parse_repository_tag(image)
    report = on_progress or (lambda _w, _t: None)
    report(worker_id, f"pulling {image}")
    try:
        _pull(client, worker_id, image, repository, tag or "latest", auth, report)
    except docker.errors.APIError as exc:
        hint = " (no or wrong registry credentials?)" if "auth" in str(exc.explanation).lower() else ""
        raise BackendError(f"docker: pulling {image} failed: {exc.explanation or exc}{hint}")


def _pull(
    client: DockerClient,
    worker_id: str,
    image: str,
    repository: str,
    tag: str,
    auth: dict[str, str] | None,
    report: ProgressCallback,
) -> None:
    layers: set[str] = set()
    done: set[str] = set()
    for event in client.api.pull(repository, tag, stream=True, decode=True, auth_config=auth):
        if "error" in event:
            raise BackendError(f"docker: pulling {image} failed: {event['error']}")
        layer, status = event.get("id"), event.get("status", "")
        if layer and status == "Pulling fs layer":
            layers.add(layer)
        elif layer and status in _LAYER_DONE:
            layers.add(layer)
            done.add(layer)
            report(worker_id, f"{image}: layer {layer} {status.lower()} ({len(done)}/{len(layers)})")
        elif status.startswith(("Status:", "Digest:")):
            report(worker_id, status)
