"""Run one job through the user's handler: sync, async, generator or async generator.

`execute` turns whatever the handler does into the job-done body (via `wire`), streaming generator
chunks through a callback. Coroutines run on one shared asyncio loop thread (`AsyncBridge`), started
only when a handler first needs it, so sync workers never import asyncio.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import traceback
import types
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeGuard, TypeVar

from ember.serverless import wire
from ember.serverless.wire import Job, JobResult

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

_SDK_DIR = os.path.dirname(os.path.abspath(__file__))
_FUTURES_DIR = os.path.dirname(os.path.abspath(concurrent.futures.__file__))
_CO_COROUTINE = 0x0080
_CO_ASYNC_GENERATOR = 0x0200

T = TypeVar("T")

# The user's handler, as the SDK calls it: the job in; a value, a coroutine, or a (sync or async)
# generator of chunks out.
Handler: TypeAlias = Callable[[Job], object]


class JobCancelled(Exception):
    """The job was stopped through job-stop; no result is posted for it."""


class _Cancellable(Protocol):
    """A running coroutine step, as a stop sees it (a `concurrent.futures.Future`)."""

    def cancel(self) -> bool: ...


@dataclass
class JobRun:
    """One held job: cancellation state shared between its thread and the job-stop poller."""

    job: Job
    cancel_requested: bool = False
    finished: bool = False
    post_lock: threading.Lock = field(default_factory=threading.Lock)
    _future: _Cancellable | None = None
    # True from just before a coroutine step is scheduled until it ends: the step may start running
    # before its future is attached, and a stop in that gap must still count as interrupting it.
    _in_async: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def job_id(self) -> str:
        return str(self.job["id"])

    def cancel(self) -> bool:
        """Request a stop; cancels the running coroutine step if there is one. True if it was async."""
        with self._lock:
            self.cancel_requested = True
            future = self._future
            in_async = self._in_async
        if future is not None:
            future.cancel()
        return in_async or future is not None

    def attach(self, future: _Cancellable | None) -> None:
        """Record the running coroutine step (None when it ended); a stop already requested cancels it."""
        with self._lock:
            self._future = future
            self._in_async = future is not None
            if future is not None and self.cancel_requested:
                future.cancel()

    def entering_async(self) -> None:
        with self._lock:
            self._in_async = True


@dataclass(frozen=True)
class Identity:
    """What goes into a handler-exception payload."""

    hostname: str
    worker_id: str
    version: str


def looks_async(handler: object) -> bool:
    """Cheap check (no `inspect` import) for `async def` handlers, so the loop can start early."""
    code = getattr(getattr(handler, "__func__", handler), "__code__", None)
    return code is not None and bool(code.co_flags & (_CO_COROUTINE | _CO_ASYNC_GENERATOR))


def format_user_traceback(exc: BaseException) -> str:
    """The traceback of `exc` starting at the user's code: the SDK's own frames up front are dropped."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not filename.startswith((_SDK_DIR + os.sep, _FUTURES_DIR + os.sep)):
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


class AsyncBridge:
    """One asyncio event loop on a daemon thread; job threads submit coroutines and wait."""

    def __init__(self) -> None:
        self._loop: AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> AbstractEventLoop:
        """Start the loop thread unless it runs already; returns its loop."""
        with self._lock:
            if self._loop is not None:
                return self._loop
            import asyncio

            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=serve, name="ember-asyncio", daemon=True).start()
            ready.wait(10.0)
            self._loop = loop
            return loop

    def close(self) -> None:
        """Stop the loop thread, if it was started (a worker that ran in-process is done with it)."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def run(self, awaitable: Awaitable[T], run: JobRun) -> T:
        """Run `awaitable` on the loop and wait for it; raises JobCancelled if `run` was stopped."""
        import asyncio

        loop = self.ensure_started()

        async def wrapper() -> T:
            return await awaitable

        run.entering_async()
        future = asyncio.run_coroutine_threadsafe(wrapper(), loop)
        run.attach(future)
        try:
            return future.result()
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            raise JobCancelled() from None
        finally:
            run.attach(None)


def execute(
    handler: Handler,
    run: JobRun,
    *,
    bridge: AsyncBridge,
    identity: Identity,
    emit_chunk: Callable[[object], None],
    aggregate: bool,
) -> tuple[JobResult, bool]:
    """Run the handler on `run.job`; returns (job-done body, is_stream).

    Generator chunks go to `emit_chunk` in order, before this returns. Raises JobCancelled when the
    job was stopped (async handlers are interrupted; sync generators stop at the next chunk).
    """
    try:
        value = handler(run.job)
        if _is_async_chunks(value):
            return _drain_async(value, run, bridge, emit_chunk, aggregate), True
        if isinstance(value, types.GeneratorType):
            return _drain_sync(value, run, emit_chunk, aggregate), True
        if _is_awaitable(value):
            value = bridge.run(value, run)
        if run.cancel_requested:
            raise JobCancelled()
        return wire.wrap_return(value), False
    except JobCancelled:
        raise
    except (Exception, SystemExit) as exc:
        return wire.exception_error(
            exc,
            format_user_traceback(exc),
            hostname=identity.hostname,
            worker_id=identity.worker_id,
            version=identity.version,
        ), False


def _is_async_chunks(value: object) -> TypeGuard[AsyncGenerator[object, None]]:
    """Duck-typed: anything with `__anext__` is drained as an async generator (closed on an error chunk)."""
    return hasattr(value, "__anext__")


def _is_awaitable(value: object) -> TypeGuard[Awaitable[object]]:
    return hasattr(value, "__await__")


def _drain(
    chunks: Iterator[object],
    close: Callable[[], object],
    run: JobRun,
    emit_chunk: Callable[[object], None],
    aggregate: bool,
) -> JobResult:
    """Send a generator handler's chunks as they come; `close` ends the generator early (a cancel, an
    error chunk). The result: the chunks (when `aggregate`), an error chunk's error, or the handler's."""
    collected: list[object] = []
    try:
        for chunk in chunks:
            if run.cancel_requested:
                close()
                raise JobCancelled()
            error = wire.stream_chunk_error(chunk)
            if error is not None:
                close()
                return {"error": error}
            emit_chunk(chunk)
            if aggregate:
                collected.append(chunk)
    except JobCancelled:
        raise
    except (Exception, SystemExit) as exc:
        return wire.generator_exception_error(exc, format_user_traceback(exc))
    if run.cancel_requested:
        raise JobCancelled()
    return {"output": collected}


def _drain_sync(
    gen: Generator[object, None, object], run: JobRun, emit_chunk: Callable[[object], None], aggregate: bool
) -> JobResult:
    return _drain(gen, gen.close, run, emit_chunk, aggregate)


def _drain_async(
    agen: AsyncGenerator[object, None],
    run: JobRun,
    bridge: AsyncBridge,
    emit_chunk: Callable[[object], None],
    aggregate: bool,
) -> JobResult:
    def chunks() -> Iterator[object]:
        while True:
            try:
                yield bridge.run(agen.__anext__(), run)
            except StopAsyncIteration:
                return

    # The close runs outside the job's cancel scope: a cancelled job's generator still gets to clean up.
    return _drain(chunks(), lambda: bridge.run(agen.aclose(), JobRun(run.job)), run, emit_chunk, aggregate)
