"""The part of docker-py the Docker backend uses, typed: Protocols for the client, its low-level API and
its container objects, and TypedDicts for the engine's records the backend reads (the keys it uses).

docker-py ships no type hints; this module is the one place its shapes are written down, so that the
backend's modules read typed values, not untyped ones. It describes; it calls nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, TypedDict, overload

from docker.types import DeviceRequest, Mount


class ContainerState(TypedDict, total=False):
    """`State` of a container's inspect record."""

    Status: str
    Running: bool
    Paused: bool
    ExitCode: int
    Error: str
    OOMKilled: bool
    StartedAt: str


class ContainerInspect(TypedDict, total=False):
    """A container's inspect record (`Container.attrs`, `APIClient.inspect_container`)."""

    Id: str
    State: ContainerState


class ContainerSummary(TypedDict, total=False):
    """A row of the engine's container list (`APIClient.containers`)."""

    Id: str
    Names: list[str]
    Labels: dict[str, str] | None
    State: str


class ImageConfig(TypedDict, total=False):
    """`Config` of an image's inspect record."""

    Entrypoint: list[str] | None
    Cmd: list[str] | None


class ImageInspect(TypedDict, total=False):
    """An image's inspect record (`APIClient.inspect_image`)."""

    Id: str
    Config: ImageConfig | None


class CreatedContainer(TypedDict):
    """The engine's answer to creating a container."""

    Id: str


class PullEvent(TypedDict, total=False):
    """One decoded progress event of an image pull."""

    id: str
    status: str
    error: str


class LogStream(Protocol):
    """A container's log output as docker-py streams it: chunks of bytes, closed to end a follow."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Container(Protocol):
    """A docker-py `Container` (its fields as of the call that returned it)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def labels(self) -> dict[str, str]: ...

    @property
    def attrs(self) -> ContainerInspect: ...

    def stop(self, *, timeout: int) -> None: ...

    def remove(self, *, force: bool) -> None: ...

    def exec_run(self, cmd: list[str]) -> tuple[int | None, bytes | None]: ...

    @overload
    def logs(
        self, *, stdout: bool, stderr: bool, stream: Literal[False], tail: int, since: float | None
    ) -> bytes: ...

    @overload
    def logs(
        self, *, stream: Literal[True], follow: bool, tail: int | Literal["all"], since: float | None
    ) -> LogStream: ...


class Containers(Protocol):
    """docker-py's `client.containers`."""

    def get(self, container_id: str) -> Container: ...

    def list(self, *, all: bool, filters: dict[str, list[str]]) -> list[Container]: ...


class Images(Protocol):
    """docker-py's `client.images` (only whether the engine has an image is asked)."""

    def get(self, name: str) -> object: ...


class Hardening(TypedDict):
    """The host-config settings that confine a tenant's container (`DockerBackend._hardening`)."""

    security_opt: list[str]
    cap_drop: list[str]
    cap_add: list[str]
    pids_limit: int
    ipc_mode: str
    privileged: bool


class APIClient(Protocol):
    """docker-py's low-level client (`client.api`): one method per engine endpoint."""

    @property
    def base_url(self) -> str: ...

    def create_host_config(
        self,
        *,
        network_mode: str | None,
        mounts: list[Mount] | None,
        device_requests: list[DeviceRequest] | None,
        init: bool,
        security_opt: list[str],
        cap_drop: list[str],
        cap_add: list[str],
        pids_limit: int,
        ipc_mode: str,
        privileged: bool,
    ) -> dict[str, object]: ...

    def create_container(
        self,
        image: str,
        *,
        command: list[str] | None,
        entrypoint: list[str] | None,
        name: str,
        labels: dict[str, str],
        environment: dict[str, str] | None,
        host_config: dict[str, object],
    ) -> CreatedContainer: ...

    def start(self, container: str) -> None: ...

    def inspect_container(self, container: str) -> ContainerInspect: ...

    def inspect_image(self, image: str) -> ImageInspect: ...

    def containers(self, *, all: bool, filters: dict[str, list[str]]) -> list[ContainerSummary]: ...

    def pause(self, container: str) -> None: ...

    def unpause(self, container: str) -> None: ...

    def rename(self, container: str, name: str) -> None: ...

    def kill(self, container: str, signal: str) -> None: ...

    def remove_container(self, container: str, *, force: bool) -> None: ...

    def pull(
        self,
        repository: str,
        tag: str,
        *,
        stream: Literal[True],
        decode: Literal[True],
        auth_config: dict[str, str] | None,
    ) -> Iterator[PullEvent]: ...


class DockerClient(Protocol):
    """docker-py's `DockerClient`, as `docker.from_env()` makes it."""

    @property
    def containers(self) -> Containers: ...

    @property
    def images(self) -> Images: ...

    @property
    def api(self) -> APIClient: ...

    def close(self) -> None: ...
