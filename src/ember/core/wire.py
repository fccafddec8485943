"""How a stored job looks on the wire (spec §2.2/§3): the status record and the job handed to a worker."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Protocol

from ember.core.json_body import dump


class JobFields(Protocol):
    """A job as `record` reads it: a row of the store's `jobs` table, or a dict of the same keys."""

    def keys(self) -> Iterable[str]: ...

    def __getitem__(self, key: str, /) -> object: ...


def record(row: JobFields) -> dict[str, object]:
    """`{"id", "status", "delayTime", "executionTime", "workerId", "output" | "error"}` of a job's row
    (its times epoch seconds, its output JSON text).

    Fields not known yet are omitted."""
    rec: dict[str, object] = {"id": row["id"], "status": row["state"]}
    started = row["started_at"]
    if isinstance(started, int | float):
        created = row["created_at"]
        if isinstance(created, int | float):
            rec["delayTime"] = max(0, int((started - created) * 1000))
        completed = row["completed_at"]
        if isinstance(completed, int | float):
            rec["executionTime"] = max(0, int((completed - started) * 1000))
    if row["worker_id"]:
        rec["workerId"] = row["worker_id"]
    output = row["output"]
    if isinstance(output, str):
        rec["output"] = json.loads(output)
    if row["error"]:
        rec["error"] = row["error"]
    if row["retried"]:
        rec["retries"] = row["retried"]
    return rec


def final_text(
    job_id: str,
    state: str,
    created_at: float,
    started_at: float | None,
    completed_at: float,
    worker_id: str | None,
    output_json: str | None,
    error: str | None,
    retried: int,
) -> str:
    """`record` of a job that has just ended, as compact JSON text written out from its facts (one per job
    on the job path), with `output_json` placed in it as it is, not decoded and encoded again: the same
    fields, in the same order, as `record` of its row."""
    text = '{"id":' + dump(job_id) + ',"status":' + dump(state)
    if started_at is not None:
        delay_ms = max(0, int((started_at - created_at) * 1000))
        execution_ms = max(0, int((completed_at - started_at) * 1000))
        text += f',"delayTime":{delay_ms},"executionTime":{execution_ms}'
    if worker_id:
        text += ',"workerId":' + dump(worker_id)
    if output_json is not None:
        text += ',"output":' + output_json
    if error:
        text += ',"error":' + dump(error)
    if retried:
        text += f',"retries":{retried}'
    return text + "}"


def worker_job(job_id: str, input_json: str, extra_json: str | None) -> str:
    """The JSON text of a job as a worker receives it: `{"id", "input", …extra}` (id always a string)."""
    head = '{"id":' + json.dumps(job_id) + ',"input":' + input_json
    if extra_json and len(extra_json) > 2:
        return head + "," + extra_json[1:]
    return head + "}"
