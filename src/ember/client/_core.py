"""What the sync and async clients share: URLs, request bodies, response decoding, polling pace.

Pure (no I/O): `Endpoint` and `AsyncEndpoint` do the HTTP and call these.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from ember.client._json import JobRecord, Json
from ember.client.errors import ClientError, job_error, status_error

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
RUNSYNC_WAIT_MIN_MS = 1000
RUNSYNC_WAIT_MAX_MS = 300_000
POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_ATTEMPTS = 4


def resolve(
    endpoint_id: str, api_key: str | None, base_url: str | None, environ: Mapping[str, str] = os.environ
) -> tuple[str, dict[str, str]]:
    """The endpoint's URL prefix (`{base}/v2/{id}`) and the request headers.

    `base_url` may be the server root or end in `/v2`; unset, `EMBER_BASE_URL` or the local default is
    used. `api_key` falls back to `EMBER_API_KEY`; it is sent as `Authorization: Bearer KEY`.
    """
    if not endpoint_id or "/" in endpoint_id:
        raise ClientError(f"not an endpoint id: {endpoint_id!r}")
    base = (base_url or environ.get("EMBER_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if base.endswith("/v2"):
        base = base[: -len("/v2")]
    key = api_key if api_key is not None else environ.get("EMBER_API_KEY")
    headers = {"Accept": "application/json", "User-Agent": "ember-client/0.1.0"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return f"{base}/v2/{endpoint_id}", headers


def run_body(
    job_input: object,
    *,
    webhook: str | None = None,
    policy: Mapping[str, object] | None = None,
    s3_config: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The `/run` and `/runsync` body: the input is always wrapped (unlike RunPod's sync client)."""
    body: dict[str, object] = {"input": job_input}
    if webhook is not None:
        body["webhook"] = webhook
    if policy is not None:
        body["policy"] = dict(policy)
    if s3_config is not None:
        body["s3Config"] = dict(s3_config)
    return body


def runsync_wait_ms(timeout_s: float) -> int:
    """The `?wait=` value for a run_sync with `timeout_s`, clamped to the server's range."""
    return int(min(RUNSYNC_WAIT_MAX_MS, max(RUNSYNC_WAIT_MIN_MS, timeout_s * 1000)))


def decode(status: int, content: bytes, what: str) -> Json:
    """The JSON body of a 2xx answer; raises the matching HTTPStatusError otherwise."""
    try:
        body: Json = json.loads(content) if content else None
    except ValueError:
        body = content[:500].decode("utf-8", "replace")
    if not 200 <= status < 300:
        raise status_error(status, body, what)
    return body


def queued(answer: Json) -> tuple[str, JobRecord]:
    """The job id and record in a `/run` answer, or a ClientError saying what came instead."""
    job_id = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(job_id, str):
        raise ClientError(f"POST /run answered {answer!r}, not a job id")
    return job_id, answer


def object_of(body: Json, what: str) -> dict[str, Json]:
    """A JSON object answer (`/health`, `/purge-queue`, `/cancel`), or a ClientError saying what came."""
    if not isinstance(body, dict):
        raise ClientError(f"{what} answered {body!r}, not a JSON object")
    return dict(body)


def record_of(body: Json, what: str) -> JobRecord:
    """A job record (JSON object with `status`), or a ClientError saying what came instead."""
    if not isinstance(body, dict) or "status" not in body:
        raise ClientError(f"{what} answered {body!r}, not a job record")
    return body


def final_output(record: JobRecord) -> Json:
    """The output of a final record; raises JobFailed / JobCancelled / JobTimedOut for the others."""
    error = job_error(record)
    if error is not None:
        raise error
    return record.get("output")


def stream_outputs(body: JobRecord) -> list[Json]:
    """The outputs of the chunks in a `/stream` answer, in order (each chunk is `{"output": x}`)."""
    chunks = body.get("stream") or []
    if not isinstance(chunks, list):
        raise ClientError(f"GET /stream answered {body!r}, not a list of chunks")
    return [chunk.get("output") if isinstance(chunk, dict) else chunk for chunk in chunks]


def next_poll_s(previous_s: float) -> float:
    """Polling pace: fast at first (most jobs are short), then once a second."""
    return POLL_FIRST_S if previous_s <= 0 else min(POLL_MAX_S, previous_s * 2)


def retry_delay_s(attempt: int, headers: Mapping[str, str] | None) -> float:
    """Wait before retry number `attempt` (1-based); honours a small `Retry-After`."""
    if headers is not None:
        raw: str | None = headers.get("retry-after")
        if raw:
            try:
                return min(5.0, max(0.0, float(raw)))
            except ValueError:
                pass
    return min(2.0, 0.1 * 2.0 ** (attempt - 1))
