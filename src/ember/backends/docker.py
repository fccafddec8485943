"""Workers as Docker containers: one labelled container per worker, host networking, GPUs by device request.

The containers' names and labels are the only state (a fresh instance re-adopts them through
`observe`): `ember-<worker id>` is that worker's container (a container resumed from the warm pool is
renamed for its new worker; labels cannot change), and the labels say whose it is. Every blocking
docker-SDK call runs in a thread; docker's exceptions become `BackendError` / `NotFound` here. Logs:
`docker_logs`; warm containers (a scaled-down flex worker's container kept paused and resumed for the
next worker): `docker_pool`.

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
from collections.abc import Callable, Mapping
from pathlib import Path

import docker
import docker.errors
from docker.types import DeviceRequest, Mount

from ember.backends.base import ExecResult, LaunchSpec, Observed
from ember.backends.docker_api import Container, DockerClient, Hardening, LogStream
from ember.backends.docker_errors import close_left_sockets, docker_failure
from ember.backends.docker_images import ProgressCallback, ensure_image
from ember.backends.docker_labels import (
    LABEL_ACCOUNT,
    LABEL_ENDPOINT,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_RELEASE,
    LABEL_WORKER,
    container_name,
    observed,
    worker_of,
)
from ember.backends.docker_logs import ContainerLogs
from ember.backends.docker_pool import WarmLaunch, WarmPool
from ember.backends.docker_warm import LABEL_CONTROL, WarmConfig
from ember.core.errors import BackendError, NotFound

_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# What a worker keeps of Docker's default capabilities. Images run as root, and their start scripts
# often install packages, chown caches and drop to a user of their own: CHOWN, DAC_OVERRIDE, FOWNER,
# SETUID, SETGID and KILL are what that needs. Dropped with the rest: NET_RAW (raw sockets, spoofing),
# MKNOD, SYS_CHROOT, SETFCAP, SETPCAP, FSETID, AUDIT_WRITE and NET_BIND_SERVICE.
HARDENED_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "KILL")
DEFAULT_PIDS_LIMIT = 4096
# Host paths a worker never gets, whatever a spec says: the engine's socket is root on the host.
_NEVER_MOUNTED = ("/var/run/docker.sock", "/run/docker.sock", "/var/run/docker", "/run/docker")


class DockerBackend(ContainerLogs):
    """The Docker engine as a compute backend (see `ember.backends.base.Backend`)."""

    name = "docker"

    def __init__(
        self,
        client_factory: Callable[[], DockerClient] = docker.from_env,
        *,
        host_network: bool = True,
        on_progress: ProgressCallback | None = None,
        instance: str | None = None,
        logs_dir: Path | None = None,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        warm: WarmConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`instance` scopes the backend to one control plane: its containers carry that label and
        `observe` lists only those (None: every Ember-managed container on the engine). `logs_dir` keeps
        removed containers' logs (None: they go with the container). `pids_limit`: the most processes
        and threads one worker container may hold. `warm`: keep scaled-down flex workers' containers
        paused for reuse (None: never; see `docker_pool`), timed by `clock`."""
        self._client_factory = client_factory
        self._pids_limit = pids_limit
        self._logs_dir = Path(logs_dir) if logs_dir is not None else None
        self._follows: dict[str, set[LogStream]] = {}
        self._pool = (
            WarmPool(warm, base_labels=self._label_filters, clock=clock) if warm is not None else None
        )
        self._instance = instance
        self._host_network = host_network
        self._on_progress = on_progress
        self._client: DockerClient | None = None
        self._client_lock = asyncio.Lock()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _docker(self) -> DockerClient:
        async with self._client_lock:
            if self._client is None:
                try:
                    self._client = await asyncio.to_thread(self._client_factory)
                except docker.errors.DockerException as exc:
                    close_left_sockets(exc)
                    raise BackendError(f"docker: the engine is not reachable: {exc}") from None
            return self._client

    def _label_filters(self) -> list[str]:
        """The label filters that name this backend's containers."""
        filters = [f"{LABEL_MANAGED}=1"]
        if self._instance:
            filters.append(f"{LABEL_INSTANCE}={self._instance}")
        return filters

    def _find(self, client: DockerClient, worker_id: str) -> Container | None:
        """The container of `worker_id` (blocking), or None: the one its name says."""
        if not _SAFE_ID.match(worker_id):
            return None
        try:
            return client.containers.get(container_name(worker_id))
        except docker.errors.NotFound:
            return None

    async def _container(self, worker_id: str) -> Container:
        client = await self._docker()
        try:
            container = await asyncio.to_thread(self._find, client, worker_id)
        except docker.errors.DockerException as exc:
            raise docker_failure(f"looking up worker {worker_id}", exc)
        if container is None:
            raise NotFound(f"worker {worker_id} has no container")
        return container

    def _since(self, container: Container, worker_id: str) -> float | None:
        """When `worker_id` took `container` over from the warm pool (None: it was made for it)."""
        return self._pool.since(container, worker_id) if self._pool is not None else None

    # -- launch -------------------------------------------------------------------------------------

    def _run(self, client: DockerClient, spec: LaunchSpec) -> None:
        """Resume a parked container of the same key (warm pool), or create and start the worker's
        container in as few engine calls as a cold start allows: the image is looked up (and pulled)
        only when the engine says it is missing, and an existing container of the same worker id only
        when the name is taken."""
        if not spec.image:
            raise BackendError(f"docker: worker {spec.worker_id} has no image to run")
        image = spec.image
        warm: WarmLaunch | None = None
        if self._pool is not None:

            def pull() -> None:
                ensure_image(client, spec.worker_id, image, spec.registry_auth, self._on_progress)

            warm = self._pool.plan(client, spec, self._host_network, pull)
            name = container_name(spec.worker_id)
            if warm is not None and self._pool.resume(client, spec, warm, self._env(spec), name):
                return
        for _attempt in range(3):  # bounded: a name conflict or a missing image each cost one retry
            try:
                container_id, token = self._create(client, spec, image, warm)
            except docker.errors.ImageNotFound:
                ensure_image(client, spec.worker_id, image, spec.registry_auth, self._on_progress)
                continue
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                existing = self._find(client, spec.worker_id)
                if existing is None:
                    continue  # removed meanwhile: try again
                if existing.status in ("running", "restarting", "paused"):
                    return  # already running (or a concurrent launch of the same worker won the name)
                if existing.status == "created":
                    # Created but never started (e.g. a crash in between).
                    container_id, token = existing.id, existing.labels.get(LABEL_CONTROL)
                else:
                    self._remove(existing, spec.worker_id)  # an exited worker of the same id: start afresh
                    continue
            client.api.start(container_id)
            if token is not None and self._pool is not None:
                self._pool.hand_over(client, container_id, token, spec, self._env(spec), None, warm)
            return
        raise BackendError(f"docker: could not create the container of worker {spec.worker_id}")

    def _env(self, spec: LaunchSpec) -> dict[str, str]:
        """The worker's environment: the spec's, and its GPUs when they are not real devices."""
        env = dict(spec.env)
        if spec.gpu_devices and not spec.real_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_devices)
        return env

    def _create(
        self, client: DockerClient, spec: LaunchSpec, image: str, warm: WarmLaunch | None
    ) -> tuple[str, str | None]:
        """Create the container of `image` (not started): its id, and its control directory when warm-capable
        (its launcher then waits for the worker's identity, which is not in the container's env)."""
        device_requests = []
        if spec.real_gpus:
            if spec.gpu_devices:
                device_requests.append(
                    DeviceRequest(device_ids=list(spec.gpu_devices), capabilities=[["gpu"]])
                )
            else:
                device_requests.append(DeviceRequest(count=-1, capabilities=[["gpu"]]))
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
        env: dict[str, str] | None = self._env(spec)
        command, entrypoint, token = spec.command, None, None
        if warm is not None and self._pool is not None:
            token, warm_labels, control, entrypoint = self._pool.creation(warm)
            labels.update(warm_labels)
            mounts.append(control)
            command, env = warm.argv, None
        try:
            host_config = client.api.create_host_config(
                network_mode="host" if self._host_network else None,
                mounts=mounts or None,
                device_requests=device_requests or None,
                init=True,
                **self._hardening(),
            )
            created = client.api.create_container(
                image,
                command=command,
                entrypoint=entrypoint,
                name=container_name(spec.worker_id),
                labels=labels,
                environment=env,
                host_config=host_config,
            )
        except BaseException:
            if token is not None and self._pool is not None:
                self._pool.dirs.remove(token)
            raise
        return str(created["Id"]), token

    def _hardening(self) -> Hardening:
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
        except (docker.errors.DockerException, OSError) as exc:
            raise docker_failure(f"starting worker {spec.worker_id} from {spec.image}", exc)

    # -- stop / observe -----------------------------------------------------------------------------

    def _stop(self, client: DockerClient, worker_id: str, grace_s: float) -> None:
        container = self._find(client, worker_id)
        if container is None:
            return
        try:
            if container.status == "paused":
                client.api.unpause(container.id)  # `docker stop` cannot signal a frozen container
            if container.status in ("running", "paused"):
                container.stop(timeout=max(0, math.ceil(grace_s)))
        except docker.errors.NotFound:
            return  # removed concurrently: the goal is reached
        self._remove(container, worker_id)

    def _remove(self, container: Container, worker_id: str) -> None:
        """Keep the worker's logs, then remove its container and control directory."""
        self._end_follows(worker_id)
        self._keep_logs(container, worker_id)
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
        if self._pool is not None:
            self._pool.dirs.remove((container.labels or {}).get(LABEL_CONTROL))

    async def stop(self, worker_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM (through the container's init), kill after `grace_s`, remove. Unknown ids: no-op."""
        client = await self._docker()
        try:
            await asyncio.to_thread(self._stop, client, worker_id, grace_s)
        except docker.errors.DockerException as exc:
            raise docker_failure(f"stopping worker {worker_id}", exc)

    def _park(self, client: DockerClient, worker_id: str, grace_s: float) -> bool:
        container = self._find(client, worker_id)
        if container is None:
            return False
        if self._pool is not None and self._pool.park(
            client, container, worker_id, grace_s, lambda: self._detach(container, worker_id)
        ):
            return True
        self._stop(client, worker_id, grace_s)
        return False

    def _detach(self, container: Container, worker_id: str) -> None:
        """What a parked container leaves behind of its worker: the kept log; followers end."""
        self._end_follows(worker_id)
        self._keep_logs(container, worker_id)

    async def park(self, worker_id: str, grace_s: float = 10.0) -> bool:
        """Stop the worker (SIGTERM, SIGKILL after `grace_s`) but keep its container paused for the
        next worker of the same key (see `docker_pool`). When the container cannot be kept (warm
        containers off, not warm-capable, full of trouble) this is `stop`. Whether it was kept."""
        client = await self._docker()
        try:
            return await asyncio.to_thread(self._park, client, worker_id, grace_s)
        except docker.errors.DockerException as exc:
            raise docker_failure(f"stopping worker {worker_id}", exc)

    async def sweep_warm(self, releases: Mapping[str, int]) -> None:
        """Remove parked containers whose time is up, or whose endpoint (a key of `releases`, the
        release it serves) is gone or serves another release now; at most every second."""
        if self._pool is None or not self._pool.due(releases):
            return
        try:
            client = await self._docker()
        except BackendError:
            return  # no engine, nothing parked on it to remove (`observe` reports the engine)
        try:
            await asyncio.to_thread(self._pool.sweep, client, releases)
        except docker.errors.DockerException as exc:
            raise docker_failure("removing parked containers", exc)

    def _list(self, client: DockerClient, endpoint_id: str | None) -> list[Observed]:
        filters = self._label_filters()
        if endpoint_id is not None:
            filters.append(f"{LABEL_ENDPOINT}={endpoint_id}")
        found: list[Observed] = []
        for container in client.containers.list(all=True, filters={"label": filters}):
            worker_id = worker_of(container.name, container.labels)
            if worker_id is None:
                continue  # parked: no worker's
            with contextlib.suppress(docker.errors.NotFound):
                found.append(observed(container, worker_id, self._since(container, worker_id)))
        return sorted(found, key=lambda o: o.worker_id)

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        """Every Ember-labelled container (running or exited), optionally of one endpoint."""
        client = await self._docker()
        try:
            return await asyncio.to_thread(self._list, client, endpoint_id)
        except docker.errors.DockerException as exc:
            raise docker_failure("listing workers", exc)

    # -- exec / shell ------------------------------------------------------------------------------

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
            raise docker_failure(f"exec in worker {worker_id}", exc)
        return ExecResult(exit_code=int(exit_code if exit_code is not None else -1), output=output or b"")

    def shell_command(self, worker_id: str) -> list[str]:
        """The argv of an interactive shell in the worker (`ember ssh` runs it with the user's TTY)."""
        argv = ["docker"]
        base_url = str(getattr(getattr(self._client, "api", None), "base_url", ""))
        if base_url.startswith(("http://", "https://")):  # a remote engine, not the local socket
            argv += ["-H", "tcp://" + base_url.split("://", 1)[1]]
        return [*argv, "exec", "-it", container_name(worker_id), "/bin/sh"]

    async def aclose(self) -> None:
        """Remove the parked containers and close the docker client; workers' containers keep running."""
        client, self._client = self._client, None
        if client is None:
            return
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._pool.clear, client)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(client.close)
