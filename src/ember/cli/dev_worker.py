"""The in-process workers of `ember dev`: load the user's handler file as its `__main__` block would run,
catch the config it passes to `start(...)` (Ember's or RunPod's SDK), and run Ember's worker loop on a
thread against the dev server, with the RUNPOD_* environment of the worker's LaunchSpec."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import threading
import traceback
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import ember.serverless as sdk
from ember.backends.base import LaunchSpec
from ember.core.errors import InvalidInput, Problem
from ember.core.specs import DEFAULT_HANDLER
from ember.serverless.env import WorkerEnv
from ember.serverless.transport import HttpTransport
from ember.serverless.worker import Worker, WorkerConfig

DRAIN_S = 30.0  # how long a stopped worker may take to finish its held jobs before it is abandoned

# Loading executes user code with process-wide hooks in place (the SDKs' `start`, sys.path), so one
# load runs at a time.
_LOAD_LOCK = threading.Lock()


class _Captured(BaseException):
    """Raised from the intercepted `start(config)` to end the handler file's execution there."""

    def __init__(self, config: Mapping[str, object]) -> None:
        super().__init__("start() captured")
        self.config = config


def _capture(config: Mapping[str, object]) -> None:
    raise _Captured(config)


class _RunpodServerless(Protocol):
    """What `ember dev` replaces in RunPod's `runpod.serverless` module while a handler file loads."""

    start: Callable[[Mapping[str, object]], None]
    progress_update: Callable[[Mapping[str, object], object], None]


@contextmanager
def _intercepting_start(source: str) -> Iterator[None]:
    """While the handler file runs, `ember.serverless.start` and `runpod.serverless.start` capture
    their config instead of starting a worker process."""
    rp: _RunpodServerless | None = None
    if "runpod" in source and importlib.util.find_spec("runpod") is not None:
        rp = _runpod_serverless()
        # Progress updates of a RunPod handler go through Ember's loop, which runs it here.
        rp.progress_update = sdk.progress_update
    saved = rp.start if rp is not None else None
    sdk._capture = _capture
    if rp is not None:
        rp.start = _capture
    try:
        yield
    finally:
        sdk._capture = None
        if rp is not None and saved is not None:
            rp.start = saved


def _runpod_serverless() -> _RunpodServerless:
    """RunPod's `runpod.serverless` (untyped), as the part of it that `_intercepting_start` replaces."""
    module: _RunpodServerless = importlib.import_module("runpod.serverless")
    return module


@contextmanager
def _importable_from(directory: Path, stale_root: Path | None) -> Iterator[None]:
    """Put `directory` first on sys.path for the load; forget modules loaded from older snapshots under
    `stale_root`, so a reload imports the new version of the user's helper modules too."""
    here = str(directory.resolve())
    if stale_root is not None:
        root = str(stale_root.resolve()) + "/"
        for name, module in list(sys.modules.items()):
            origin = getattr(module, "__file__", None) or ""
            if origin.startswith(root) and not origin.startswith(here + "/"):
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if not p.startswith(root)]
    if here not in sys.path:
        sys.path.insert(0, here)
    yield


def load_config(
    directory: Path,
    handler: str = DEFAULT_HANDLER,
    *,
    label: Path | None = None,
    stale_root: Path | None = None,
) -> WorkerConfig:
    """Run `directory/handler` as `__main__` (its own folder importable, as `python FILE` would make
    it) and return the config it passes to `start(...)`.

    The file runs unchanged; its code after `start(...)` does not run (as in a worker, where `start`
    never returns). A file that never calls `start` but defines a function `handler` gets that one.
    `label` names the file in tracebacks (the user's copy rather than the snapshot). Raises
    InvalidInput when no handler can be found; the file's own exceptions propagate.
    """
    path = directory / handler
    source = path.read_text(encoding="utf-8")
    code = compile(source, str(label or path), "exec")
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    with _LOAD_LOCK, _importable_from(path.parent, stale_root), _intercepting_start(source):
        try:
            exec(code, module.__dict__)
        except _Captured as captured:
            return WorkerConfig.from_dict(captured.config)
    fallback = module.__dict__.get("handler")
    if callable(fallback):
        return WorkerConfig(handler=fallback)
    raise InvalidInput(
        f"{path.name} never called start({{'handler': ...}}) and defines no function named 'handler'",
        [Problem("handler", "calls no start(...)", str(label or path))],
    )


class _ProgressRouter:
    """`ember.serverless.progress_update` reaches the in-process worker that holds the job."""

    def __init__(self, workers: InProcessWorkers) -> None:
        self._workers = workers

    def progress(self, job: Mapping[str, object], value: object) -> None:
        job_id = job.get("id") if isinstance(job, dict) else None
        workers = self._workers.running()
        for worker in workers:
            if job_id in worker.held_job_ids():
                worker.progress(job, value)
                return
        if workers:
            workers[-1].progress(job, value)  # it logs and drops the update for an unknown job


class InProcessWorkers:
    """The MemoryBackend runner of `ember dev`: each worker is a thread running Ember's worker loop
    over the handler loaded from the worker's source snapshot."""

    def __init__(
        self,
        *,
        label: Path | None = None,
        on_error: Callable[[str], None] | None = None,
        user_agent: str = f"ember-dev/{sdk.VERSION}",
    ) -> None:
        self._label = label
        self._on_error = on_error or (lambda text: sys.stderr.write(text))
        self._user_agent = user_agent
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        sdk._active = _ProgressRouter(self)

    def running(self) -> list[Worker]:
        with self._lock:
            return list(self._workers.values())

    async def __call__(self, spec: LaunchSpec) -> int:
        """Run one worker until it stops; cancelling it drains the worker (held jobs still report)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def finish(result: int | BaseException) -> None:
            if done.done():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        def body() -> None:
            outcome = self._serve(spec)
            with contextlib.suppress(RuntimeError):  # the loop closed first: the dev server is gone
                loop.call_soon_threadsafe(finish, outcome)

        thread = threading.Thread(target=body, name=f"ember-dev-{spec.worker_id}", daemon=True)
        thread.start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self.stop(spec.worker_id)
            await asyncio.wait({done}, timeout=DRAIN_S)
            raise

    def stop(self, worker_id: str) -> None:
        """Stop taking jobs (the in-flight take poll is cut); held jobs finish and report."""
        with self._lock:
            worker = self._workers.get(worker_id)
        if worker is not None:
            worker.stop_now("stopped by the dev server")

    def stop_all(self) -> None:
        for worker in self.running():
            worker.stop_now("dev server shutting down")

    def _serve(self, spec: LaunchSpec) -> int | BaseException:
        """The worker thread: load, run the loop, return its exit code (or the error that ended it)."""
        if spec.source_dir is None:
            return InvalidInput(f"worker {spec.worker_id} has no source directory")
        source = Path(spec.source_dir)
        try:
            config = load_config(source, spec.handler, label=self._label, stale_root=source.parent)
        except BaseException as exc:  # the user's file failed: show it, and the lifecycle retries
            self._on_error(
                f"ember dev: loading {self._label or source / spec.handler} failed:\n"
                + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            )
            return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
        env = WorkerEnv.from_environ(spec.env, fallback_worker_id=spec.worker_id)
        transport = HttpTransport(env.api_key, self._user_agent)
        worker = Worker(config, env, transport, version=sdk.VERSION)
        with self._lock:
            self._workers[spec.worker_id] = worker
        try:
            return worker.run()
        except Exception as exc:
            return exc
        finally:
            with self._lock:
                self._workers.pop(spec.worker_id, None)
            transport.close()
