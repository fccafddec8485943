"""The part of docker-py that image builds, pushes and registry logins use, typed: Protocols for the
client, its low-level API and an image, and TypedDicts for the engine's events and records that are read.

docker-py ships no type hints; this module is where `build` writes down the shapes it relies on (the
Docker backend keeps its own, `backends.docker_api`: the two adapters do not import each other).
It describes; it calls nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol, TypedDict


class BuildEvent(TypedDict, total=False):
    """One decoded event of an image build: a chunk of its log, or its error."""

    stream: str
    error: str


class ProgressDetail(TypedDict, total=False):
    """Bytes of a layer sent so far, and its size."""

    current: int
    total: int


class PushAux(TypedDict, total=False):
    """The push's result, in its last events."""

    Digest: str


class PushEvent(TypedDict, total=False):
    """One decoded event of an image push."""

    id: str
    status: str
    error: str
    progressDetail: ProgressDetail
    aux: PushAux


class HistoryEntry(TypedDict, total=False):
    """One layer of an image's history (`docker history`)."""

    CreatedBy: str
    Size: int


class ImageConfig(TypedDict, total=False):
    """`Config` of an image's inspect record."""

    Env: list[str] | None


class ImageAttrs(TypedDict, total=False):
    """An image's inspect record (`Image.attrs`)."""

    Size: int
    Config: ImageConfig


class Image(Protocol):
    """A docker-py `Image`."""

    @property
    def id(self) -> str: ...

    @property
    def attrs(self) -> ImageAttrs: ...

    def history(self) -> list[HistoryEntry]: ...


class Images(Protocol):
    """docker-py's `client.images`."""

    def get(self, name: str) -> Image: ...


class APIClient(Protocol):
    """docker-py's low-level client (`client.api`)."""

    def build(
        self,
        *,
        path: str,
        dockerfile: str,
        tag: str,
        rm: bool,
        forcerm: bool,
        decode: Literal[True],
        buildargs: dict[str, str] | None,
        network_mode: str | None,
    ) -> Iterator[BuildEvent]: ...

    def push(
        self,
        repository: str,
        tag: str,
        *,
        stream: Literal[True],
        decode: Literal[True],
        auth_config: dict[str, str] | None,
    ) -> Iterator[PushEvent]: ...


class DockerClient(Protocol):
    """docker-py's `DockerClient`, as `docker.from_env()` makes it."""

    @property
    def images(self) -> Images: ...

    @property
    def api(self) -> APIClient: ...

    def login(self, *, username: str, password: str, registry: str, reauth: bool) -> object: ...

    def close(self) -> None: ...
