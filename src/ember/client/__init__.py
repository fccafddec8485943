"""Ember's small client for the `/v2` endpoint API (sync `Endpoint`, asyncio `AsyncEndpoint`).

Needs only httpx; must not import `ember.core` or anything server-side.
"""

from ember.client.aio import AsyncEndpoint, AsyncJob
from ember.client.errors import (
    BadRequest,
    ClientError,
    HTTPStatusError,
    JobCancelled,
    JobError,
    JobFailed,
    JobTimedOut,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    WaitTimeout,
)
from ember.client.sync import Endpoint, Job

__all__ = [
    "AsyncEndpoint",
    "AsyncJob",
    "BadRequest",
    "ClientError",
    "Endpoint",
    "HTTPStatusError",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimedOut",
    "NotFound",
    "RateLimited",
    "ServerError",
    "TransportError",
    "Unauthorized",
    "WaitTimeout",
]
