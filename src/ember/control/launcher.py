"""Turning a worker record into a running worker: its RUNPOD_* environment and per-worker key, the
source snapshot and virtualenv (local) or image (Docker), mounts for models and volumes."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import quote_plus

from ember.backends.base import LaunchSpec, Mount
from ember.core.errors import BuildError
from ember.core.specs import DEFAULT_HANDLER, EndpointSpec
from ember.store.rows import WorkerRow

# Hooks other packages register (model cache, volumes): each returns extra mounts and env for a worker.
MountHook = Callable[[str, EndpointSpec], Awaitable[tuple[list[Mount], dict[str, str]]]]

# What an INITIALIZING local worker's reason says while its start prepares (see `prepare_python`).
INSTALLING = "installing requirements"
STARTING_HANDLER = "starting handler"


class PreparePython(Protocol):
    """Builds (or finds cached) the virtualenv of a source directory; its python, or None when the
    source has no requirements.txt. `on_build` is called (from any thread) when a build is needed,
    `on_output` with each line of the build's output."""

    def __call__(
        self,
        source: Path,
        *,
        on_build: Callable[[], None] | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> Awaitable[str | None]: ...


@dataclass
class LaunchConfig:
    api_url: str
    shared: Path  # storage every replica reads: the source snapshots (`sources/<digest>`)
    ping_interval_ms: int = 2000
    hooks: list[MountHook] = field(default_factory=list)
    prepare_python: PreparePython | None = None  # venv builder for local sources
    # The file a local worker's output goes to (the local backend's log): a venv build writes there too.
    worker_log: Callable[[str], Path] | None = None
    # Sets what an INITIALIZING worker's start is doing (worker id, reason); blocking, any thread.
    set_starting_reason: Callable[[str, str], object] | None = None
    # The engine auth_config for pulling an image reference (the host's `ember registry login`s), or None.
    registry_auth: Callable[[str], dict[str, str] | None] | None = None
    # The engine auth_config from an account's registry auth: (account id, auth id, image reference).
    account_registry_auth: Callable[[str, str, str], Awaitable[dict[str, str]]] | None = None
    # Whether an account is the admin (blocking): the admin's local workers may run unsandboxed.
    is_admin: Callable[[str], bool] | None = None
    # The spec's env with `{{ RUNPOD_SECRET_<NAME> }}` replaced by the account's (sealed) secrets.
    secret_env: Callable[[str, Mapping[str, str]], Awaitable[dict[str, str]]] | None = None
    # What this process has found already, so that a release's next start (a cold start forked from its
    # template) hops to no thread for it: the python of each source snapshot (a snapshot never changes;
    # its venv is used while its python is there) and whether an account is the admin (fixed when the
    # account is made).
    pythons: dict[str, str | None] = field(default_factory=dict)
    admins: dict[str, bool] = field(default_factory=dict)


def known_python(cfg: LaunchConfig, spec: EndpointSpec) -> bool:
    """Whether a local worker of `spec` starts without preparing its python (found by an earlier start,
    still there): its start goes straight to STARTING_HANDLER."""
    digest = spec.source_digest
    if not digest or digest not in cfg.pythons:
        return False
    python = cfg.pythons[digest]
    return python is None or os.path.isfile(python)


def worker_env(
    *,
    api_url: str,
    endpoint_id: str,
    worker_id: str,
    key: str,
    gpu_type: str | None,
    ping_interval_ms: int,
    user_env: Mapping[str, str],
) -> dict[str, str]:
    """The environment of spec §1.2-1.3 that both SDKs read, plus the user's own variables.
    Templates keep `$ID` / `$RUNPOD_POD_ID` literally: the SDKs substitute them."""
    base = f"{api_url.rstrip('/')}/v2/{endpoint_id}"
    q = "?gpu=" + quote_plus(gpu_type or "cpu")
    env = dict(user_env)
    env.update(
        {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID{q}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID{q}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID{q}",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID{q}",
            "RUNPOD_AI_API_KEY": key,
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_ENDPOINT_ID": endpoint_id,
            "RUNPOD_PING_INTERVAL": str(max(1000, ping_interval_ms // 1000 * 1000)),
            "RUNPOD_POD_HOSTNAME": socket.gethostname(),
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
            "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS": env.get("RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS", "true"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def launch_spec(
    cfg: LaunchConfig,
    *,
    worker: WorkerRow,
    spec: EndpointSpec,
    key: str,
    backend: str,
    registry_auth: dict[str, str] | None = None,
    on_host: bool = False,
) -> LaunchSpec:
    """The worker's LaunchSpec. `on_host`: it starts on another host, whose agent fetches the source
    snapshot (`source_dir` is then the snapshot's digest) and prepares its python itself."""
    env = worker_env(
        api_url=cfg.api_url,
        endpoint_id=worker["endpoint_id"],
        worker_id=worker["id"],
        key=key,
        gpu_type=worker["gpu_type"],
        ping_interval_ms=cfg.ping_interval_ms,
        user_env=spec.env if cfg.secret_env is None else await cfg.secret_env(worker["account_id"], spec.env),
    )
    mounts: list[Mount] = []
    for hook in cfg.hooks:
        more_mounts, more_env = await hook(backend, spec)
        mounts.extend(more_mounts)
        env.update(more_env)
    devices = tuple(d for d in (worker["gpu_devices"] or "").split(",") if d)
    base = LaunchSpec(
        worker_id=worker["id"],
        endpoint_id=worker["endpoint_id"],
        account_id=worker["account_id"],
        release=worker["release"],
        env=env,
        gpu_type=worker["gpu_type"],
        gpu_devices=devices,
        mounts=tuple(mounts),
        labels={"ember.worker-id": worker["id"], "ember.endpoint-id": worker["endpoint_id"]},
    )
    command = spec.docker_start_cmd.split() if spec.docker_start_cmd else None
    if backend == "docker":
        if registry_auth is None:
            registry_auth = await pull_auth(cfg, worker["account_id"], spec)
        return replace(base, image=spec.image_name, command=command, registry_auth=registry_auth)
    source = cfg.shared / "sources" / (spec.source_digest or "")
    admin = await _is_admin(cfg, worker["account_id"])
    if on_host:
        handler = spec.handler or DEFAULT_HANDLER
        digest = spec.source_digest or ""
        return replace(base, source_dir=digest, handler=handler, command=command, admin=admin)
    if known_python(cfg, spec):
        python = cfg.pythons[spec.source_digest or ""]
    else:
        python = await prepare_python(cfg, worker["id"], source)
        if spec.source_digest:
            cfg.pythons[spec.source_digest] = python
    return replace(
        base,
        source_dir=str(source),
        handler=spec.handler or DEFAULT_HANDLER,
        command=command,
        python=python,
        admin=admin,
    )


async def prepare_python(cfg: LaunchConfig, worker_id: str, source: Path) -> str | None:
    """The python a local worker runs: its source's virtualenv when it has a requirements.txt.

    While the venv is built the worker's reason is INSTALLING and the build's output (pip's) goes to the
    worker's log, so `ember logs` shows it; then the reason is STARTING_HANDLER. Raises BuildError when
    the build fails (its output is in the log by then).
    """
    python = None
    if cfg.prepare_python is not None:
        log_path = cfg.worker_log(worker_id) if cfg.worker_log is not None else None
        started: list[float] = []

        def write(line: str) -> None:
            if log_path is None:
                return
            try:
                with open(log_path, "a", encoding="utf-8", errors="replace") as log:
                    log.write(line + "\n")
            except OSError:
                pass  # a log that cannot be written must not fail the worker's start

        def on_build() -> None:
            started.append(time.monotonic())
            if cfg.set_starting_reason is not None:
                cfg.set_starting_reason(worker_id, INSTALLING)
            write("[ember] installing requirements.txt into a new virtualenv (once per requirements)")

        try:
            python = await cfg.prepare_python(source, on_build=on_build, on_output=write)
        except BuildError as exc:
            await asyncio.to_thread(write, f"[ember] {exc.message}")
            raise
        if started:
            await asyncio.to_thread(
                write, f"[ember] virtualenv ready in {time.monotonic() - started[0]:.1f}s"
            )
    if cfg.set_starting_reason is not None:
        await asyncio.to_thread(cfg.set_starting_reason, worker_id, STARTING_HANDLER)
    return python


async def _is_admin(cfg: LaunchConfig, account_id: str) -> bool:
    if cfg.is_admin is None:
        return False
    admin = cfg.admins.get(account_id)
    if admin is None:
        admin = cfg.admins[account_id] = await asyncio.to_thread(cfg.is_admin, account_id)
    return admin


async def pull_auth(cfg: LaunchConfig, account_id: str, spec: EndpointSpec) -> dict[str, str] | None:
    """The credential a Docker worker's image is pulled with: the endpoint's own registry auth
    (`containerRegistryAuthId`) first, then the host's stored login for the image's registry, else
    None (an anonymous pull). A git endpoint's image is Ember's own build in Ember's registry, so it
    is pulled with the host's login, which pushed it."""
    if not spec.image_name:
        return None
    auth_id = spec.container_registry_auth_id
    if auth_id and not spec.git and cfg.account_registry_auth is not None:
        return await cfg.account_registry_auth(account_id, auth_id, spec.image_name)
    return cfg.registry_auth(spec.image_name) if cfg.registry_auth is not None else None


def backend_for_spec(spec: EndpointSpec, enabled: Container[str], default: str) -> str:
    """Images run on Docker; directories on the local-process backend (or the memory one in dev)."""
    if spec.image_name or spec.git:
        return "docker"
    if spec.source_dir or spec.source_id:
        return "local" if "local" in enabled else default
    return default
