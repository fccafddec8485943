"""Wire shapes of the worker protocol: validating job-take (and piggy-backed job-done) answers and
wrapping handler results.

Pure functions, no I/O: the result bodies match RunPod's `run_job` table (spec §1.6) so that a handler
behaves the same under either SDK.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias, TypedDict, TypeGuard

STREAM_ERROR_PREFIX = "handler: "

Json: TypeAlias = dict[str, "Json"] | list["Json"] | str | int | float | bool | None


class Job(TypedDict):
    """A job as the handler gets it: a string `id`, its `input`, and any other key the server sent."""

    id: str
    input: Json


class JobResult(TypedDict, total=False):
    """A job-done (or job-stream) body: the handler's output, its error, whether to recycle the worker."""

    output: object
    error: object
    stopPod: bool


@dataclass(frozen=True)
class TakeAnswer:
    """What one job-take response meant: the valid jobs, why others were skipped, and a pause hint."""

    jobs: list[Job] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    retry_after_s: float = 0.0
    failed: bool = False


def parse_take_response(status: int, content_type: str, body: bytes) -> TakeAnswer:
    """Interpret a job-take or job-take-batch response.

    204/400/empty/`[]` mean no job; 429 asks for a 5 s pause; other errors are problems. A 2xx JSON
    object is one job, an array is many; each job must be an object with a string `id` and an `input`
    key, and anything else is skipped with a problem (RunPod crashes or bricks on some of these).
    """
    if status == 429:
        return TakeAnswer(problems=["job-take answered 429; pausing"], retry_after_s=5.0)
    if status in (204, 400):
        return TakeAnswer()
    if not 200 <= status < 300:
        return TakeAnswer(problems=[f"job-take answered HTTP {status}"], failed=True)
    if not body.strip():
        return TakeAnswer()
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime != "application/json":
        return TakeAnswer(problems=[f"job-take answered content type {content_type!r}, not JSON"])
    try:
        payload: Json = json.loads(body)
    except ValueError as exc:
        return TakeAnswer(problems=[f"job-take answered invalid JSON: {exc}"])
    items: list[Json] = payload if isinstance(payload, list) else [payload]
    return _runnable(items)


def parse_done_response(status: int, content_type: str, body: bytes) -> TakeAnswer:
    """Jobs piggy-backed on a job-done answer `{"status": "ok", "jobs": [<job>, ...]}` (an Ember
    extension, asked for with `take=N`); each job is what job-take would have answered.

    Anything else (no `jobs` key, an empty list, not a 2xx, not JSON: RunPod or an older Ember) means
    no job, silently. Only malformed elements of a `jobs` list are reported as problems.
    """
    if not 200 <= status < 300 or b'"jobs"' not in body:
        return TakeAnswer()
    try:
        payload: Json = json.loads(body)
    except ValueError:
        return TakeAnswer()
    items = payload.get("jobs") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        return TakeAnswer()
    return _runnable(items)


def _runnable(items: list[Json]) -> TakeAnswer:
    """The runnable jobs among `items`, and a problem for each one that isn't."""
    jobs: list[Job] = []
    problems: list[str] = []
    for item in items:
        problem = job_problem(item)
        if problem is not None:
            problems.append(problem)
        elif is_job(item):  # always, once `job_problem` found none
            jobs.append(item)
    return TakeAnswer(jobs=jobs, problems=problems)


def is_job(item: object) -> TypeGuard[Job]:
    """`item` is shaped as a `Job`: an object with a string `id` and an `input` key."""
    return isinstance(item, dict) and isinstance(item.get("id"), str) and "input" in item


def job_problem(item: object) -> str | None:
    """Why `item` is not a runnable job, or None when it is one."""
    if not isinstance(item, dict):
        return f"skipped a job that is not an object: {_short(item)}"
    if "id" not in item or "input" not in item:
        return f"skipped a job missing 'id' or 'input': {_short(item)}"
    job_id = item["id"]
    if not isinstance(job_id, str) or not job_id:
        return f"skipped a job whose id is not a non-empty string: {_short(job_id)}"
    return None


def parse_stop_response(status: int, content_type: str, body: bytes) -> list[str]:
    """Job ids in a job-stop answer `{"jobsToStop": [...]}`; anything else means none."""
    if status != 200 or content_type.split(";", 1)[0].strip().lower() != "application/json":
        return []
    try:
        payload: Json = json.loads(body)
    except ValueError:
        return []
    job_ids = payload.get("jobsToStop") if isinstance(payload, dict) else None
    if not isinstance(job_ids, list):
        return []
    return [job_id for job_id in job_ids if isinstance(job_id, str)]


def wrap_return(value: object) -> JobResult:
    """The job-done body for a (non-generator) handler's return value, as RunPod builds it.

    A dict loses its `error` key (sent as `error` when truthy) and its `refresh_worker` key (→
    `stopPod: true`); an empty remaining output is dropped. Any other value is `{"output": value}`.
    The caller's object is not mutated.
    """
    if not isinstance(value, dict):
        return {"output": value}
    output = dict(value)
    error = output.pop("error", None)
    refresh = output.pop("refresh_worker", None)
    result: JobResult = {}
    if output:
        result["output"] = output
    if error:
        result["error"] = error
    if refresh:
        result["stopPod"] = True
    return result


def exception_error(
    exc: BaseException, traceback_text: str, *, hostname: str, worker_id: str, version: str
) -> JobResult:
    """The job-done body for a handler that raised: `error` is a JSON-encoded object string."""
    info = {
        "error_type": str(type(exc)),
        "error_message": str(exc),
        "error_traceback": traceback_text,
        "hostname": hostname,
        "worker_id": worker_id,
        "ember_version": version,
    }
    return {"error": json.dumps(info)}


def stream_chunk_error(chunk: object) -> str | None:
    """A yielded dict with a truthy `error` ends the stream: that chunk is not sent, this string is."""
    if isinstance(chunk, dict) and chunk.get("error"):
        return str(chunk["error"])
    return None


def generator_exception_error(exc: BaseException, traceback_text: str) -> JobResult:
    """The job-done body for a generator that raised: a plain string, as RunPod sends it."""
    return {"error": f"{STREAM_ERROR_PREFIX}{exc} \ntraceback: {traceback_text}"}


def encode_body(body: Mapping[str, object]) -> bytes:
    """Serialize a result body as raw UTF-8 JSON; an unserializable output becomes an error body."""
    try:
        return json.dumps(body, ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        fallback: JobResult = {"error": f"the handler's result is not JSON-serializable: {exc}"}
        if body.get("stopPod"):
            fallback["stopPod"] = True
        return json.dumps(fallback, ensure_ascii=False).encode()


def _short(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
