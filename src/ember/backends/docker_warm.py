"""Warm containers: a flex worker's container, once that worker has stopped, is kept paused (not a worker,
not billed) for a while and resumed as the next worker of the same account, endpoint, release and image,
instead of a new container. Blocking code, called from the Docker backend's threads.

How identity reaches a container whose environment is fixed at creation: a warm-capable container's
entrypoint is Ember's launcher (`container_entry.py`, run by the image's python), which waits on a fifo in
the container's control directory for an identity (the worker's whole environment, key included), runs
the worker's command with it, and on a park signal stops the worker, kills whatever else ran, and waits
for the next identity. A plain start writes the identity at once; a resume writes it after unpausing.
So a worker's key is never in the container's configuration (`docker inspect`), only in its process.

What is what lives in the runtime, so a restarted control plane adopts the pool: a container named
`ember-<worker id>` is that worker; `ember-warm-<parked at, ms>-<control dir>` is parked; its labels say
whose it is (account, endpoint, release, and the warm key that a resume must match).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import select
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ember.backends.base import LaunchSpec
from ember.backends.docker_api import DockerClient, ImageConfig
from ember.core.errors import BackendError

LABEL_WARM_KEY = "ember.warm-key"
LABEL_CONTROL = "ember.control-dir"
WARM_PREFIX = "ember-warm-"
CONTROL_TARGET = "/.ember"
ENTRY_FILE = "entry.py"
# How long a new container's launcher may take to start and ask for its identity; a resumed one's is
# waiting already (when it is not, the container is dropped and a new one made).
HANDOVER_TIMEOUT_S = 60.0
RESUME_HANDOVER_S = 5.0
# After the grace period a parking worker is SIGKILLed; then this long to hear "parked".
PARK_KILL_WAIT_S = 5.0
# Control directories without a container are removed once this old (one may be just made for a launch).
STRAY_DIR_AGE_S = 120.0
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
_WARM_NAME = re.compile(r"^ember-warm-(\d+)-([0-9a-f]{12})$")
_TOKEN = re.compile(r"^[0-9a-f]{12}$")
_STATUS_MAX_BYTES = 64 * 1024


class LauncherGone(BackendError):
    """The container stopped before its launcher asked for an identity (its python cannot run it)."""


@dataclass(frozen=True)
class WarmConfig:
    """`hold_s`: how long a parked container waits for a resume (0: containers are never kept);
    `max_containers`: the most parked at once on this engine (the oldest go first); `root`: where the
    containers' control directories live (private to the server, under EMBER_HOME)."""

    hold_s: float
    max_containers: int
    root: Path

    @property
    def enabled(self) -> bool:
        return self.hold_s > 0 and self.max_containers > 0


def launch_argv(image_config: ImageConfig, command: Sequence[str] | None) -> list[str] | None:
    """The worker's argv as Docker would run it (the image's entrypoint, then the start command or the
    image's CMD), when it starts with a python interpreter: that interpreter runs the launcher, so a
    container is warm-capable only when it surely has one. None: run it as a plain container."""
    entrypoint = list(image_config.get("Entrypoint") or [])
    argv = entrypoint + list(command if command else image_config.get("Cmd") or [])
    if argv and _PYTHON.match(PurePosixPath(argv[0]).name):
        return argv
    return None


def warm_key(spec: LaunchSpec, image_id: str, argv: Sequence[str], host_network: bool) -> str:
    """What a parked container must share with a launch to serve it: account, endpoint, release, image
    digest, command, mounts and (real GPUs are fixed at creation) the devices."""
    facts = {
        "account": spec.account_id,
        "endpoint": spec.endpoint_id,
        "release": spec.release,
        "image": image_id,
        "argv": list(argv),
        "mounts": sorted([m.source, m.target, m.read_only] for m in spec.mounts),
        "gpus": list(spec.gpu_devices) if spec.real_gpus else None,
        "real_gpus": spec.real_gpus,
        "host_network": host_network,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def warm_name(parked_at: float, token: str) -> str:
    return f"{WARM_PREFIX}{int(parked_at * 1000)}-{token}"


def parse_warm_name(name: str) -> tuple[float, str] | None:
    """(parked at, control dir token) of a parked container's name, else None."""
    m = _WARM_NAME.match(name.lstrip("/"))
    return (int(m.group(1)) / 1000, m.group(2)) if m else None


class ControlDirs:
    """One directory per warm-capable container: `<token>/mount` (mounted read-only at /.ember: the
    launcher and its two fifos) and `<token>/worker.json` (the server's own: which worker the container
    serves, since when, so its logs start there)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._entry = Path(__file__).with_name("container_entry.py").read_bytes()

    def create(self) -> str:
        token = uuid.uuid4().hex[:12]
        mount = self.mount_source(token)
        mount.mkdir(parents=True, mode=0o755)
        os.chmod(mount.parent, 0o755)
        (mount / ENTRY_FILE).write_bytes(self._entry)
        for fifo in ("identity", "status"):
            os.mkfifo(mount / fifo, 0o600)
            # The image may run as any user; only this container's mount reaches these fifos.
            os.chmod(mount / fifo, 0o666)
        return token

    def mount_source(self, token: str) -> Path:
        if not _TOKEN.match(token):
            raise BackendError(f"docker: bad control directory {token!r}")
        return self.root / token / "mount"

    def exists(self, token: str) -> bool:
        return bool(_TOKEN.match(token)) and (self.root / token).is_dir()

    def remove(self, token: str | None) -> None:
        if token and _TOKEN.match(token):
            shutil.rmtree(self.root / token, ignore_errors=True)

    def tokens(self) -> list[tuple[str, float]]:
        """(token, age in seconds) of every control directory."""
        out = []
        now = time.time()
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if _TOKEN.match(entry.name):
                try:
                    out.append((entry.name, now - entry.stat(follow_symlinks=False).st_mtime))
                except FileNotFoundError:
                    continue
        return out

    def set_worker(self, token: str, worker_id: str, since: float | None) -> None:
        path = self.root / token / "worker.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"worker": worker_id, "since": since}))
        os.replace(tmp, path)

    def worker_since(self, token: str, worker_id: str) -> float | None:
        """When `worker_id` took the container over (None: it was its first worker)."""
        if not _TOKEN.match(token):
            return None
        try:
            data = json.loads((self.root / token / "worker.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("worker") != worker_id:
            return None
        since = data.get("since")
        return float(since) if isinstance(since, int | float) else None

    def hand_over(
        self, token: str, identity: Mapping[str, object], running: Callable[[], bool], timeout_s: float
    ) -> None:
        """Write `identity` to the launcher as soon as it waits for one. Raises BackendError when the
        container stops first (no such interpreter, say) or the launcher does not ask in `timeout_s`."""
        path = self.mount_source(token) / "identity"
        start = time.monotonic()
        check_at = start + 0.1
        while True:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise BackendError(f"docker: cannot reach the container's launcher: {exc}")
            now = time.monotonic()
            if now - start > timeout_s:
                raise BackendError(f"docker: the container's launcher did not start within {timeout_s:g}s")
            if now >= check_at:
                if not running():
                    raise LauncherGone("docker: the container stopped before its launcher started")
                check_at = now + 0.25
            time.sleep(0.002)
        try:
            _write_all(fd, (json.dumps(identity) + "\n").encode(), start + timeout_s)
        finally:
            os.close(fd)

    def await_parked(self, token: str, signal: Callable[[str], None], grace_s: float) -> bool:
        """Ask the launcher to park (SIGUSR1, then SIGUSR2 after `grace_s`); whether it said it had."""
        fd = os.open(self.mount_source(token) / "status", os.O_RDONLY | os.O_NONBLOCK)
        try:
            signal("SIGUSR1")
            if _await_line(fd, b"parked", grace_s):
                return True
            signal("SIGUSR2")
            return _await_line(fd, b"parked", PARK_KILL_WAIT_S)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendError("docker: the container's launcher did not read its identity")
        _, writable, _ = select.select([], [fd], [], left)
        if not writable:
            continue
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
        except OSError as exc:  # EPIPE: the launcher went away
            raise BackendError(f"docker: the container's launcher did not read its identity: {exc}")


def _await_line(fd: int, line: bytes, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    buf = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], min(left, 0.1))
        if not readable:
            continue
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:  # a writer came and went: nothing more until the next one
            time.sleep(0.01)
            continue
        buf = (buf + chunk)[-_STATUS_MAX_BYTES:]
        if line in buf.split(b"\n"):
            return True
    return False


class Claims:
    """Parked containers being resumed right now (a sweep leaves them alone; two launches never share
    one). In memory: a restart forgets them, and a warm-named container that is not paused is removed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def take(self, candidates: Sequence[str]) -> str | None:
        with self._lock:
            for container_id in candidates:
                if container_id not in self._ids:
                    self._ids.add(container_id)
                    return container_id
        return None

    def release(self, container_id: str) -> None:
        with self._lock:
            self._ids.discard(container_id)

    def __contains__(self, container_id: object) -> bool:
        with self._lock:
            return container_id in self._ids


@dataclass(frozen=True)
class Parked:
    """A parked container as the engine lists it."""

    id: str
    parked_at: float
    token: str
    paused: bool
    labels: Mapping[str, str]


def list_parked(client: DockerClient, label_filters: Sequence[str]) -> list[Parked]:
    """Every container named as parked that carries all of `label_filters` (one engine call)."""
    rows = client.api.containers(all=True, filters={"label": [*label_filters, LABEL_WARM_KEY]})
    out = []
    for row in rows:
        parsed = parse_warm_name((row.get("Names") or [""])[0])
        if parsed is not None:
            labels = row.get("Labels") or {}
            out.append(Parked(row["Id"], parsed[0], parsed[1], row.get("State") == "paused", labels))
    return out
