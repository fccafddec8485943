"""The Backend interface over a host whose agent connects in (`ember agent`): each call is an order
the agent takes (through any replica) and answers; the control plane never reaches into the host.
What the host runs is what its agent last reported (`Fleet` reads the reports)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable

from ember.backends.base import Alive, ExecResult, LaunchSpec, Observed, throttled
from ember.backends.wire import spec_to_json, whole
from ember.control.clock import Clock
from ember.control.signals import Signals
from ember.core.errors import BackendError
from ember.core.hosts import HostState
from ember.store.facade import Store

# How long an order may wait for its answer: a launch may pull an image or build a virtualenv there.
LAUNCH_ANSWER_S = 900.0
# Between two looks at the store for an answer, when no wake-up came (a wake-up ends the wait at once).
ANSWER_POLL_S = 0.25
# How often a followed log asks the agent for new lines.
FOLLOW_EVERY_S = 0.5


class RemoteBackend:
    name = "remote"

    def __init__(
        self,
        store: Store,
        signals: Signals,
        clock: Clock,
        host_id: str,
        state: Callable[[], str],
    ) -> None:
        self.store = store
        self.signals = signals
        self.clock = clock
        self.host_id = host_id
        self._state = state  # the host's state as the fleet last read it

    async def ask(self, kind: str, body: dict[str, object], timeout_s: float) -> dict[str, object]:
        """Queue an order for the host's agent and wait for its answer (a BackendError when it says it
        failed, when the host is lost, or after `timeout_s`)."""
        s = self.store
        if self._state() == HostState.LOST:
            raise BackendError(f"host {self.host_id} is lost (its agent stopped answering)")
        with self.signals.in_txn():  # "h": the agent's poll, wherever it is held
            order_id = await s.run(s.hosts.order, self.host_id, kind, body, self.clock.now())
        self.signals.host_ordered(self.host_id)
        deadline = time.monotonic() + timeout_s
        while True:
            result = await s.run(s.hosts.result, order_id)
            if result is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0 or self._state() == HostState.LOST:
                await s.run(s.hosts.drop_order, order_id)
                why = "is lost" if left > 0 else f"did not answer within {timeout_s:.0f} s"
                raise BackendError(f"host {self.host_id} {why} ({kind} order)")
            await self.signals.orders.wait(f"order:{order_id}", min(ANSWER_POLL_S, left))
        error = result.get("error")
        if error:
            raise BackendError(f"host {self.host_id}: {error}")
        return result

    async def launch(self, spec: LaunchSpec) -> None:
        if spec.mounts:
            raise BackendError(
                "network volumes and models are not served to other hosts yet: this endpoint's "
                "workers run on the control plane's own machine"
            )
        await self.ask("launch", {"spec": spec_to_json(spec)}, LAUNCH_ANSWER_S)

    async def stop(self, worker_id: str, grace_s: float = 10.0) -> None:
        if self._state() == HostState.LOST:
            return  # nothing to ask; when it is back, what it still runs is stopped as unwanted
        await self.ask("stop", {"worker_id": worker_id, "grace_s": grace_s}, grace_s + 30.0)

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        raise BackendError("a host's workers are read from its agent's reports (Fleet.observe)")

    async def logs(
        self,
        worker_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        alive: Alive | None = None,
    ) -> AsyncIterator[str]:
        answer = await self.ask("logs", {"worker_id": worker_id, "tail": tail}, 30.0)
        lines = _lines(answer)
        seen = _total(answer, len(lines))
        for line in lines:
            yield line
        still = throttled(alive)
        while follow:
            await asyncio.sleep(FOLLOW_EVERY_S)
            answer = await self.ask("logs", {"worker_id": worker_id, "after": seen}, 30.0)
            for line in _lines(answer):
                yield line
            seen = _total(answer, seen)
            if not answer.get("running") and not await still():
                return

    async def exec(self, worker_id: str, command: list[str], *, timeout_s: float = 60.0) -> ExecResult:
        answer = await self.ask(
            "exec", {"worker_id": worker_id, "command": command, "timeout_s": timeout_s}, timeout_s + 30.0
        )
        output = answer.get("output")
        code = whole(answer.get("exit_code"))
        return ExecResult(
            1 if code is None else code, base64.b64decode(output) if isinstance(output, str) else b""
        )

    async def aclose(self) -> None:
        return None


def _lines(answer: dict[str, object]) -> list[str]:
    lines = answer.get("lines")
    return [str(line) for line in lines] if isinstance(lines, list) else []


def _total(answer: dict[str, object], default: int) -> int:
    """How many lines the worker's log has, as the agent counted them."""
    total = whole(answer.get("total"))
    return default if total is None else total
