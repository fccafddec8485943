"""A backend's values as JSON, for the orders and reports between the control plane and a host's
agent (`ember agent`): `LaunchSpec` one way, `Observed` the other."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ember.backends.base import LaunchSpec, Mount, Observed


def spec_to_json(spec: LaunchSpec) -> dict[str, object]:
    out = dataclasses.asdict(spec)
    out["mounts"] = [dataclasses.asdict(m) for m in spec.mounts]
    out["gpu_devices"] = list(spec.gpu_devices)
    return out


def spec_from_json(value: Mapping[str, object]) -> LaunchSpec:
    """The spec an order carries (raises TypeError or ValueError on a malformed one)."""
    fields = {f.name for f in dataclasses.fields(LaunchSpec)}
    known = {k: v for k, v in value.items() if k in fields}
    mounts = known.pop("mounts", None) or []
    devices = known.pop("gpu_devices", None) or []
    if not isinstance(mounts, list) or not isinstance(devices, list):
        raise ValueError("mounts and gpu_devices are lists")
    return LaunchSpec(
        **known,  # type: ignore[arg-type]  # each field as spec_to_json wrote it
        mounts=tuple(Mount(**m) for m in mounts),
        gpu_devices=tuple(str(d) for d in devices),
    )


def whole(value: object) -> int | None:
    """An integer field of an order or an answer (JSON's true and false are not numbers here)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def observed_to_json(o: Observed) -> dict[str, object]:
    return dataclasses.asdict(o)


def observed_from_json(value: object) -> Observed | None:
    """One worker of an agent's report, or None when the entry is malformed."""
    if not isinstance(value, Mapping):
        return None
    try:
        return Observed(
            worker_id=str(value["worker_id"]),
            endpoint_id=str(value["endpoint_id"]),
            release=int(value["release"]),
            running=bool(value["running"]),
            exit_code=None if value.get("exit_code") is None else int(value["exit_code"]),
            started_at=None if value.get("started_at") is None else float(value["started_at"]),
            detail=str(value.get("detail") or ""),
        )
    except (KeyError, TypeError, ValueError):
        return None
