"""The asyncio client: the same API as `sync.py`, with `await` (`AsyncEndpoint`, `AsyncJob`)."""

from __future__ import annotations

import asyncio as _asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from ember.client import _core
from ember.client._json import Json
from ember.client.errors import TransportError, WaitTimeout


class AsyncEndpoint:
    """An asyncio client for one endpoint's `/v2/{endpoint_id}/…` routes."""

    def __init__(
        self,
        endpoint_id: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._prefix, headers = _core.resolve(endpoint_id, api_key, base_url)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout_s, transport=transport)

    async def run(
        self,
        job_input: object,
        *,
        webhook: str | None = None,
        policy: Mapping[str, object] | None = None,
        s3_config: Mapping[str, object] | None = None,
    ) -> AsyncJob:
        """Queue a job (`POST /run`); not retried."""
        body = _core.run_body(job_input, webhook=webhook, policy=policy, s3_config=s3_config)
        answer = await self._call("POST", "/run", json=body, retry=False)
        job_id, record = _core.queued(answer)
        return AsyncJob(self, job_id, record)

    async def run_sync(
        self,
        job_input: object,
        timeout_s: float = 90.0,
        *,
        webhook: str | None = None,
        policy: Mapping[str, object] | None = None,
        s3_config: Mapping[str, object] | None = None,
    ) -> Any:
        """Run a job and wait for its output; errors as in `Endpoint.run_sync`."""
        deadline = time.monotonic() + timeout_s
        body = _core.run_body(job_input, webhook=webhook, policy=policy, s3_config=s3_config)
        path = f"/runsync?wait={_core.runsync_wait_ms(timeout_s)}"
        answer = await self._call("POST", path, json=body, retry=False, timeout_s=timeout_s + 10.0)
        record = _core.record_of(answer, "POST /runsync")
        if record.get("status") in _core.FINAL_STATES:
            return _core.final_output(record)
        return await AsyncJob(self, str(record["id"]), record).output(max(0.0, deadline - time.monotonic()))

    def job(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, job_id, None)

    async def health(self) -> dict[str, Any]:
        return _core.object_of(await self._call("GET", "/health"), "GET /health")

    async def purge_queue(self) -> dict[str, Any]:
        return _core.object_of(await self._call("POST", "/purge-queue", retry=True), "POST /purge-queue")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncEndpoint:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        retry: bool | None = None,
        timeout_s: float | None = None,
    ) -> Json:
        what = f"{method} {path.split('?', 1)[0]}"
        retry = method == "GET" if retry is None else retry
        attempts = _core.RETRY_ATTEMPTS if retry else 1
        url = self._prefix + path
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        for attempt in range(1, attempts + 1):
            try:
                resp = await self._http.request(method, url, json=json, timeout=timeout)
            except httpx.HTTPError as exc:
                if attempt == attempts:
                    raise TransportError(f"{what}: {exc!r}") from exc
                await _asyncio.sleep(_core.retry_delay_s(attempt, None))
                continue
            if resp.status_code in _core.RETRY_STATUSES and attempt < attempts:
                await _asyncio.sleep(_core.retry_delay_s(attempt, resp.headers))
                continue
            return _core.decode(resp.status_code, resp.content, what)
        raise AssertionError("unreachable")


class AsyncJob:
    """A queued or finished job; `record` is the last job record the server sent."""

    def __init__(self, endpoint: AsyncEndpoint, job_id: str, record: dict[str, Any] | None) -> None:
        self.endpoint = endpoint
        self.id = job_id
        self.record = record or {"id": job_id}

    async def status(self) -> str:
        if self.record.get("status") not in _core.FINAL_STATES:
            answer = await self.endpoint._call("GET", f"/status/{self.id}")
            self.record = _core.record_of(answer, "GET /status")
        return str(self.record["status"])

    async def output(self, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        delay_s = 0.0
        while await self.status() not in _core.FINAL_STATES:
            delay_s = _core.next_poll_s(delay_s)
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise WaitTimeout(f"job {self.id} still {self.record.get('status')} after {timeout_s} s")
            await _asyncio.sleep(min(delay_s, left_s))
        return _core.final_output(self.record)

    async def stream(self, timeout_s: float = 600.0) -> AsyncIterator[Any]:
        deadline = time.monotonic() + timeout_s
        delay_s = 0.0
        while True:
            body = _core.record_of(await self.endpoint._call("GET", f"/stream/{self.id}"), "GET /stream")
            chunks = _core.stream_outputs(body)
            for output in chunks:
                yield output
            if body.get("status") in _core.FINAL_STATES and not chunks:
                self.record = {"id": self.id, "status": None}
                await self.status()
                _core.final_output(self.record)
                return
            if chunks:
                delay_s = 0.0
                continue
            delay_s = _core.next_poll_s(delay_s)
            if time.monotonic() + delay_s > deadline:
                raise WaitTimeout(f"job {self.id} still streaming after {timeout_s} s")
            await _asyncio.sleep(delay_s)

    async def cancel(self) -> dict[str, Any]:
        answer = await self.endpoint._call("POST", f"/cancel/{self.id}", retry=True)
        self.record = {"id": self.id}
        return _core.object_of(answer, "POST /cancel")
