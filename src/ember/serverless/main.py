"""Entry of `start`: choose local test mode or production mode from argv and the environment.

Production mode installs SIGTERM/SIGINT handlers (drain, then exit 0) and runs the worker loop in the
calling thread. Reads `os.environ` and `sys.argv` here and nowhere else in the SDK.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from types import FrameType

import ember.serverless as sdk
from ember.serverless import log
from ember.serverless.env import WorkerEnv
from ember.serverless.execute import Identity
from ember.serverless.local import LocalSession, load_job, parse_args
from ember.serverless.transport import HttpTransport
from ember.serverless.worker import Worker, WorkerConfig


def main(config_dict: Mapping[str, object]) -> int:
    """Run the worker; returns the process exit code."""
    config = WorkerConfig.from_dict(config_dict)
    log.configure(os.environ)
    args = parse_args(sys.argv[1:])
    if args.serve_api:
        sys.stderr.write("error: --rp_serve_api is not supported by ember.serverless; use `ember dev`\n")
        return 2
    env = WorkerEnv.from_environ(os.environ, fallback_worker_id="unknown")
    if args.test_input is not None or not env.take_template:
        return _run_local(config, env, args.test_input)
    if env.worker_id == "unknown":
        env = WorkerEnv.from_environ(os.environ, fallback_worker_id="wk-" + os.urandom(8).hex())
    user_agent = f"ember-serverless/{sdk.VERSION} Python/{sys.version.split()[0]}"
    transport = HttpTransport(env.api_key, user_agent)
    modules_fd = _modules_fd()
    report = (lambda: report_modules(modules_fd)) if modules_fd is not None else None
    worker = Worker(config, env, transport, version=sdk.VERSION, on_first_job=report)
    sdk._active = worker
    if threading.current_thread() is threading.main_thread():
        _forward_signals(worker)
    try:
        return worker.run()
    finally:
        sdk._active = None
        transport.close()


def _modules_fd() -> int | None:
    """The file Ember's local backend asked this worker to list its modules in (FlashBoot learns from
    a release's first worker what to pre-import for the next ones); None when not asked."""
    raw = os.environ.pop("EMBER_MODULES_FD", "")
    try:
        fd = int(raw)
        os.set_inheritable(fd, False)  # the handler's own subprocesses get no part of it
    except (ValueError, OSError):
        return None
    return fd


def report_modules(fd: int) -> None:
    """Write the names of the modules imported so far (one a line, then `#end`) to `fd`, and close it."""
    try:
        data = ("\n".join(name for name in list(sys.modules) if name) + "\n#end\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # not learned: this release's workers keep starting plainly
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def _forward_signals(worker: Worker) -> None:
    """SIGTERM/SIGINT make the worker drain. The handler only writes the signal number to a pipe, and
    a thread reads it and shuts the worker down: Python runs signal handlers on the main thread, which
    may be running a job inside one of the SDK's locks, so the handler itself must take none."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        try:
            os.write(write_fd, bytes([signum]))
        except OSError:
            pass  # the pipe is full of earlier signals: the worker is already stopping

    def forward() -> None:
        while True:
            data = os.read(read_fd, 1)
            if not data:
                return
            worker.request_shutdown(signal.Signals(data[0]).name, from_signal=True)

    threading.Thread(target=forward, name="ember-signals", daemon=True).start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _run_local(config: WorkerConfig, env: WorkerEnv, test_input: str | None) -> int:
    job, why = load_job(test_input, os.getcwd())
    if job is None:
        sys.stderr.write(f"error: {why}\n")
        return 1
    session = LocalSession(config, Identity(env.hostname, env.worker_id, sdk.VERSION), sys.stdout, sys.stderr)
    sdk._active = session
    try:
        return session.run(job)
    finally:
        sdk._active = None
