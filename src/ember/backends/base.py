"""The backend interface every compute backend implements, and the values that cross it.

Backends are idempotent and keep identity in the runtime (pid files, container labels), never in
memory alone, so `observe()` tells the truth after a control-plane restart. Errors from the runtime are
translated to `ember.core.errors.BackendError` inside the backend module.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Mount:
    """A host path made visible to the worker at `target` (for processes: exposed by env var)."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a backend needs to start one worker. `env` already holds the RUNPOD_* variables."""

    worker_id: str
    endpoint_id: str
    account_id: str
    release: int
    env: dict[str, str]
    # What to run: a directory with a handler file (local) or an image (docker); `command` overrides.
    source_dir: str | None = None
    # The handler file, relative to source_dir (`/` separated): the local backend runs it from its own
    # directory, as RunPod images do after `ADD src .`, so sibling imports and relative reads work.
    handler: str = "handler.py"
    image: str | None = None
    command: list[str] | None = None
    python: str | None = None  # interpreter for the local backend (a per-endpoint virtualenv's python)
    gpu_type: str | None = None
    gpu_devices: tuple[str, ...] = ()  # device indices -> CUDA_VISIBLE_DEVICES / device requests
    real_gpus: bool = False
    mounts: tuple[Mount, ...] = ()
    registry_auth: dict[str, str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # The admin account's worker: the local backend may run it unsandboxed (see ember.core.sandbox).
    admin: bool = False


@dataclass(frozen=True)
class Observed:
    """What the runtime says about one worker it runs (or ran)."""

    worker_id: str
    endpoint_id: str
    release: int
    running: bool
    exit_code: int | None = None
    started_at: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: bytes


# Asked (now and then) while a followed worker does not run: may it still start or restart?
Alive = Callable[[], Awaitable[bool]]


def throttled(alive: Alive | None, every_s: float = 1.0) -> Alive:
    """`alive` asked at most once per `every_s` (a True answer holds that long); always False for None."""
    until = 0.0

    async def ask() -> bool:
        nonlocal until
        if alive is None:
            return False
        now = time.monotonic()
        if now < until:
            return True
        if await alive():
            until = now + every_s
            return True
        return False

    return ask


class Backend(Protocol):
    """The small interface the control loops drive. Every method is idempotent."""

    name: str

    async def launch(self, spec: LaunchSpec) -> None:
        """Start the worker; starting one whose id already runs is a no-op."""

    async def stop(self, worker_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM, wait up to `grace_s`, then kill; forget its runtime state. Unknown ids are a no-op."""

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        """Every worker this backend knows of (running or exited-but-not-yet-stopped)."""

    def logs(
        self,
        worker_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        alive: Alive | None = None,
    ) -> AsyncIterator[str]:
        """The worker's stdout/stderr lines, oldest first (the last `tail` of them; 0: none of the past);
        with `follow`, keep yielding new lines until the worker no longer runs. `alive` (with `follow`)
        is the caller's word that the worker may still start or restart (a venv build, an image pull,
        a restart after a crash): while it says True, following waits for the worker (and for a log
        that does not exist yet) instead of ending or raising."""

    async def exec(self, worker_id: str, command: list[str], *, timeout_s: float = 60.0) -> ExecResult:
        """Run a command inside the worker's environment and return its exit code and output."""

    async def aclose(self) -> None:
        """Release clients and handles; running workers keep running."""


@runtime_checkable
class WarmParking(Protocol):
    """A backend that can keep a scaled-down worker's runtime, unbilled and no longer a worker, to start
    the next worker of the same endpoint and release from it (the Docker backend's warm containers)."""

    async def park(self, worker_id: str, grace_s: float = 10.0) -> bool:
        """Stop the worker as `stop` does, but keep its runtime for reuse when it can; whether it did."""

    async def sweep_warm(self, releases: Mapping[str, int]) -> None:
        """Drop kept runtimes that are too old or whose endpoint (a key of `releases`, with the release
        it serves now) is gone or serves another release. Cheap to call every tick."""
