"""The API's answers as the CLI reads them: TypedDicts of the fields the commands use (the API sends
more; those are printed whole with --json). `http.call` returns the parsed JSON; a command states which
of these it asked for where it keeps the answer."""

from __future__ import annotations

from typing import NotRequired, TypedDict


class GitSource(TypedDict, total=False):
    """An endpoint's `git` field."""

    url: str
    branch: str
    dockerfile: str
    context: str
    webhookSecret: str


class EndpointRecord(TypedDict):
    """An endpoint (`/v1/endpoints/{id}`)."""

    id: str
    name: str
    release: int
    createdAt: str | None
    updatedAt: str | None
    workersMin: int
    workersMax: int
    idleTimeout: int
    scalerType: str
    scalerValue: int
    sourceDir: str | None
    handler: str | None
    git: GitSource | None


class ReleaseLine(TypedDict):
    """A release in an endpoint's list of releases."""

    release: int
    status: str
    createdAt: str


class JobLine(TypedDict):
    """A job in the account's list of jobs (`/v1/jobs`)."""

    id: str
    endpointId: str
    status: str
    workerId: str | None
    createdAt: str
    error: NotRequired[str | None]


class TrafficJob(TypedDict):
    """A job of an endpoint's recent traffic, its times in epoch seconds (None until they happened)."""

    createdAt: float
    startedAt: float | None
    completedAt: float | None


class TrafficPrice(TypedDict):
    """What a flex worker of the endpoint costs."""

    gpuTypeId: str | None
    flexMicrosPerS: int
    activeDiscountPct: int


class TrafficServer(TypedDict):
    """The server's own timing (None: its loops do not run in that process)."""

    tickS: float | None
    takeHoldS: float


class Traffic(TypedDict):
    """An endpoint's recent traffic (`/v1/endpoints/{id}/traffic`), what `ember simulate` replays."""

    jobs: list[TrafficJob]
    coldStartsS: list[float]
    coldStartMedianS: float | None
    price: TrafficPrice
    server: NotRequired[TrafficServer]  # (servers before it was added sent none)


class SourceUpload(TypedDict):
    """An uploaded source (`POST /v1/sources`)."""

    id: str
    files: int
    size: int


class VolumeRecord(TypedDict):
    """A network volume, with what this host knows of its use."""

    id: str
    name: str
    size: int
    usedBytes: NotRequired[int | None]
    sizeEnforced: NotRequired[bool]
