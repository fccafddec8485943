"""Endpoint and scaling specs, with `validate()` that returns every problem at once.

Field names on the wire are RunPod's (camelCase); `from_wire`/`to_wire` translate. A *release* is the
part of a spec that changes what runs (source, image, command, env, model); `release_key` derives it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from ember.core.errors import Problem
from ember.core.json_body import JsonObject


class ScalerType(StrEnum):
    """How an endpoint's worker count follows its load (`core.scaler`)."""

    QUEUE_DELAY = "QUEUE_DELAY"  # RunPod's: add workers when jobs wait longer than scalerValue s
    REQUEST_COUNT = "REQUEST_COUNT"  # RunPod's: one worker per scalerValue jobs queued or running
    PREDICTIVE = "PREDICTIVE"  # Ember's: forecast the load, sized by what a cold start still helps


SCALER_TYPES = tuple(ScalerType)
MAX_WORKERS_CAP = 1000


@dataclass(frozen=True)
class ScalingSpec:
    workers_min: int = 0
    workers_max: int = 3
    idle_timeout_s: int = 5  # whole seconds: RunPod's `idleTimeout` is an integer
    scaler_type: str = "QUEUE_DELAY"
    # seconds (QUEUE_DELAY), requests per worker (REQUEST_COUNT) or seconds to clear a backlog in after a
    # cold start (PREDICTIVE, see core.scaler.forecast); an integer
    scaler_value: int = 4


@dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint runs and how it scales. Immutable; updates produce a new value."""

    name: str
    # What runs: a directory on the host (local backend), an image (Docker backend) or a git source.
    source_dir: str | None = None  # a host path: the admin's only (tenants upload, `source_id`)
    # An uploaded source (`POST /v1/sources`) of the endpoint's account, snapshotted like a source_dir.
    source_id: str | None = None
    source_digest: str | None = None  # content digest of the source at deploy time (set by the server)
    # The file a source_dir worker runs, relative to source_dir (`src/handler.py`); the server fills in
    # the one it found when none is named (see `build.source.HANDLER_CANDIDATES`).
    handler: str | None = None
    image_name: str | None = None
    git: JsonObject | None = None
    docker_start_cmd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    model_name: str | None = None
    model_revision: str | None = None
    template_id: str | None = None
    # The account's registry auth (`/v1/containerregistryauth`) the image is pulled with. Not a release
    # field: changing it changes how an image is fetched, not what runs.
    container_registry_auth_id: str | None = None
    # Where and how it runs.
    gpu_type_ids: tuple[str, ...] = ()
    gpu_count: int = 1
    network_volume_id: str | None = None
    execution_timeout_ms: int = 600_000
    flashboot: bool = False
    container_disk_gb: int = 10
    scaling: ScalingSpec = ScalingSpec()

    def with_changes(self, **changes: Any) -> EndpointSpec:
        return replace(self, **changes)


RELEASE_FIELDS = (
    "source_dir",
    "source_digest",
    "handler",
    "image_name",
    "git",
    "docker_start_cmd",
    "env",
    "model_name",
    "model_revision",
)

# wire name -> (attribute, where): where is "spec" or "scaling".
WIRE_FIELDS: dict[str, tuple[str, str]] = {
    "name": ("name", "spec"),
    "sourceDir": ("source_dir", "spec"),
    "sourceId": ("source_id", "spec"),
    "handler": ("handler", "spec"),
    "imageName": ("image_name", "spec"),
    "git": ("git", "spec"),
    "dockerStartCmd": ("docker_start_cmd", "spec"),
    "env": ("env", "spec"),
    "modelName": ("model_name", "spec"),
    "modelRevision": ("model_revision", "spec"),
    "templateId": ("template_id", "spec"),
    "containerRegistryAuthId": ("container_registry_auth_id", "spec"),
    "gpuTypeIds": ("gpu_type_ids", "spec"),
    "gpuCount": ("gpu_count", "spec"),
    "networkVolumeId": ("network_volume_id", "spec"),
    "executionTimeoutMs": ("execution_timeout_ms", "spec"),
    "flashboot": ("flashboot", "spec"),
    "containerDiskInGb": ("container_disk_gb", "spec"),
    "workersMin": ("workers_min", "scaling"),
    "workersMax": ("workers_max", "scaling"),
    "idleTimeout": ("idle_timeout_s", "scaling"),
    "scalerType": ("scaler_type", "scaling"),
    "scalerValue": ("scaler_value", "scaling"),
}


# What every source endpoint ran before `handler` could name another file: leaving it out of the
# release key keeps the keys (and so the releases) of specs stored before the field existed.
DEFAULT_HANDLER = "handler.py"


def release_key(spec: EndpointSpec) -> str:
    """A digest of the fields that change what runs; a new value means a new release."""
    data = {name: getattr(spec, name) for name in RELEASE_FIELDS}
    if data["handler"] in (None, DEFAULT_HANDLER):
        del data["handler"]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_wire(spec: EndpointSpec) -> dict[str, object]:
    out: dict[str, object] = {}
    for wire, (attr, where) in WIRE_FIELDS.items():
        value = getattr(spec.scaling if where == "scaling" else spec, attr)
        out[wire] = list(value) if isinstance(value, tuple) else value
    return out


def from_wire(data: object, base: EndpointSpec | None = None) -> tuple[EndpointSpec | None, list[Problem]]:
    """Build a spec from wire fields (over `base` for updates). Returns (spec, problems); spec is None
    when there are problems. Unknown fields are problems too, so typos don't pass silently."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        return None, [Problem("body", "must be a JSON object", type(data).__name__)]
    # Values of any JSON type until `_check_types` has checked them against the fields' types.
    spec_changes: dict[str, Any] = {}
    scaling_changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in WIRE_FIELDS:
            if key in IGNORED_WIRE_FIELDS:
                continue
            problems.append(Problem(key, "unknown field", None))
            continue
        attr, where = WIRE_FIELDS[key]
        (scaling_changes if where == "scaling" else spec_changes)[attr] = value
    if base is None and "name" not in spec_changes:
        problems.append(Problem("name", "is required"))
    problems.extend(_check_types(spec_changes, scaling_changes))
    if problems:
        return None, problems
    if "gpu_type_ids" in spec_changes:
        spec_changes["gpu_type_ids"] = tuple(spec_changes["gpu_type_ids"])
    if "env" in spec_changes and spec_changes["env"] is None:
        spec_changes["env"] = {}
    if spec_changes.get("container_registry_auth_id") == "":
        spec_changes["container_registry_auth_id"] = None  # RunPod's clients send "" for "none"
    if spec_changes.get("handler"):
        spec_changes["handler"] = normalise_handler(spec_changes["handler"])
    start = base or EndpointSpec(name=spec_changes.get("name", ""))
    scaling = replace(start.scaling, **scaling_changes)
    spec = replace(start, scaling=scaling, **spec_changes)
    problems = validate(spec)
    return (None, problems) if problems else (spec, [])


# Fields RunPod's REST API accepts that Ember takes without acting on them.
IGNORED_WIRE_FIELDS = frozenset(
    {"computeType", "dataCenterIds", "allowedCudaVersions", "instanceIds", "vcpuCount"}
)

_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "source_dir": (str, type(None)),
    "source_id": (str, type(None)),
    "source_digest": (str, type(None)),
    "handler": (str, type(None)),
    "image_name": (str, type(None)),
    "git": (dict, type(None)),
    "docker_start_cmd": (str, type(None)),
    "env": (dict, type(None)),
    "model_name": (str, type(None)),
    "model_revision": (str, type(None)),
    "template_id": (str, type(None)),
    "container_registry_auth_id": (str, type(None)),
    "gpu_type_ids": (list, tuple),
    "gpu_count": (int,),
    "network_volume_id": (str, type(None)),
    "execution_timeout_ms": (int,),
    "flashboot": (bool,),
    "container_disk_gb": (int,),
    "workers_min": (int,),
    "workers_max": (int,),
    "idle_timeout_s": (int,),
    "scaler_type": (str,),
    "scaler_value": (int,),
}

_TYPE_NAMES: dict[type, str] = {type(None): "null", int: "an integer"}
_WIRE_NAME = {attr: wire for wire, (attr, _) in WIRE_FIELDS.items()}


def _check_types(*groups: Mapping[str, object]) -> list[Problem]:
    problems = []
    for group in groups:
        for attr, value in group.items():
            allowed = _TYPES[attr]
            bad_bool = isinstance(value, bool) and bool not in allowed
            if bad_bool or not isinstance(value, allowed):
                names = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
                problems.append(Problem(_WIRE_NAME[attr], f"must be {names}", value))
    return problems


def validate(spec: EndpointSpec) -> list[Problem]:
    """Every problem with a spec, each naming the wire field and the bad value."""
    p: list[Problem] = []
    s = spec.scaling
    if not spec.name or len(spec.name) > 64 or not all(c.isalnum() or c in "-_." for c in spec.name):
        shown = spec.name if len(spec.name) <= 64 else None  # an over-long name is not echoed back
        p.append(Problem("name", "must be 1-64 characters of letters, digits, '-', '_' or '.'", shown))
    if s.workers_min < 0:
        p.append(Problem("workersMin", "must be >= 0", s.workers_min))
    if s.workers_max < 0 or s.workers_max > MAX_WORKERS_CAP:
        p.append(Problem("workersMax", f"must be between 0 and {MAX_WORKERS_CAP}", s.workers_max))
    if s.workers_min > s.workers_max:
        p.append(Problem("workersMin", f"must not exceed workersMax ({s.workers_max})", s.workers_min))
    if s.idle_timeout_s < 0:
        p.append(Problem("idleTimeout", "must be >= 0 seconds", s.idle_timeout_s))
    if s.scaler_type not in SCALER_TYPES:
        p.append(Problem("scalerType", f"must be one of {', '.join(SCALER_TYPES)}", s.scaler_type))
    if s.scaler_value <= 0:
        p.append(Problem("scalerValue", "must be > 0", s.scaler_value))
    if spec.gpu_count < 1 or spec.gpu_count > 8:
        p.append(Problem("gpuCount", "must be between 1 and 8", spec.gpu_count))
    if not all(isinstance(g, str) and g for g in spec.gpu_type_ids):
        p.append(Problem("gpuTypeIds", "must be a list of non-empty strings", list(spec.gpu_type_ids)))
    if spec.execution_timeout_ms < 5_000 or spec.execution_timeout_ms > 7 * 24 * 3600 * 1000:
        p.append(
            Problem("executionTimeoutMs", "must be between 5000 and 604800000", spec.execution_timeout_ms)
        )
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in spec.env.items()):
        p.append(Problem("env", "must map strings to strings", None))
    if spec.git is not None and not isinstance(spec.git.get("url"), str):
        p.append(Problem("git.url", "is required for a git source", spec.git.get("url")))
    if spec.handler is not None:
        p.extend(handler_problems(spec.handler))
    return p


def normalise_handler(handler: str) -> str:
    """`./src//handler.py` -> `src/handler.py` (an absolute path stays absolute, for validate to refuse)."""
    lead = "/" if handler.startswith("/") else ""
    return lead + "/".join(part for part in handler.split("/") if part not in ("", "."))


def handler_problems(handler: str, field_name: str = "handler") -> list[Problem]:
    """What is wrong with a handler path: it must name a `.py` file inside the source directory, as a
    relative path (`/` separated) without `..`."""
    message = None
    parts = handler.split("/")
    if not handler.strip():
        message = "must name a file, e.g. src/handler.py"
    elif handler.startswith(("/", "~")) or "\\" in handler:
        message = "must be a path relative to the source directory"
    elif ".." in parts:
        message = "must not contain '..'"
    elif any(part in ("", ".") for part in parts) or not handler.endswith(".py"):
        message = "must be a relative path to a .py file, e.g. src/handler.py"
    return [] if message is None else [Problem(field_name, message, handler)]


def spec_to_json(spec: EndpointSpec) -> str:
    data = asdict(spec)
    return json.dumps(data, sort_keys=True)


def spec_from_json(text: str) -> EndpointSpec:
    data = json.loads(text)
    stored_scaling = data.pop("scaling")
    _round_up_fractions(stored_scaling, ("idle_timeout_s", "scaler_value"))
    scaling = ScalingSpec(**stored_scaling)
    data["gpu_type_ids"] = tuple(data.get("gpu_type_ids") or ())
    known = {f.name for f in fields(EndpointSpec)}
    return EndpointSpec(scaling=scaling, **{k: v for k, v in data.items() if k in known})


def _round_up_fractions(stored: dict[str, object], names: tuple[str, ...]) -> None:
    """Make stored scaling fields integers, in place: specs stored before they became integers hold
    floats (`5.0`); a fraction, which no API accepts any longer, rounds up (an idle timeout of 2.5 s
    keeps a worker 3 s; a scaler value of 0.5 becomes 1, the least allowed)."""
    for name in names:
        value = stored.get(name)
        if isinstance(value, float):
            stored[name] = math.ceil(value)
