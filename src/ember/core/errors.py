"""The whole error tree of Ember. `api/errors.py` holds the only mapping to HTTP status codes.

EmberError
├── InvalidInput          the request or spec is malformed (carries every problem at once)
│   └── PayloadTooLarge   a body above the route's limit
├── RequestTimeout        a request body did not arrive in time (slow or shorter than announced)
├── Unauthorized          missing or unknown API key
├── Forbidden             the key is valid but may not do this (e.g. a tenant naming a host path)
├── NotFound              unknown id, or one that belongs to another account (ids never leak)
├── Conflict              the action is not legal in the current state (e.g. retry a COMPLETED job)
├── LimitExceeded         an account limit (balance, max workers) refuses the action
├── BackendError          a compute backend (processes, Docker, …) failed
├── StoreError            the database failed or is unreachable
├── BuildError            an image or virtualenv build failed (carries the log tail)
├── OutboundRefused       a webhook or git remote resolves to an address outbound calls may not reach
└── ModelError            a model download or cache operation failed
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: which field, what value, and why."""

    field: str
    message: str
    value: object = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"field": self.field, "message": self.message}
        if self.value is not None:
            out["value"] = self.value
        return out


class EmberError(Exception):
    """Base of every error Ember raises on purpose."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EmberError):
    code = "invalid_input"

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class RequestTimeout(EmberError):
    code = "request_timeout"


class Unauthorized(EmberError):
    code = "unauthorized"


class Forbidden(EmberError):
    code = "forbidden"


class NotFound(EmberError):
    code = "not_found"


class Conflict(EmberError):
    code = "conflict"


class LimitExceeded(EmberError):
    code = "limit_exceeded"


class BackendError(EmberError):
    code = "backend_error"


class StoreError(EmberError):
    code = "store_error"


class BuildError(EmberError):
    code = "build_error"

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class OutboundRefused(EmberError):
    """A call a tenant chose (webhook, git) would connect to a refused address (see `core.outbound`)."""

    code = "outbound_refused"


class ModelError(EmberError):
    code = "model_error"
