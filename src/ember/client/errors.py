"""The client's own error tree (it must not import `ember.core`, so it cannot share Ember's).

ClientError
├── TransportError        no HTTP answer (refused, reset, timed out)
├── HTTPStatusError       the server answered 4xx/5xx (carries status and body)
│   ├── BadRequest        400, 413, 422: the request was malformed or too large
│   ├── Unauthorized      401, 403: missing or wrong API key
│   ├── NotFound          404: unknown endpoint or job (or someone else's)
│   ├── RateLimited       429
│   └── ServerError       5xx
├── JobError              the job ended but not COMPLETED (carries the job record)
│   ├── JobFailed
│   ├── JobCancelled
│   └── JobTimedOut
└── WaitTimeout           waiting for a job took longer than asked (also a TimeoutError)
"""

from __future__ import annotations

from typing import Any

from ember.client._json import JobRecord, Json


class ClientError(Exception):
    """Base of every error raised by `ember.client`."""


class TransportError(ClientError):
    pass


class HTTPStatusError(ClientError):
    def __init__(self, status: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class BadRequest(HTTPStatusError):
    pass


class Unauthorized(HTTPStatusError):
    pass


class NotFound(HTTPStatusError):
    pass


class RateLimited(HTTPStatusError):
    pass


class ServerError(HTTPStatusError):
    pass


class JobError(ClientError):
    def __init__(self, job_id: str, status: str, error: Any, record: dict[str, Any]) -> None:
        super().__init__(f"job {job_id} ended {status}: {error}")
        self.job_id = job_id
        self.status = status
        self.error = error
        self.record = record


class JobFailed(JobError):
    pass


class JobCancelled(JobError):
    pass


class JobTimedOut(JobError):
    pass


class WaitTimeout(ClientError, TimeoutError):
    pass


def status_error(status: int, body: Json, what: str) -> HTTPStatusError:
    """The error for a non-2xx answer to `what` (e.g. "POST /v2/ep/run")."""
    detail = body.get("error") or body.get("detail") if isinstance(body, dict) else body
    message = f"{what} answered HTTP {status}: {detail}"
    if status in (401, 403):
        return Unauthorized(status, body, message)
    if status == 404:
        return NotFound(status, body, message)
    if status == 429:
        return RateLimited(status, body, message)
    if status >= 500:
        return ServerError(status, body, message)
    if status in (400, 413, 422):
        return BadRequest(status, body, message)
    return HTTPStatusError(status, body, message)


def job_error(record: JobRecord) -> JobError | None:
    """The error for a final, non-COMPLETED job record; None for anything else."""
    status = record.get("status")
    cls = {"FAILED": JobFailed, "CANCELLED": JobCancelled, "TIMED_OUT": JobTimedOut}.get(str(status))
    if cls is None:
        return None
    return cls(str(record.get("id")), str(status), record.get("error"), record)
