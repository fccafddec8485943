"""Wire shapes of /v1 records (camelCase, RunPod's REST field names, ISO-8601 UTC times)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from ember.core.money import format_dollars
from ember.core.specs import spec_from_json, to_wire
from ember.store.rows import AccountRow, EndpointRow, ReleaseRow, WorkerEvent, WorkerRow


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def endpoint(
    row: EndpointRow, *, owner: bool = True, workers: Sequence[WorkerRow] | None = None
) -> dict[str, object]:
    spec = spec_from_json(row["spec"])
    out = to_wire(spec)
    git = out.get("git")  # stored sealed; shown in the clear only by the answer that set it (api.endpoints)
    if isinstance(git, dict) and git:
        out["git"] = {k: v for k, v in git.items() if k != "webhookSecret"}
    out.pop("sourceDigest", None)
    out.update(
        id=row["id"],
        release=row["release"],
        createdAt=iso(row["created_at"]),
        updatedAt=iso(row["updated_at"]),
        scaling={"desiredWorkers": row["desired_workers"], "reason": row["scale_reason"]},
        status=row["status_message"],
    )
    if workers is not None:
        counts: dict[str, int] = {}
        for w in workers:
            counts[w["state"]] = counts.get(w["state"], 0) + 1
        out["workerCounts"] = counts
    return out


def worker(row: WorkerRow, now: float) -> dict[str, object]:
    return {
        "id": row["id"],
        "endpointId": row["endpoint_id"],
        "state": row["state"],
        "type": row["type"],
        "release": row["release"],
        "gpuTypeId": row["gpu_type"],
        "gpuCount": row["gpu_count"],
        "gpuDevices": [d for d in (row["gpu_devices"] or "").split(",") if d],
        "hostId": row["host"],
        "stateSince": iso(row["state_since"]),
        "secondsInState": round(max(0.0, now - row["state_since"]), 3),
        "reason": row["reason"],
        "lastSeenAt": iso(row["last_seen_at"]),
        "createdAt": iso(row["created_at"]),
        "failures": row["failures"],
        "nextAttemptAt": iso(row["next_attempt_at"]),
    }


def event(row: WorkerEvent) -> dict[str, object]:
    return {
        "state": row["to_state"],
        "from": row["from_state"],
        "at": iso(row["at"]),
        "reason": row["reason"],
    }


def release(row: ReleaseRow, serving: int) -> dict[str, object]:
    spec = json.loads(row["spec"])
    log = row["log"] or ""
    return {
        "release": row["number"],
        "status": row["status"],
        "serving": row["number"] == serving,
        "createdAt": iso(row["created_at"]),
        "image": row["image"] or spec.get("image_name"),
        "commit": row["commit"],
        "logTail": "\n".join(log.splitlines()[-30:]) if row["status"] == "FAILED" else None,
    }


def account(row: AccountRow, *, max_workers: int, workers: int) -> dict[str, object]:
    return {
        "id": row["id"],
        "name": row["name"],
        "isAdmin": bool(row["is_admin"]),
        "balance": format_dollars(int(row["balance_micros"])),
        "maxWorkers": max_workers,
        "workers": workers,
        "createdAt": iso(row["created_at"]),
    }
