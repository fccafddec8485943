"""Workers as Docker containers: one labelled container per worker, host networking, GPUs by device request.

The containers' labels are the only state (a fresh instance re-adopts them through `observe`). Every
blocking docker-SDK call runs in a thread; docker's exceptions become `BackendError` / `NotFound` here.
A container's output is copied to `logs_dir/<worker id>.log` (bounded) before the container is removed,
so a stopped worker's logs stay readable, as a local worker's do.

Containers run tenants' code, so they are hardened (see `_hardening`): no new privileges, capabilities
cut to HARDENED_CAPS, a pids limit, and no host mount but those the launch spec names (the endpoint's
volume, the read-only model cache), never the Docker socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.types import DeviceRequest, Mount
from docker.utils import parse_repository_tag

from ember.backends.base import Alive, ExecResult, LaunchSpec, Observed, throttled
from ember.core.errors import BackendError, NotFound

LABEL_WORKER = "ember.worker-id"
LABEL_ENDPOINT = "ember.endpoint-id"
LABEL_ACCOUNT = "ember.account-id"
LABEL_RELEASE = "ember.release"
LABEL_MANAGED = "ember.managed"
# Which control plane owns a container (one Docker engine may serve several Ember installations).
LABEL_INSTANCE = "ember.instance"

ProgressCallback = Callable[[str, str], None]

_LAYER_DONE = {"Pull complete", "Already exists"}
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# A removed container's kept log: at most its last this many lines, and the file at most this size.
KEPT_LOG_LINES = 20_000
KEPT_LOG_BYTES = 4 * 1024 * 1024
_FOLLOW_POLL_S = 0.5
# What a worker keeps of Docker's default capabilities. Images run as root, and their start scripts
# often install packages, chown caches and drop to a user of their own: CHOWN, DAC_OVERRIDE, FOWNER,
# SETUID, SETGID and KILL are what that needs. Dropped with the rest: NET_RAW (raw sockets, spoofing),
# MKNOD, SYS_CHROOT, SETFCAP, SETPCAP, FSETID, AUDIT_WRITE and NET_BIND_SERVICE.
HARDENED_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")
DEFAULT_PIDS_LIMIT = 4096
# Host paths a worker never gets, whatever a spec says: the engine's socket is root on the host.
_NEVER_MOUNTED = ("/var/run/docker.sock", "/run/docker.sock", "/var/run/docker", "/run/docker")


def container_name(worker_id: str) -> str:
    return f"ember-{worker_id}"


def _started_at(state: dict[str, Any]) -> float | None:
    """Docker's StartedAt (RFC 3339 with nanoseconds, or the zero time) as epoch seconds."""
    raw = state.get("StartedAt") or ""
    if not raw or raw.startswith("0001-"):
        return None
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", raw).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(trimmed).timestamp()
    except ValueError:
        return None


def _observed(container: Any) -> Observed:
    labels = container.labels
    state = container.attrs.get("State", {})
    running = bool(state.get("Running"))
    exit_code = None if running else state.get("ExitCode")
    detail = state.get("Status", "")
    if state.get("Error"):
        detail += f": {state['Error']}"
    if state.get("OOMKilled"):
        detail += " (out of memory)"
    return Observed(
        worker_id=labels.get(LABEL_WORKER, ""),
        endpoint_id=labels.get(LABEL_ENDPOINT, ""),
        release=int(labels.get(LABEL_RELEASE, "0") or 0),
        running=running,
        exit_code=exit_code,
        started_at=_started_at(state),
        detail=detail,
    )


def _docker_failure(action: str, exc: Exception) -> BackendError:
    explanation = getattr(exc, "explanation", None) or str(exc)
    return BackendError(f"docker: {action} failed: {explanation}")


class DockerBackend:
    """The Docker engine as a compute backend (see `ember.backends.base.Backend`)."""

    name = "docker"

    def __init__(
        self,
        client_factory: Callable[[], Any] = docker.from_env,
        *,
        host_network: bool = True,
        on_progress: ProgressCallback | None = None,
        instance: str | None = None,
        logs_dir: Path | None = None,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
    ) -> None:
        """`instance` scopes the backend to one control plane: its containers carry that label and
        `observe` lists only those (None: every Ember-managed container on the engine). `logs_dir` keeps
        removed containers' logs (None: they go with the container). `pids_limit`: the most processes
        and threads one worker container may hold."""
        self._client_factory = client_factory
        self._pids_limit = pids_limit
        self._logs_dir = Path(logs_dir) if logs_dir is not None else None
        self._instance = instance
        self._host_network = host_network
        self._on_progress = on_progress
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _docker(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._client_factory)
                except docker.errors.DockerException as exc:
                    raise BackendError(f"docker: the engine is not reachable: {exc}")
            return self._client

    def _find(self, client: Any, worker_id: str) -> Any | None:
        """The container of `worker_id` (blocking), or None."""
        found = client.containers.list(all=True, filters={"label": f"{LABEL_WORKER}={worker_id}"})
        return found[0] if found else None

    async def _container(self, worker_id: str) -> Any:
        client = await self._docker()
        try:
            container = await asyncio.to_thread(self._find, client, worker_id)
        except docker.errors.DockerException as exc:
            raise _docker_failure(f"looking up worker {worker_id}", exc)
        if container is None:
            raise NotFound(f"worker {worker_id} has no container")
        return container

    # -- launch -------------------------------------------------------------------------------------

    def _ensure_image(self, client: Any, worker_id: str, image: str, auth: dict[str, str] | None) -> None:
        try:
            client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        repository, tag = parse_repository_tag(image)
        report = self._on_progress or (lambda _w, _t: None)
        report(worker_id, f"pulling {image}")
        try:
            self._pull(client, worker_id, image, repository, tag or "latest", auth, report)
        except docker.errors.APIError as exc:
            hint = " (no or wrong registry credentials?)" if "auth" in str(exc.explanation).lower() else ""
            raise BackendError(f"docker: pulling {image} failed: {exc.explanation or exc}{hint}")

    def _pull(
        self,
        client: Any,
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

    def _run(self, client: Any, spec: LaunchSpec) -> None:
        """Create and start the worker's container in as few engine calls as a cold start allows: the
        image is looked up (and pulled) only when the engine says it is missing, and an existing
        container of the same worker id only when the name is taken."""
        if not spec.image:
            raise BackendError(f"docker: worker {spec.worker_id} has no image to run")
        for _attempt in range(3):  # bounded: a name conflict or a missing image each cost one retry
            try:
                container_id = self._create(client, spec)
            except docker.errors.ImageNotFound:
                self._ensure_image(client, spec.worker_id, spec.image, spec.registry_auth)
                continue
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                existing = self._find(client, spec.worker_id)
                if existing is None:
                    continue  # removed meanwhile: try again
                if existing.status in ("running", "restarting"):
                    return  # already running (or a concurrent launch of the same worker won the name)
                if existing.status == "created":
                    container_id = existing.id  # created but never started (e.g. a crash in between)
                else:
                    self._keep_logs(existing, spec.worker_id)
                    existing.remove(force=True)  # an exited worker of the same id: start afresh
                    continue
            client.api.start(container_id)
            return
        raise BackendError(f"docker: could not create the container of worker {spec.worker_id}")

    def _create(self, client: Any, spec: LaunchSpec) -> str:
        env = dict(spec.env)
        device_requests = []
        if spec.real_gpus:
            if spec.gpu_devices:
                device_requests.append(
                    DeviceRequest(device_ids=list(spec.gpu_devices), capabilities=[["gpu"]])
                )
            else:
                device_requests.append(DeviceRequest(count=-1, capabilities=[["gpu"]]))
        elif spec.gpu_devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_devices)
        labels = {
            **spec.labels,
            LABEL_WORKER: spec.worker_id,
            LABEL_ENDPOINT: spec.endpoint_id,
            LABEL_ACCOUNT: spec.account_id,
            LABEL_RELEASE: str(spec.release),
            LABEL_MANAGED: "1",
        }
        if self._instance:
            labels[LABEL_INSTANCE] = self._instance
        for m in spec.mounts:
            source = os.path.realpath(m.source)
            if any(source == p or source.startswith(p + "/") for p in _NEVER_MOUNTED):
                raise BackendError(f"docker: worker {spec.worker_id} may not mount {m.source}")
        mounts = [Mount(m.target, m.source, type="bind", read_only=m.read_only) for m in spec.mounts]
        host_config = client.api.create_host_config(
            network_mode="host" if self._host_network else None,
            mounts=mounts or None,
            device_requests=device_requests or None,
            init=True,
            **self._hardening(),
        )
        created = client.api.create_container(
            spec.image,
            command=spec.command,
            name=container_name(spec.worker_id),
            labels=labels,
            environment=env,
            host_config=host_config,
        )
        return str(created["Id"])

    def _hardening(self) -> dict[str, Any]:
        """The host-config settings that confine a tenant's container."""
        return {
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "cap_add": list(HARDENED_CAPS),
            "pids_limit": self._pids_limit,
            "ipc_mode": "private",
            "privileged": False,
        }

    async def launch(self, spec: LaunchSpec) -> None:
        """Pull the image if missing, then start the container; a running worker id is a no-op."""
        client = await self._docker()
        try:
            await asyncio.to_thread(self._run, client, spec)
        except docker.errors.DockerException as exc:
            raise _docker_failure(f"starting worker {spec.worker_id} from {spec.image}", exc)

    # -- stop / observe -----------------------------------------------------------------------------

    def _stop(self, client: Any, worker_id: str, grace_s: float) -> None:
        container = self._find(client, worker_id)
        if container is None:
            return
        try:
            if container.status == "running":
                container.stop(timeout=max(0, math.ceil(grace_s)))
            self._keep_logs(container, worker_id)
            container.remove(force=True)
        except docker.errors.NotFound:
            return  # removed concurrently: the goal is reached

    def kept_log_path(self, worker_id: str) -> Path | None:
        """Where the logs of `worker_id`'s removed containers are kept (None: not kept)."""
        if self._logs_dir is None or not _SAFE_ID.match(worker_id):
            return None
        return self._logs_dir / f"{worker_id}.log"

    def _keep_logs(self, container: Any, worker_id: str) -> None:
        """Append the container's output (its last KEPT_LOG_LINES lines) to the worker's kept log, then
        trim that file to its last KEPT_LOG_BYTES. Best effort: a log that cannot be kept must not keep
        a worker from stopping."""
        path = self.kept_log_path(worker_id)
        if path is None:
            return
        try:
            data = container.logs(stdout=True, stderr=True, stream=False, tail=KEPT_LOG_LINES)
        except docker.errors.DockerException:
            return
        if not data:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as kept:
                kept.write(data if data.endswith(b"\n") else data + b"\n")
            _trim(path, KEPT_LOG_BYTES)
        except OSError:
            return

    async def stop(self, worker_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM (through the container's init), kill after `grace_s`, remove. Unknown ids: no-op."""
        client = await self._docker()
        try:
            await asyncio.to_thread(self._stop, client, worker_id, grace_s)
        except docker.errors.DockerException as exc:
            raise _docker_failure(f"stopping worker {worker_id}", exc)

    def _list(self, client: Any, endpoint_id: str | None) -> list[Observed]:
        filters = [f"{LABEL_MANAGED}=1"]
        if self._instance:
            filters.append(f"{LABEL_INSTANCE}={self._instance}")
        if endpoint_id is not None:
            filters.append(f"{LABEL_ENDPOINT}={endpoint_id}")
        observed = []
        for container in client.containers.list(all=True, filters={"label": filters}):
            with contextlib.suppress(docker.errors.NotFound):
                observed.append(_observed(container))
        return sorted(observed, key=lambda o: o.worker_id)

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        """Every Ember-labelled container (running or exited), optionally of one endpoint."""
        client = await self._docker()
        try:
            return await asyncio.to_thread(self._list, client, endpoint_id)
        except docker.errors.DockerException as exc:
            raise _docker_failure("listing workers", exc)

    # -- logs / exec / shell ------------------------------------------------------------------------

    async def logs(
        self,
        worker_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        alive: Alive | None = None,
    ) -> AsyncIterator[str]:
        """The container's stdout and stderr lines; with `follow`, until the container stops.

        Without a container (removed, or not created yet), the worker's kept log: with `tail` None, the
        kept log's lines come before the container's. With `follow` and `alive`, a container that is
        not there yet, or stopped and replaced by a new one, is waited for and followed from its start.
        Raises NotFound when there is neither a container nor a kept log (and nothing to wait for).
        """
        may_start = throttled(alive if follow else None)
        container = await self._maybe_container(worker_id)
        kept = self.kept_log_path(worker_id)
        if container is None and not await may_start():
            if kept is None or not await asyncio.to_thread(kept.is_file):
                raise NotFound(f"worker {worker_id} has no container")
            for line in await asyncio.to_thread(_read_lines, kept, tail):
                yield line
            return
        if tail is None and kept is not None:
            for line in await asyncio.to_thread(_read_lines, kept, None):
                yield line
        if container is None:
            tail = None  # its container starts later: all of its output is new
        followed: str | None = None
        while True:
            if container is not None and container.id != followed:
                async for line in self._container_logs(container, worker_id, tail, follow):
                    yield line
                followed, tail = container.id, None  # a later container (a restart) is new: all of it
            if not await may_start():
                return
            await asyncio.sleep(_FOLLOW_POLL_S)
            container = await self._maybe_container(worker_id)

    async def _maybe_container(self, worker_id: str) -> Any | None:
        try:
            return await self._container(worker_id)
        except NotFound:
            return None

    async def _container_logs(
        self, container: Any, worker_id: str, tail: int | None, follow: bool
    ) -> AsyncIterator[str]:
        try:
            stream = await asyncio.to_thread(
                container.logs, stream=True, follow=follow, tail="all" if tail is None else tail
            )
        except docker.errors.NotFound:
            return  # removed meanwhile: its output is in the kept log
        except docker.errors.DockerException as exc:
            raise _docker_failure(f"reading logs of worker {worker_id}", exc)
        chunks: Iterator[bytes] = iter(stream)
        pending = b""
        try:
            while True:
                chunk = await asyncio.to_thread(next, chunks, None)
                if chunk is None:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")
        finally:
            # Closing the response unblocks a thread still waiting in a followed stream.
            with contextlib.suppress(Exception):
                stream.close()

    async def exec(self, worker_id: str, command: list[str], *, timeout_s: float = 60.0) -> ExecResult:
        """Run `command` in the running container; BackendError if it takes longer than `timeout_s`."""
        container = await self._container(worker_id)
        try:
            exit_code, output = await asyncio.wait_for(
                asyncio.to_thread(container.exec_run, command), timeout=timeout_s
            )
        except TimeoutError:
            raise BackendError(f"docker: exec in worker {worker_id} took longer than {timeout_s:g}s")
        except docker.errors.DockerException as exc:
            raise _docker_failure(f"exec in worker {worker_id}", exc)
        return ExecResult(exit_code=int(exit_code if exit_code is not None else -1), output=output or b"")

    def shell_command(self, worker_id: str) -> list[str]:
        """The argv of an interactive shell in the worker (`ember ssh` runs it with the user's TTY)."""
        argv = ["docker"]
        base_url = str(getattr(getattr(self._client, "api", None), "base_url", ""))
        if base_url.startswith(("http://", "https://")):  # a remote engine, not the local socket
            argv += ["-H", "tcp://" + base_url.split("://", 1)[1]]
        return [*argv, "exec", "-it", container_name(worker_id), "/bin/sh"]

    async def aclose(self) -> None:
        """Close the docker client; the containers keep running."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)


def _read_lines(path: Path, tail: int | None) -> list[str]:
    """The lines of a kept log (bounded in size by `_trim`), the last `tail` of them when given."""
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return []
    if tail is None:
        return lines
    return lines[-tail:] if tail > 0 else []


def _trim(path: Path, max_bytes: int) -> None:
    """Keep only the file's last `max_bytes` (from a line start), replacing it atomically."""
    size = path.stat().st_size
    if size <= max_bytes:
        return
    with open(path, "rb") as f:
        f.seek(size - max_bytes)
        data = f.read()
    cut = data.find(b"\n")
    data = data[cut + 1 :] if cut != -1 else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
