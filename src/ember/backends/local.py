"""The local-process backend: one OS process (its own session) per worker, on this machine.

Identity lives on disk under `home/workers/<worker_id>/` (meta.json with pid and /proc start time), so a
new instance adopts running workers after a control-plane restart. Logs live in `home/logs/<id>.log`,
written by the backend (the worker's stdout and stderr are opened before it starts).

With a `SandboxConfig`, workers run inside bubblewrap as their account's own user (see
`ember.backends.sandbox`); EMBER_SANDBOX decides which workers must (`ember.core.sandbox`).

With `templates_max` > 0, a release's workers are forked from a template process that has imported
what its handler imports, once a first plain start has told which modules that is (FlashBoot, see
`ember.backends.templates`); a forked worker's meta names its template, and the template (not this
backend) is its parent, which reports its exit code.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ember.backends.base import Alive, ExecResult, LaunchSpec, Observed
from ember.backends.local_env import inside_env, worker_env, worker_view
from ember.backends.local_state import WorkerMeta, enter_worker_argv, write_meta
from ember.backends.procs import (
    descendants,
    environ_of,
    group_is_ours,
    log_lines,
    pid_alive,
    proc_start_ticks,
    reap,
    run_command,
    shell_exit_code,
    write_atomic,
)
from ember.backends.sandbox import SandboxConfig, UidMap, sandbox_argv
from ember.backends.templates import MODULES_ENV, TemplatePool, recipe_for
from ember.core.errors import BackendError

_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_POLL_S = 0.05
_KILL_WAIT_S = 5.0


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    reaper: threading.Thread
    env: dict[str, str]


class LocalBackend:
    """Workers are local processes; see the module docstring for the on-disk layout."""

    name = "local"

    def __init__(
        self,
        home: Path,
        *,
        python: str = sys.executable,
        sandbox: SandboxConfig | None = None,
        templates_max: int = 0,
        releases: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._home = Path(home).absolute()
        self._python = python
        self._sandbox = sandbox  # None: plain processes (direct use, tests); the server passes one
        self._workers_dir = self._home / "workers"
        self._logs_dir = self._home / "logs"
        self._workers_dir.mkdir(parents=True, exist_ok=True)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, _Child] = {}
        self._lock = threading.RLock()
        self._uids = UidMap(self._home, sandbox.uid_base, sandbox.uid_count) if sandbox is not None else None
        # FlashBoot templates (0: off); `releases` gives each live endpoint's release, to retire the rest.
        self._templates = TemplatePool(
            self._home / "templates",
            max_templates=templates_max,
            on_exit=self._forked_exit,
            releases=releases,
        )
        self._forked_env: dict[str, dict[str, str]] = {}  # environments of the workers forked here

    # -- paths and on-disk state ------------------------------------------------------------------

    def _dir(self, worker_id: str) -> Path:
        if not _SAFE_ID.match(worker_id):
            raise BackendError(f"invalid worker id {worker_id!r}")
        return self._workers_dir / worker_id

    def log_path(self, worker_id: str) -> Path:
        self._dir(worker_id)  # validates the id
        return self._logs_dir / f"{worker_id}.log"

    def _read_meta(self, worker_id: str) -> WorkerMeta | None:
        try:
            meta: WorkerMeta = json.loads((self._dir(worker_id) / "meta.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackendError(f"unreadable state for worker {worker_id!r}: {exc}")
        return meta

    def _own(self, worker_id: str, meta: WorkerMeta) -> _Child | None:
        child = self._children.get(worker_id)
        return child if child is not None and child.proc.pid == meta["pid"] else None

    def _running(self, worker_id: str, meta: WorkerMeta) -> bool:
        child = self._own(worker_id, meta)
        if child is not None and child.proc.returncode is not None:
            return False
        return pid_alive(meta["pid"], meta.get("start_ticks"))

    def _remove_state(self, worker_id: str) -> None:
        """Drop the worker's runtime dir (renamed first, so a late exit-code write cannot recreate it)."""
        with self._lock:
            child = self._children.pop(worker_id, None)
            self._forked_env.pop(worker_id, None)
        self._templates.forget(worker_id)
        if child is not None:
            child.reaper.join(_KILL_WAIT_S)
        path = self._dir(worker_id)
        grave = path.with_name(f".removed-{worker_id}-{uuid.uuid4().hex}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return
        shutil.rmtree(grave, ignore_errors=True)

    # -- launch -----------------------------------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> None:
        """Start the worker's process; a no-op while a process for that worker id runs.

        Runs `spec.command` in `spec.source_dir`, else `[python, "-u", <handler file>]` in the handler's
        directory (`spec.source_dir` joined with the directory part of `spec.handler`). Launching the
        id of an exited (not yet stopped) worker starts it afresh. Raises BackendError when it cannot.
        """
        await asyncio.to_thread(self._launch_sync, spec)

    def _launch_sync(self, spec: LaunchSpec) -> None:
        worker_dir = self._dir(spec.worker_id)
        with self._lock, open(self._home / ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # another instance on the same home may launch too
            meta = self._read_meta(spec.worker_id)
            if meta is not None and self._running(spec.worker_id, meta):
                return
            if meta is not None or worker_dir.exists():
                self._remove_state(spec.worker_id)
            self._start(spec, worker_dir)

    def _start(self, spec: LaunchSpec, worker_dir: Path) -> None:
        python = spec.python or self._python
        handler_dir, _, handler_name = spec.handler.rpartition("/")
        argv = list(spec.command) if spec.command else [python, "-u", handler_name]
        cwd = spec.source_dir or (str(worker_dir) if spec.command else None)
        if cwd is not None and handler_dir and not spec.command:
            cwd = os.path.join(cwd, handler_dir)  # the handler's own directory, as in a RunPod image
        if cwd is None:
            raise BackendError(f"worker {spec.worker_id!r} has neither a source_dir nor a command")
        if not os.path.isdir(cwd):
            raise BackendError(f"source directory {cwd!r} of worker {spec.worker_id!r} does not exist")
        cwd = os.path.abspath(cwd)  # recorded for exec, which may come from another working dir
        env = worker_env(spec, python, dict(os.environ))
        view = worker_view(self._sandbox, self._uids, spec, python, cwd)
        if view is not None:
            env.update(inside_env(spec.mounts))
        bwrap = self._sandbox.bwrap if self._sandbox is not None else None
        recipe = None
        if self._templates.enabled:
            recipe = recipe_for(spec, python=python, cwd=cwd, env=env, view=view, bwrap=bwrap)
        worker_dir.mkdir(parents=True, exist_ok=True)
        if recipe is not None:
            forked = self._templates.fork(recipe, spec.worker_id, env, self.log_path(spec.worker_id))
            if forked is not None:
                write_meta(worker_dir, spec, forked.pid, forked.start_ticks, cwd, argv, view, forked)
                self._forked_env[spec.worker_id] = env
                return
        popen_cwd = cwd
        if view is not None:
            assert bwrap is not None
            popen_cwd = "/"
            argv = sandbox_argv(bwrap, view, argv)
        report_fd = self._templates.learning_fd(recipe, spec.worker_id) if recipe is not None else None
        extra = {MODULES_ENV: str(report_fd)} if report_fd is not None else {}
        try:
            with open(self.log_path(spec.worker_id), "ab") as log:
                proc = subprocess.Popen(
                    argv,
                    cwd=popen_cwd,
                    env={**env, **extra},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() signals the whole tree
                    close_fds=True,
                    pass_fds=() if report_fd is None else (report_fd,),
                )
        except OSError as exc:
            shutil.rmtree(worker_dir, ignore_errors=True)
            raise BackendError(f"cannot start worker {spec.worker_id!r} ({argv[0]}): {exc}")
        finally:
            if report_fd is not None:
                os.close(report_fd)
        found = proc_start_ticks(proc.pid)
        write_meta(worker_dir, spec, proc.pid, found[0] if found else None, cwd, argv, view, None)
        reaper = threading.Thread(
            target=reap, args=(proc, worker_dir), name=f"ember-reap-{spec.worker_id}", daemon=True
        )
        self._children[spec.worker_id] = _Child(proc=proc, reaper=reaper, env=env)
        reaper.start()

    def _forked_exit(self, worker_id: str, pid: int, code: int) -> None:
        """A template says that a worker it forked exited: keep its code as `_reap` does for ours."""
        try:
            meta = self._read_meta(worker_id)
            if meta is not None and meta.get("pid") == pid:
                write_atomic(self._dir(worker_id) / "exit_code", str(code))
        except (BackendError, OSError):
            pass  # stopped meanwhile

    # -- observe ----------------------------------------------------------------------------------

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        """Every worker with runtime state under this home (launched, and not stopped yet).

        Exit codes are known for processes this instance started; an adopted process that died has
        exit code None unless its starter recorded one.
        """
        return await asyncio.to_thread(self._observe_sync, endpoint_id)

    def _observe_sync(self, endpoint_id: str | None) -> list[Observed]:
        self._templates.harvest()
        found: list[Observed] = []
        for worker_dir in sorted(self._workers_dir.iterdir()):
            if worker_dir.name.startswith(".") or not worker_dir.is_dir():
                continue
            meta = self._read_meta(worker_dir.name)
            if meta is None or (endpoint_id is not None and meta["endpoint_id"] != endpoint_id):
                continue  # a launch still writing its meta, or another endpoint's worker
            found.append(self._observed(worker_dir, meta))
        return found

    def _observed(self, worker_dir: Path, meta: WorkerMeta) -> Observed:
        worker_id = meta["worker_id"]
        child = self._own(worker_id, meta)
        running = self._running(worker_id, meta)
        exit_code: int | None = None
        if child is not None:
            detail = f"pid {meta['pid']}"
            if not running and child.proc.returncode is None:
                child.reaper.join(_KILL_WAIT_S)  # dead but not reaped yet: its reaper is about to
            if child.proc.returncode is not None:
                running, exit_code = False, shell_exit_code(child.proc.returncode)
        else:
            template = meta.get("template")
            how = f"forked from template {template['key']}" if template else "adopted"
            detail = f"pid {meta['pid']} ({how})"
            if not running:
                try:
                    exit_code = int((worker_dir / "exit_code").read_text())
                except (OSError, ValueError):
                    exit_code = None
        if not running:
            detail = f"exited with code {exit_code}" if exit_code is not None else "exited (code unknown)"
        return Observed(
            worker_id=worker_id,
            endpoint_id=meta["endpoint_id"],
            release=meta["release"],
            running=running,
            exit_code=exit_code,
            started_at=meta.get("started_at"),
            detail=detail,
        )

    # -- stop -------------------------------------------------------------------------------------

    async def stop(self, worker_id: str, grace_s: float = 10.0) -> None:
        """SIGTERM the worker's process group, wait up to `grace_s`, SIGKILL, reap, drop its state.

        The log file stays. Unknown ids are a no-op. Raises BackendError if the process survives
        SIGKILL (not ours to kill, or stuck in the kernel).
        """
        meta = await asyncio.to_thread(self._read_meta, worker_id)
        if meta is None:
            await asyncio.to_thread(self._remove_state, worker_id)
            return
        pid = meta["pid"]
        was_running = self._running(worker_id, meta)
        # What runs below it (a sandbox's init and the handler) is gone too before stop returns.
        below = descendants(pid) if was_running else []
        if was_running:
            self._signal_group(pid, signal.SIGTERM)
            await self._wait_dead(worker_id, meta, grace_s)
        # SIGKILL what is left of its group (the worker itself after the grace period, or children
        # it left behind) unless its pid now belongs to another process that may lead its own group.
        if group_is_ours(pid, meta.get("start_ticks")):
            self._signal_group(pid, signal.SIGKILL)
        if was_running and not await self._wait_dead(worker_id, meta, _KILL_WAIT_S):
            raise BackendError(f"worker {worker_id!r} (pid {pid}) survived SIGKILL")
        deadline = time.monotonic() + _KILL_WAIT_S
        while any(pid_alive(p, ticks) for p, ticks in below) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        await asyncio.to_thread(self._remove_state, worker_id)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise BackendError(f"cannot signal worker process group {pid}: {exc}")

    async def _wait_dead(self, worker_id: str, meta: WorkerMeta, timeout_s: float) -> bool:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while self._running(worker_id, meta):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    # -- logs -------------------------------------------------------------------------------------

    async def logs(
        self,
        worker_id: str,
        *,
        tail: int | None = None,
        follow: bool = False,
        alive: Alive | None = None,
    ) -> AsyncIterator[str]:
        """Lines of the worker's log file (stdout and stderr, and its venv build's output), oldest first.

        `tail` starts at the last `tail` lines. With `follow`, polls for new lines until the worker no
        longer runs (and `alive`, if given, says it will not start again) and the file is drained; a log
        that appears while following is read from its start. Raises BackendError for a worker with no
        log (unless `alive` keeps a follow waiting for one).
        """
        path = self.log_path(worker_id)
        running = functools.partial(self._still_running, worker_id)
        async for line in log_lines(path, tail=tail, follow=follow, running=running, alive=alive):
            yield line

    def _still_running(self, worker_id: str) -> bool:
        meta = self._read_meta(worker_id)
        return meta is not None and self._running(worker_id, meta)

    # -- exec -------------------------------------------------------------------------------------

    async def exec(self, worker_id: str, command: list[str], *, timeout_s: float = 60.0) -> ExecResult:
        """Run `command` in the worker's directory with the worker's environment.

        Exit code 127 when the program is not found, 126 when it cannot be executed, 124 (with the
        output so far) when it runs past `timeout_s`. Raises BackendError if the worker does not run.
        """
        if not command:
            raise BackendError("exec needs a command")
        return await asyncio.to_thread(self._exec_sync, worker_id, command, timeout_s)

    def _exec_sync(self, worker_id: str, command: list[str], timeout_s: float) -> ExecResult:
        meta = self._read_meta(worker_id)
        if meta is None:
            raise BackendError(f"unknown worker {worker_id!r}")
        if not self._running(worker_id, meta):
            raise BackendError(f"worker {worker_id!r} is not running")
        child = self._own(worker_id, meta)
        env = child.env if child is not None else self._forked_env.get(worker_id) or environ_of(meta["pid"])
        argv, cwd = enter_worker_argv(meta, list(command))
        try:
            return run_command(argv, cwd=cwd, env=env, timeout_s=timeout_s, name=command[0])
        except OSError as exc:
            raise BackendError(f"cannot exec in worker {worker_id!r}: {exc}")

    async def aclose(self) -> None:
        """Workers keep running, and their reaper threads keep reaping them; templates fork no more
        and exit once their last worker has (see `ember.backends.templates`)."""
        self._templates.close()
