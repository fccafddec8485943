"""The compute this control plane runs workers on, built from Settings: its backends (local processes
always, Docker when asked for or reachable), this machine's GPU slots, the installation's id that labels
its containers, and how a local worker's Python environment is prepared. Called by the composition root
(`ember.app`)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from ember.backends.base import Backend
from ember.control.clock import Clock
from ember.control.launcher import PreparePython
from ember.core.hosts import LOCAL
from ember.core.placement import Host
from ember.settings import Settings

log = logging.getLogger("ember")


def default_backends(
    settings: Settings, clock: Clock, releases: Callable[[], Mapping[str, int]] | None = None
) -> dict[str, Backend]:
    """Local processes always; Docker when asked for (backend=docker, EMBER_DOCKER=1) or when an engine
    answers. An unreachable engine never fails startup: launches on it fail with a clear error instead.
    `releases` (each live endpoint's current release) lets the local backend retire stale templates."""
    from ember.backends.local import LocalBackend
    from ember.backends.sandbox import SandboxConfig
    from ember.core.sandbox import parse_mode, startup_warning

    home = settings.home.absolute()
    sandbox = SandboxConfig(parse_mode(settings.sandbox), settings.sandbox_uid_base, hidden=(str(home),))
    warning = startup_warning(sandbox.mode, available=sandbox.bwrap is not None)
    if warning:
        log.warning(warning)
    local = LocalBackend(
        home / "runtime",
        python=sys.executable,
        sandbox=sandbox,
        templates_max=settings.templates_max,
        releases=releases,
    )
    backends: dict[str, Backend] = {"local": local}
    wanted = settings.backend == "docker" or os.environ.get("EMBER_DOCKER", "") == "1"
    if wanted or (os.environ.get("EMBER_DOCKER", "") != "0" and _docker_reachable()):
        from ember.backends.docker import DockerBackend
        from ember.backends.docker_warm import WarmConfig

        # A container's output is kept here when it is removed, so `ember logs` still shows it.
        kept = settings.home / "runtime" / "container-logs"
        # Warm containers' control directories (their launcher and fifos), one per container.
        control = home / "runtime" / "containers"
        warm = WarmConfig(settings.warm_container_s, settings.warm_containers_max, control)
        backends["docker"] = DockerBackend(
            instance=instance_id(settings.shared), logs_dir=kept, warm=warm, clock=clock.now
        )
    return backends


def _docker_reachable(timeout_s: float = 2.0) -> bool:
    try:
        import docker

        client = docker.from_env(timeout=int(max(1, timeout_s)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # no SDK, no socket, no answer: all mean "not reachable"
        return False


def instance_id(home: Path) -> str:
    """This installation's id (kept in `home`/instance_id, the shared directory: one for all replicas):
    labels its containers, so a restart adopts them and another Ember on the same engine leaves them
    alone."""
    path = home / "instance_id"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = "ei_" + uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return value


def gpu_slots(declared: str) -> dict[str, list[str]]:
    """This machine's GPUs by type: what `nvidia-smi` finds, and the virtual slots `declared` (e.g.
    "TEST_GPU:4")."""
    from ember.backends.gpus import detect_gpus, parse_gpu_decl

    slots: dict[str, list[str]] = dict(detect_gpus())
    if declared:
        for gpu_type, devices in parse_gpu_decl(declared).items():
            slots[gpu_type] = list(devices)
    return slots


def local_host(settings: Settings) -> Host | None:
    """This machine as a host the control plane places workers on (its embedded agent), unless it
    runs no workers itself."""
    return Host(LOCAL, gpu_slots(settings.gpus)) if settings.local_workers else None


def venv_builder(home: Path) -> PreparePython:
    from ember.build.venv import ensure_venv

    async def prepare(
        source: Path,
        *,
        on_build: Callable[[], None] | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> str | None:
        import anyio.to_thread

        build = functools.partial(ensure_venv, on_build=on_build, on_output=on_output)
        return await anyio.to_thread.run_sync(build, source, home / "venvs")

    return prepare


def worker_log(backends: Mapping[str, Backend]) -> Callable[[str], Path] | None:
    """Where a local worker's output goes: its venv build's output is written there too."""
    local = backends.get("local")
    log_path = getattr(local, "log_path", None)
    return log_path if callable(log_path) else None
