"""The blocking client: `Endpoint(...).run(x) -> Job`, `run_sync`, `health`, `purge_queue`.

httpx is the only dependency; every httpx exception becomes a `TransportError` here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from ember.client import _core
from ember.client._json import Json
from ember.client.errors import TransportError, WaitTimeout


class Endpoint:
    """A client for one endpoint's `/v2/{endpoint_id}/…` routes."""

    def __init__(
        self,
        endpoint_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._prefix, headers = _core.resolve(endpoint_id, api_key, base_url)
        self._http = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    def run(
        self,
        job_input: object,
        *,
        webhook: str | None = None,
        policy: Mapping[str, object] | None = None,
        s3_config: Mapping[str, object] | None = None,
    ) -> Job:
        """Queue a job (`POST /run`); returns its handle at once. Not retried (it is not idempotent)."""
        body = _core.run_body(job_input, webhook=webhook, policy=policy, s3_config=s3_config)
        answer = self._call("POST", "/run", json=body, retry=False)
        job_id, record = _core.queued(answer)
        return Job(self, job_id, record)

    def run_sync(
        self,
        job_input: object,
        timeout_s: float = 90.0,
        *,
        webhook: str | None = None,
        policy: Mapping[str, object] | None = None,
        s3_config: Mapping[str, object] | None = None,
    ) -> Any:
        """Run a job and wait for its output (`POST /runsync?wait=`, then `/status` polling).

        Raises JobFailed / JobCancelled / JobTimedOut when the job ends otherwise, WaitTimeout after
        `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        body = _core.run_body(job_input, webhook=webhook, policy=policy, s3_config=s3_config)
        path = f"/runsync?wait={_core.runsync_wait_ms(timeout_s)}"
        record = _core.record_of(
            self._call("POST", path, json=body, retry=False, timeout_s=timeout_s + 10.0), "POST /runsync"
        )
        if record.get("status") in _core.FINAL_STATES:
            return _core.final_output(record)
        return Job(self, str(record["id"]), record).output(max(0.0, deadline - time.monotonic()))

    def job(self, job_id: str) -> Job:
        """A handle on an existing job."""
        return Job(self, job_id, None)

    def health(self) -> dict[str, Any]:
        """`GET /health`: job counts by state and worker counts."""
        return _core.object_of(self._call("GET", "/health"), "GET /health")

    def purge_queue(self) -> dict[str, Any]:
        """`POST /purge-queue`: removes every IN_QUEUE job; returns `{"removed": n, …}`."""
        return _core.object_of(self._call("POST", "/purge-queue", retry=True), "POST /purge-queue")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        retry: bool | None = None,
        timeout_s: float | None = None,
    ) -> Json:
        """One request, retried on 429/502/503/504 and transport errors when `retry` (default: GETs)."""
        what = f"{method} {path.split('?', 1)[0]}"
        retry = method == "GET" if retry is None else retry
        attempts = _core.RETRY_ATTEMPTS if retry else 1
        url = self._prefix + path
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        for attempt in range(1, attempts + 1):
            try:
                resp = self._http.request(method, url, json=json, timeout=timeout)
            except httpx.HTTPError as exc:
                if attempt == attempts:
                    raise TransportError(f"{what}: {exc!r}") from exc
                time.sleep(_core.retry_delay_s(attempt, None))
                continue
            if resp.status_code in _core.RETRY_STATUSES and attempt < attempts:
                time.sleep(_core.retry_delay_s(attempt, resp.headers))
                continue
            return _core.decode(resp.status_code, resp.content, what)
        raise AssertionError("unreachable")


class Job:
    """A queued or finished job; `record` is the last job record the server sent."""

    def __init__(self, endpoint: Endpoint, job_id: str, record: dict[str, Any] | None) -> None:
        self.endpoint = endpoint
        self.id = job_id
        self.record = record or {"id": job_id}

    def status(self) -> str:
        """`GET /status/{id}` (skipped once the job is final); returns the status string."""
        if self.record.get("status") not in _core.FINAL_STATES:
            self.record = _core.record_of(self.endpoint._call("GET", f"/status/{self.id}"), "GET /status")
        return str(self.record["status"])

    def output(self, timeout_s: float = 60.0) -> Any:
        """Wait until the job is final and return its output (or raise its JobError / WaitTimeout)."""
        deadline = time.monotonic() + timeout_s
        delay_s = 0.0
        while self.status() not in _core.FINAL_STATES:
            delay_s = _core.next_poll_s(delay_s)
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise WaitTimeout(f"job {self.id} still {self.record.get('status')} after {timeout_s} s")
            time.sleep(min(delay_s, left_s))
        return _core.final_output(self.record)

    def stream(self, timeout_s: float = 600.0) -> Iterator[Any]:
        """Yield each streamed chunk's output once, until the job is final and drained.

        A job that ends FAILED, CANCELLED or TIMED_OUT raises its JobError after the chunks it sent.
        """
        deadline = time.monotonic() + timeout_s
        delay_s = 0.0
        while True:
            body = _core.record_of(self.endpoint._call("GET", f"/stream/{self.id}"), "GET /stream")
            chunks = _core.stream_outputs(body)
            yield from chunks
            if body.get("status") in _core.FINAL_STATES and not chunks:
                self.record = {"id": self.id, "status": None}
                self.status()
                _core.final_output(self.record)
                return
            if chunks:
                delay_s = 0.0
                continue
            delay_s = _core.next_poll_s(delay_s)
            if time.monotonic() + delay_s > deadline:
                raise WaitTimeout(f"job {self.id} still streaming after {timeout_s} s")
            time.sleep(delay_s)

    def cancel(self) -> dict[str, Any]:
        """`POST /cancel/{id}`; returns the server's answer (`{"id", "status": "CANCELLED"}`)."""
        answer = self.endpoint._call("POST", f"/cancel/{self.id}", retry=True)
        self.record = {"id": self.id}
        return _core.object_of(answer, "POST /cancel")
