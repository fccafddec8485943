"""How a stored job looks on the wire (spec §2.2/§3): the status record and the job handed to a worker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ember.core.json_body import dump


def record(row: Mapping[Any, Any]) -> dict[str, Any]:
    """`{"id", "status", "delayTime", "executionTime", "workerId", "output" | "error"}`.

    Fields not known yet are omitted."""
    rec: dict[str, Any] = {"id": row["id"], "status": row["state"]}
    started = row["started_at"]
    if started is not None:
        rec["delayTime"] = max(0, int((started - row["created_at"]) * 1000))
        if row["completed_at"] is not None:
            rec["executionTime"] = max(0, int((row["completed_at"] - started) * 1000))
    if row["worker_id"]:
        rec["workerId"] = row["worker_id"]
    if row["output"] is not None:
        rec["output"] = json.loads(row["output"])
    if row["error"]:
        rec["error"] = row["error"]
    if row["retried"]:
        rec["retries"] = row["retried"]
    return rec


_AFTER_OUTPUT = ("error", "retries")  # the fields `record` puts after "output"


def record_text(row: Mapping[Any, Any]) -> str:
    """`record(row)` as compact JSON text, with `row["output"]` (already JSON text) placed in it as it
    is, not decoded and encoded again."""
    output: str | None = row["output"]
    if output is None:
        return dump(record(row))
    head = record({**row, "output": None})
    tail = {k: head.pop(k) for k in _AFTER_OUTPUT if k in head}
    text = dump(head)[:-1] + ',"output":' + output
    return text + ("," + dump(tail)[1:] if tail else "}")


def worker_job(job_id: str, input_json: str, extra_json: str | None) -> str:
    """The JSON text of a job as a worker receives it: `{"id", "input", …extra}` (id always a string)."""
    head = '{"id":' + json.dumps(job_id) + ',"input":' + input_json
    if extra_json and len(extra_json) > 2:
        return head + "," + extra_json[1:]
    return head + "}"
