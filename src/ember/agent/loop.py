"""The agent's loops: a report (its GPUs, runtimes and workers) every few seconds and after each
order, and a long poll for orders, each carried out in a task of its own and answered. Every call goes
to the one address it was given (`--server`); a control plane that does not answer is retried,
backing off, and the workers keep running meanwhile (a restarted agent adopts them: its backends keep
their identity on disk)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import httpx

from ember.backends.base import Backend, LaunchSpec, Observed
from ember.backends.wire import observed_to_json, spec_from_json, whole
from ember.build.archive import ArchiveLimits, unpack
from ember.control.launcher import PreparePython
from ember.core import hosts as H
from ember.core.errors import BackendError, EmberError

log = logging.getLogger("ember.agent")
RETRY_S = (0.5, 1.0, 2.0, 5.0)
LOG_LINES_MAX = 10_000  # one answer's lines at most (a followed log asks again for the rest)


class Refused(Exception):
    """The control plane refused this agent's token (removed, or never added): nothing to retry."""


class Agent:
    def __init__(
        self,
        server: str,
        token: str,
        home: Path,
        backends: Mapping[str, Backend],
        slots: Mapping[str, list[str]],
        prepare_python: PreparePython | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.home = home
        self.backends = backends
        self.slots = {t: list(d) for t, d in slots.items()}
        self.prepare_python = prepare_python
        self._client = httpx.AsyncClient(
            base_url=self.server,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=transport,
        )
        self._report_now = asyncio.Event()
        self._fresh = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._working: set[int] = set()  # the orders taken and not yet answered
        self._sources = asyncio.Lock()
        self.host_id: str | None = None

    # The loops ----------------------------------------------------------------------------------

    async def run(self, on_joined: Callable[[str], None] | None = None) -> None:
        """Report, then serve orders until cancelled or refused (`Refused`)."""
        await self._retrying(self.report)
        if on_joined is not None and self.host_id is not None:
            on_joined(self.host_id)
        reports = asyncio.create_task(self._report_loop())
        try:
            await self._order_loop()
        finally:
            reports.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reports
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _retrying(self, call: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            try:
                await call()
                return
            except (httpx.HTTPError, OSError) as exc:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("agent_unreachable server=%s error=%r retry_in_s=%s", self.server, exc, delay)
                await asyncio.sleep(delay)

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), H.REPORT_EVERY_S)
            self._report_now.clear()
            await self._retrying(self.report)

    async def _order_loop(self) -> None:
        while True:
            answer: dict[str, object] = {}

            async def poll() -> None:
                nonlocal answer
                resp = await self._client.post("/agent/v1/orders", params={"wait": 20}, timeout=40.0)
                self._check(resp)
                answer = resp.json()

            await self._retrying(poll)
            orders = answer.get("orders")
            for order in orders if isinstance(orders, list) else []:
                if isinstance(order, dict):
                    task = asyncio.create_task(self._carry_out(order))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    def _check(self, resp: httpx.Response) -> None:
        if resp.status_code in (401, 404):
            raise Refused(f"the control plane refused this host: {resp.text[:300]}")
        resp.raise_for_status()

    # Reports -------------------------------------------------------------------------------------

    async def observed(self) -> dict[str, tuple[Observed, str]]:
        """Every worker the backends know of, with the name of the backend that runs it."""
        found: dict[str, tuple[Observed, str]] = {}
        for name, backend in self.backends.items():
            try:
                for o in await backend.observe():
                    found[o.worker_id] = (o, name)
            except EmberError as exc:
                log.warning("observe_failed backend=%s error=%s", name, exc)
        return found

    async def report(self) -> None:
        workers = [observed_to_json(o) for o, _ in (await self.observed()).values()]
        body = {
            "gpus": self.slots,
            "backends": sorted(b for b in self.backends if b in ("local", "docker")),
            "workers": workers,
            "hostname": socket.gethostname(),
            "fresh": self._fresh,
            "orders": sorted(self._working),
        }
        resp = await self._client.post("/agent/v1/report", json=body)
        self._check(resp)
        answer = resp.json()
        self._fresh = False
        self.host_id = str(answer.get("id") or "")

    # Orders --------------------------------------------------------------------------------------

    async def _carry_out(self, order: dict[str, object]) -> None:
        kind, body, order_id = order.get("kind"), order.get("body"), order.get("id")
        if isinstance(order_id, int):
            self._working.add(order_id)
        try:
            await self._carry_out_and_answer(kind, body, order_id)
        finally:
            if isinstance(order_id, int):
                self._working.discard(order_id)

    async def _carry_out_and_answer(self, kind: object, body: object, order_id: object) -> None:
        try:
            if not isinstance(body, dict):
                raise ValueError("the order has no body")
            result = await self.handle(str(kind), body)
        except (EmberError, ValueError, TypeError, KeyError, OSError, httpx.HTTPError) as exc:
            message = exc.message if isinstance(exc, EmberError) else f"{type(exc).__name__}: {exc}"
            log.warning("order_failed kind=%s error=%s", kind, message)
            result = {"error": message}
        await self._retrying(lambda: self._answer(order_id, result))
        if kind in ("launch", "stop"):
            self._report_now.set()

    async def _answer(self, order_id: object, result: dict[str, object]) -> None:
        resp = await self._client.post(f"/agent/v1/orders/{order_id}", json=result)
        if resp.status_code == 404:
            return  # nobody waits for it any more
        self._check(resp)

    async def handle(self, kind: str, body: dict[str, object]) -> dict[str, object]:
        if kind == "launch":
            raw = body.get("spec")
            if not isinstance(raw, dict):
                raise ValueError("a launch order carries a spec")
            spec = await self._ready(spec_from_json(raw))
            await self._backend_for_spec(spec).launch(spec)
            return {}
        wid = str(body.get("worker_id") or "")
        if kind == "stop":
            grace = body.get("grace_s")
            for each in self.backends.values():
                await each.stop(wid, float(grace) if isinstance(grace, int | float) else 10.0)
            return {}
        running = await self.observed()
        where = running.get(wid)
        backend = self.backends[where[1]] if where is not None else self.backends.get("local")
        if backend is None:
            raise EmberError(f"worker {wid} does not run on this host")
        if kind == "exec":
            command = body.get("command")
            timeout = body.get("timeout_s")
            if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
                raise ValueError("an exec order carries a command (a list of strings)")
            done = await backend.exec(
                wid, command, timeout_s=float(timeout) if isinstance(timeout, int | float) else 60.0
            )
            return {"exit_code": done.exit_code, "output": base64.b64encode(done.output).decode()}
        if kind == "logs":
            return await self._logs(backend, wid, body, where is not None and where[0].running)
        raise ValueError(f"unknown order {kind!r}")

    async def _logs(
        self, backend: Backend, wid: str, body: dict[str, object], running: bool
    ) -> dict[str, object]:
        after = body.get("after")
        tail = body.get("tail")
        lines = [
            line async for line in backend.logs(wid, tail=None if isinstance(after, int) else whole(tail))
        ]
        total = len(lines)
        if isinstance(after, int):
            lines = lines[after:]
        return {"lines": lines[-LOG_LINES_MAX:], "total": total, "running": running}

    def _backend_for_spec(self, spec: LaunchSpec) -> Backend:
        name = "docker" if spec.image else "local"
        backend = self.backends.get(name)
        if backend is None:
            raise EmberError(f"this host has no {name} backend")
        return backend

    async def _ready(self, spec: LaunchSpec) -> LaunchSpec:
        """A source worker's spec with its snapshot here (fetched once per digest) and its python."""
        if spec.image or not spec.source_dir:
            return spec
        digest = spec.source_dir
        if not digest.isalnum():
            raise ValueError(f"bad source digest {digest!r}")
        source = self.home / "sources" / digest
        async with self._sources:
            if not source.is_dir():
                resp = await self._client.get(f"/agent/v1/sources/{digest}", timeout=300.0)
                if resp.status_code == 404:  # the order fails, not the agent
                    raise BackendError(f"the control plane has no source snapshot {digest}")
                self._check(resp)
                part = source.with_name(digest + ".part")
                await asyncio.to_thread(_unpack_fresh, resp.content, part)
                part.rename(source)
        python = None
        if self.prepare_python is not None:
            python = await self.prepare_python(source)
        return replace(spec, source_dir=str(source), python=python or spec.python)


def _unpack_fresh(data: bytes, dest: Path) -> None:
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    unpack(data, dest, ArchiveLimits())
