"""What a local worker sees: its environment (the few variables it inherits from the control plane, its
mounts as variables, the spec's own variables and its GPUs; what differs inside the sandbox) and its
sandbox view."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ember.backends.base import LaunchSpec, Mount
from ember.backends.sandbox import (
    VOLUME_PATH,
    SandboxConfig,
    UidMap,
    View,
    gpu_devices,
    own_tree,
    python_trees,
    shown,
)
from ember.core.errors import BackendError
from ember.core.sandbox import choose

# The only variables a worker inherits from the control plane; everything else comes from the spec.
INHERITED_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
    "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
    "https_proxy", "no_proxy",
)  # fmt: skip


def _mount_name(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", target).strip("_").upper() or "ROOT"


def mount_env(mounts: tuple[Mount, ...]) -> dict[str, str]:
    """How a process sees its mounts: `EMBER_MOUNT_<TARGET>=source` (target `/runpod-volume` becomes
    `EMBER_MOUNT_RUNPOD_VOLUME`), plus `RUNPOD_VOLUME_PATH` for the network volume. Processes share
    the host's filesystem, so `read_only` is not enforced here. A mount at its own path (the model
    cache) needs no variable."""
    env: dict[str, str] = {}
    for mount in mounts:
        if mount.source == mount.target:
            continue
        env[f"EMBER_MOUNT_{_mount_name(mount.target)}"] = mount.source
        if mount.target.rstrip("/") == "/runpod-volume":
            env["RUNPOD_VOLUME_PATH"] = mount.source
    return env


def worker_env(spec: LaunchSpec, python: str, inherited: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: a few inherited variables, its mounts, `spec.env`, its GPUs."""
    env = {k: v for k, v in inherited.items() if k in INHERITED_ENV}
    # `python`, `pip` in the worker (and in `exec`) resolve to the worker's own interpreter first.
    python_dir = os.path.dirname(python)
    if python_dir:
        env["PATH"] = os.pathsep.join(p for p in (python_dir, env.get("PATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(mount_env(spec.mounts))
    env.update(spec.env)
    if spec.gpu_devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_devices)
    return env


def inside_env(mounts: tuple[Mount, ...]) -> dict[str, str]:
    """What differs in a sandboxed worker's environment: its home and temp dir are its private /tmp,
    its mounts are found at their targets (the volume at /runpod-volume, where RunPod handlers look)."""
    env = {"HOME": "/tmp", "TMPDIR": "/tmp"}
    for mount in mounts:
        if mount.source == mount.target:
            continue
        env[f"EMBER_MOUNT_{_mount_name(mount.target)}"] = mount.target
        if mount.target.rstrip("/") == VOLUME_PATH:
            env["RUNPOD_VOLUME_PATH"] = VOLUME_PATH
    return env


def worker_view(
    cfg: SandboxConfig | None, uids: UidMap | None, spec: LaunchSpec, python: str, cwd: str
) -> View | None:
    """The sandbox a worker runs in, or None when it runs as a plain process; BackendError when it
    must be sandboxed and cannot be (the error says what to install)."""
    if cfg is None:
        return None
    choice = choose(cfg.mode, available=cfg.bwrap is not None, admin=spec.admin)
    if choice.refusal is not None:
        raise BackendError(choice.refusal)
    if not choice.sandboxed:
        return None
    source = os.path.abspath(spec.source_dir) if spec.source_dir else None
    own = [p for p in (source, str(Path(python).parent.parent)) if p]
    same_path = [m.source for m in spec.mounts if m.source == m.target and m.read_only]
    read_only = shown([*python_trees(python), *own, *same_path], cfg.hidden, allowed=(*own, *same_path))
    mounts = tuple((m.source, m.target, not m.read_only) for m in spec.mounts if m.source != m.target)
    uid = gid = None
    if os.geteuid() == 0:  # root: the account's own uid; otherwise the server's (see sandbox.py)
        assert uids is not None
        uid = gid = uids.uid(spec.account_id)
        for host, _, writable in mounts:
            if writable:
                own_tree(host, uid, gid)
    devices = gpu_devices(spec.gpu_devices) if spec.real_gpus else ()
    return View(tuple(read_only), mounts, devices, cwd=cwd if source else "/tmp", uid=uid, gid=gid)
