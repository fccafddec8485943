"""The warm pool of the Docker backend: which launches make warm-capable containers, parking a stopped
flex worker's container, resuming one for the next worker of the same key, and removing them when their
time is up, their endpoint's release changes or the endpoint goes, beyond the maximum, and at shutdown.
Blocking code (the backend runs it in threads); the protocol with the container is in `docker_warm`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import docker.errors
from docker.types import Mount

from ember.backends.base import LaunchSpec
from ember.backends.docker_api import Container, DockerClient
from ember.backends.docker_labels import LABEL_ACCOUNT, LABEL_ENDPOINT, LABEL_RELEASE
from ember.backends.docker_warm import (
    CONTROL_TARGET,
    ENTRY_FILE,
    HANDOVER_TIMEOUT_S,
    LABEL_CONTROL,
    LABEL_WARM_KEY,
    RESUME_HANDOVER_S,
    STRAY_DIR_AGE_S,
    Claims,
    ControlDirs,
    LauncherGone,
    Parked,
    WarmConfig,
    launch_argv,
    list_parked,
    warm_key,
    warm_name,
)
from ember.core.errors import BackendError

log = logging.getLogger("ember.docker.warm")
# Sweeps list the engine at most this often (a parked container may outlive its time by that much).
SWEEP_EVERY_S = 1.0
DIRS_SWEEP_EVERY_S = 60.0


@dataclass(frozen=True)
class WarmLaunch:
    """A launch that makes (or resumes) a warm-capable container: the worker's argv, run by the
    launcher, and the key a parked container must carry to serve it."""

    argv: list[str]
    key: str
    image_id: str


class WarmPool:
    def __init__(
        self,
        cfg: WarmConfig,
        *,
        base_labels: Callable[[], list[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`base_labels`: the label filters naming this backend's containers (managed, instance)."""
        self.cfg = cfg
        self.dirs = ControlDirs(cfg.root)
        self._labels = base_labels
        self._clock = clock
        self._claims = Claims()
        self._no_launcher: set[str] = set()  # image ids whose interpreter could not run the launcher
        self._swept_at = float("-inf")
        self._swept_releases: Mapping[str, int] | None = None
        self._dirs_swept_at = float("-inf")
        self._maybe_parked = True  # unknown until the first sweep: a restart adopts what is there

    # -- launch -------------------------------------------------------------------------------------
    def plan(
        self, client: DockerClient, spec: LaunchSpec, host_network: bool, pull: Callable[[], None]
    ) -> WarmLaunch | None:
        """The warm launch of `spec` (pulling the image when missing), or None to run it plainly."""
        if not self.cfg.enabled or spec.image is None:
            return None
        try:
            image = client.api.inspect_image(spec.image)
        except docker.errors.ImageNotFound:
            pull()
            image = client.api.inspect_image(spec.image)
        image_id = str(image.get("Id", ""))
        argv = launch_argv(image.get("Config") or {}, spec.command)
        if argv is None or not image_id or image_id in self._no_launcher:
            return None
        return WarmLaunch(argv, warm_key(spec, image_id, argv, host_network), image_id)

    def creation(self, launch: WarmLaunch) -> tuple[str, dict[str, str], Mount, list[str]]:
        """A new container's control directory (token), labels, control mount and entrypoint."""
        token = self.dirs.create()
        labels = {LABEL_WARM_KEY: launch.key, LABEL_CONTROL: token}
        source = str(self.dirs.mount_source(token))
        mount = Mount(CONTROL_TARGET, source, type="bind", read_only=True)
        entrypoint = [launch.argv[0], "-I", "-S", f"{CONTROL_TARGET}/{ENTRY_FILE}", "--"]
        return token, labels, mount, entrypoint

    def hand_over(
        self,
        client: DockerClient,
        container_id: str,
        token: str,
        spec: LaunchSpec,
        env: Mapping[str, str],
        since: float | None,
        launch: WarmLaunch | None = None,
        timeout_s: float = HANDOVER_TIMEOUT_S,
    ) -> None:
        """Give the container's launcher the worker's identity (its whole environment). A new
        container's (`launch`) that stops first marks its image as one that cannot run the launcher."""

        def running() -> bool:
            state = client.api.inspect_container(container_id).get("State") or {}
            return bool(state.get("Running")) and not state.get("Paused")

        self.dirs.set_worker(token, spec.worker_id, since)
        try:
            self.dirs.hand_over(token, {"worker": spec.worker_id, "env": dict(env)}, running, timeout_s)
        except LauncherGone:
            if launch is not None:
                self._no_launcher.add(launch.image_id)  # the next launch of this image runs it plainly
            raise

    def resume(
        self, client: DockerClient, spec: LaunchSpec, launch: WarmLaunch, env: Mapping[str, str], name: str
    ) -> bool:
        """Resume the most recently parked container of `launch.key` as `spec`'s worker, named `name`.
        False when there is none, or it failed (then it is removed): the caller creates a container."""
        filters = [
            *self._labels(),
            f"{LABEL_WARM_KEY}={launch.key}",
            f"{LABEL_ACCOUNT}={spec.account_id}",
            f"{LABEL_ENDPOINT}={spec.endpoint_id}",
            f"{LABEL_RELEASE}={spec.release}",
        ]
        now = self._clock()
        found = [
            p
            for p in list_parked(client, filters)
            if p.paused and now - p.parked_at < self.cfg.hold_s and self.dirs.exists(p.token)
        ]
        found.sort(key=lambda p: -p.parked_at)
        chosen = self._claims.take([p.id for p in found])
        if chosen is None:
            return False
        parked = next(p for p in found if p.id == chosen)
        try:
            client.api.unpause(parked.id)
            self.hand_over(client, parked.id, parked.token, spec, env, time.time(), None, RESUME_HANDOVER_S)
            client.api.rename(parked.id, name)
        except (docker.errors.DockerException, BackendError, OSError) as exc:
            log.warning("warm_resume_failed container=%s error=%s", parked.id[:12], exc)
            self.discard(client, parked.id, parked.token)
            return False
        finally:
            self._claims.release(parked.id)
        log.info(
            "warm_resumed container=%s worker=%s",
            parked.id[:12],
            spec.worker_id,
            extra={"worker_id": spec.worker_id, "endpoint_id": spec.endpoint_id},
        )
        return True

    # -- park ---------------------------------------------------------------------------------------
    def park(
        self,
        client: DockerClient,
        container: Container,
        worker_id: str,
        grace_s: float,
        before_pause: Callable[[], None],
    ) -> bool:
        """Stop the worker in `container` (its launcher stays), pause and rename the container as parked.
        False (nothing done, or the container is to be removed by the caller) when it cannot be parked."""
        token = container.labels.get(LABEL_CONTROL)
        if not self.cfg.enabled or not token or container.status != "running" or not self.dirs.exists(token):
            return False
        try:
            parked = self.dirs.await_parked(
                token, lambda signal: client.api.kill(container.id, signal), max(0.0, grace_s)
            )
            if not parked:
                return False
            before_pause()
            client.api.pause(container.id)
            client.api.rename(container.id, warm_name(self._clock(), token))
        except (docker.errors.DockerException, OSError) as exc:
            log.warning("warm_park_failed worker=%s error=%s", worker_id, exc, extra={"worker_id": worker_id})
            return False
        self._maybe_parked = True
        log.info(
            "warm_parked worker=%s container=%s", worker_id, container.id[:12], extra={"worker_id": worker_id}
        )
        self.sweep(client, None, force=True)  # the maximum holds at once
        return True

    # -- removal ------------------------------------------------------------------------------------
    def discard(self, client: DockerClient, container_id: str, token: str | None) -> None:
        """Remove a container and its control directory (gone already: fine)."""
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(container_id, force=True)
        self.dirs.remove(token)

    def due(self, releases: Mapping[str, int] | None) -> bool:
        """Whether a sweep has anything to look at: something may be parked, and the releases changed
        or SWEEP_EVERY_S passed since the last sweep."""
        if not self._maybe_parked:
            return False
        return releases != self._swept_releases or self._clock() - self._swept_at >= SWEEP_EVERY_S

    def sweep(self, client: DockerClient, releases: Mapping[str, int] | None, *, force: bool = False) -> int:
        """Remove parked containers whose time is up, that are not paused (a resume cut short), whose
        endpoint is not in `releases` or serves another release there (None: not checked), and the
        oldest beyond the maximum (when `due`, or `force`). The number removed."""
        if not force and not self.due(releases):
            return 0
        now = self._clock()
        self._swept_at = now
        if releases is not None:
            self._swept_releases = dict(releases)
        mono = time.monotonic()
        kept: list[Parked] = []
        removed = 0
        for p in list_parked(client, self._labels()):
            if p.id in self._claims or not self.dirs.exists(p.token):
                continue  # being resumed, or not this server's
            endpoint, release = p.labels.get(LABEL_ENDPOINT, ""), p.labels.get(LABEL_RELEASE, "")
            gone = releases is not None and (endpoint not in releases or str(releases[endpoint]) != release)
            if gone or not p.paused or not self.cfg.enabled or now - p.parked_at >= self.cfg.hold_s:
                self.discard(client, p.id, p.token)
                removed += 1
            else:
                kept.append(p)
        kept.sort(key=lambda p: -p.parked_at)
        for p in kept[self.cfg.max_containers :]:
            self.discard(client, p.id, p.token)
            removed += 1
        self._maybe_parked = bool(kept)
        if removed:
            log.info("warm_removed count=%d kept=%d", removed, min(len(kept), self.cfg.max_containers))
        if mono - self._dirs_swept_at >= DIRS_SWEEP_EVERY_S:
            self._dirs_swept_at = mono
            self._sweep_dirs(client)
        return removed

    def _sweep_dirs(self, client: DockerClient) -> None:
        """Control directories whose container is gone (removed by hand, or a crash in between)."""
        rows = client.api.containers(all=True, filters={"label": [*self._labels(), LABEL_CONTROL]})
        used = {(row.get("Labels") or {}).get(LABEL_CONTROL) for row in rows}
        for token, age_s in self.dirs.tokens():
            if token not in used and age_s > STRAY_DIR_AGE_S:
                self.dirs.remove(token)

    def clear(self, client: DockerClient) -> None:
        """Remove every parked container of this server (shutdown)."""
        for p in list_parked(client, self._labels()):
            if self.dirs.exists(p.token):
                self.discard(client, p.id, p.token)
        self._maybe_parked = False

    def since(self, container: Container, worker_id: str) -> float | None:
        token = (container.labels or {}).get(LABEL_CONTROL)
        return self.dirs.worker_since(token, worker_id) if token else None
