"""The in-memory backend: a real Backend whose workers are records (and, given a runner, asyncio tasks).

It ships with the package for the control-loop tests (on a ManualClock) and for `ember dev`; it
starts no process and holds no state outside this object, so nothing survives the process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ember.backends.base import Alive, ExecResult, LaunchSpec, Observed, throttled
from ember.core.errors import BackendError

Runner = Callable[[LaunchSpec], Awaitable[object]]  # its result: an int exit code, or anything (0)
_FOLLOW_POLL_S = 0.1  # how often a follow waiting for a worker to (re)start looks again


class _Clock(Protocol):
    def now(self) -> float: ...


@dataclass
class _Worker:
    spec: LaunchSpec
    started_at: float
    running: bool = True
    exit_code: int | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class _Log:
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Event | None = None

    def notify(self) -> None:
        if self.changed is not None:
            self.changed.set()


class MemoryBackend:
    """Workers live in a dict; `runner` (an `async def runner(spec)`) is run as one task per worker.

    A runner that returns normally ends its worker with exit code 0, or with its return value when
    that is an int; one that raises ends it with exit code 1 and its error in the log. Tests and
    `ember dev` use `crash()` and `append_log()` to play the runtime's part.
    """

    name = "memory"

    def __init__(self, clock: _Clock | None = None, runner: Runner | None = None) -> None:
        self._now: Callable[[], float] = clock.now if clock is not None else time.time
        self._runner = runner
        self._workers: dict[str, _Worker] = {}
        self._logs: dict[str, _Log] = {}

    async def launch(self, spec: LaunchSpec) -> None:
        """Record the worker and start its runner; a no-op while a worker with that id runs.

        Launching the id of an exited (not yet stopped) worker starts it afresh.
        """
        current = self._workers.get(spec.worker_id)
        if current is not None and current.running:
            return
        worker = _Worker(spec=spec, started_at=self._now())
        self._workers[spec.worker_id] = worker
        self._logs.setdefault(spec.worker_id, _Log())
        if self._runner is not None:
            worker.task = asyncio.create_task(self._run(worker), name=f"ember-worker-{spec.worker_id}")

    async def _run(self, worker: _Worker) -> None:
        assert self._runner is not None
        try:
            result = await self._runner(worker.spec)
        except asyncio.CancelledError:
            self._finish(worker, None)
            raise
        except Exception as exc:
            self.append_log(worker.spec.worker_id, f"worker failed: {type(exc).__name__}: {exc}")
            self._finish(worker, 1)
        else:
            code = result if isinstance(result, int) and not isinstance(result, bool) else 0
            self._finish(worker, code)

    def _finish(self, worker: _Worker, exit_code: int | None) -> None:
        # A crash() or stop() already decided how this worker ended; keep its exit code.
        if worker.running:
            worker.running = False
            worker.exit_code = exit_code
        log = self._logs.get(worker.spec.worker_id)
        if log is not None:
            log.notify()

    async def stop(self, worker_id: str, grace_s: float = 10.0) -> None:
        """Cancel the runner, wait up to `grace_s` for it to finish, and forget the worker.

        Its log lines stay readable. Unknown ids are a no-op.
        """
        worker = self._workers.pop(worker_id, None)
        if worker is None:
            return
        task = worker.task
        if task is not None and not task.done():
            task.cancel()
            # A runner that swallows the cancellation is abandoned after the grace period: it is
            # no longer this backend's worker, which is all "kill" can mean for a coroutine.
            await asyncio.wait({task}, timeout=max(grace_s, 0.0))
        self._finish(worker, worker.exit_code)

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        return [
            Observed(
                worker_id=w.spec.worker_id,
                endpoint_id=w.spec.endpoint_id,
                release=w.spec.release,
                running=w.running,
                exit_code=w.exit_code,
                started_at=w.started_at,
                detail="running" if w.running else f"exited with code {w.exit_code}",
            )
            for w in self._workers.values()
            if endpoint_id is None or w.spec.endpoint_id == endpoint_id
        ]

    def launched(self, worker_id: str) -> LaunchSpec:
        """The spec a worker was launched with (its environment, devices, mounts)."""
        return self._require(worker_id).spec

    def crash(self, worker_id: str, exit_code: int = 1) -> None:
        """End a worker as if its process died with `exit_code` (its runner task is cancelled)."""
        worker = self._require(worker_id)
        if worker.task is not None and not worker.task.done():
            worker.task.cancel()
        if worker.running:
            worker.running = False
            worker.exit_code = exit_code
        self._logs[worker_id].notify()

    def append_log(self, worker_id: str, line: str) -> None:
        """Add one line (without its newline) to a worker's log, waking followers."""
        log = self._logs.get(worker_id)
        if log is None:
            raise BackendError(f"unknown worker {worker_id!r}")
        log.lines.append(line.rstrip("\n"))
        log.notify()

    async def logs(
        self,
        worker_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        alive: Alive | None = None,
    ) -> AsyncIterator[str]:
        """The worker's lines, oldest first; with `follow`, new ones until the worker is not running (and
        `alive`, if given, says it will not start again)."""
        may_start = throttled(alive if follow else None)
        log = self._logs.get(worker_id)
        appeared = False
        while log is None:
            if not await may_start():
                raise BackendError(f"no logs for worker {worker_id!r}")
            appeared = True
            await asyncio.sleep(_FOLLOW_POLL_S)
            log = self._logs.get(worker_id)
        start = max(len(log.lines) - tail, 0) if tail is not None and not appeared else 0
        position = start
        while True:
            while position < len(log.lines):
                yield log.lines[position]
                position += 1
            worker = self._workers.get(worker_id)
            if not follow:
                return
            if worker is None or not worker.running:
                if not await may_start():
                    return
                await asyncio.sleep(_FOLLOW_POLL_S)
                continue
            if log.changed is None:
                log.changed = asyncio.Event()
            log.changed.clear()
            if position < len(log.lines):
                continue
            await log.changed.wait()

    async def exec(self, worker_id: str, command: list[str], *, timeout_s: float = 60.0) -> ExecResult:
        """Answer a few commands from a table (`echo`, `env`, `pwd`, `true`, `false`); others exit 127."""
        worker = self._require(worker_id)
        if not worker.running:
            raise BackendError(f"worker {worker_id!r} is not running")
        if not command:
            raise BackendError("exec needs a command")
        program, args = command[0], command[1:]
        spec = worker.spec
        if program == "echo":
            return ExecResult(0, (" ".join(args) + "\n").encode())
        if program == "env":
            return ExecResult(0, "".join(f"{k}={v}\n" for k, v in sorted(spec.env.items())).encode())
        if program == "pwd":
            return ExecResult(0, f"{spec.source_dir or os.getcwd()}\n".encode())
        if program in ("true", "false"):
            return ExecResult(0 if program == "true" else 1, b"")
        return ExecResult(127, f"memory backend: command not found: {program}\n".encode())

    async def aclose(self) -> None:
        """End the runner tasks: in-memory workers cannot outlive the process that holds them."""
        tasks = [w.task for w in self._workers.values() if w.task is not None and not w.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    def _require(self, worker_id: str) -> _Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            raise BackendError(f"unknown worker {worker_id!r}")
        return worker
