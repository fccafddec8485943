"""The local-process backend: one OS process (its own session) per worker, on this machine.

Identity lives on disk under `home/workers/<worker_id>/` (meta.json with pid and /proc start time), so a
new instance adopts running workers after a control-plane restart. Logs live in `home/logs/<id>.log`,
written by the backend (the worker's stdout and stderr are opened before it starts).

With a `SandboxConfig`, workers run inside bubblewrap as their account's own user (see
`ember.backends.sandbox`); EMBER_SANDBOX decides which workers must (`ember.core.sandbox`).
"""

from __future__ import annotations

import asyncio
import fcntl
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.backends.base import Alive, ExecResult, LaunchSpec, Mount, Observed, throttled
from ember.backends.sandbox import (
    VOLUME_PATH,
    SandboxConfig,
    UidMap,
    View,
    enter_argv,
    gpu_devices,
    init_pid,
    own_tree,
    python_trees,
    sandbox_argv,
    shown,
)
from ember.core.errors import BackendError
from ember.core.sandbox import choose

# The only variables a worker inherits from the control plane; everything else comes from the spec.
INHERITED_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ",
    "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
    "https_proxy", "no_proxy",
)  # fmt: skip
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_POLL_S = 0.05
_FOLLOW_POLL_S = 0.2
_KILL_WAIT_S = 5.0
_READ_CHUNK_BYTES = 64 * 1024


def mount_env(mounts: tuple[Mount, ...]) -> dict[str, str]:
    """How a process sees its mounts: `EMBER_MOUNT_<TARGET>=source` (target `/runpod-volume` becomes
    `EMBER_MOUNT_RUNPOD_VOLUME`), plus `RUNPOD_VOLUME_PATH` for the network volume. Processes share
    the host's filesystem, so `read_only` is not enforced here. A mount at its own path (the model
    cache) needs no variable."""
    env: dict[str, str] = {}
    for mount in mounts:
        if mount.source == mount.target:
            continue
        name = re.sub(r"[^A-Za-z0-9]+", "_", mount.target).strip("_").upper() or "ROOT"
        env[f"EMBER_MOUNT_{name}"] = mount.source
        if mount.target.rstrip("/") == "/runpod-volume":
            env["RUNPOD_VOLUME_PATH"] = mount.source
    return env


def worker_env(spec: LaunchSpec, python: str, inherited: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: a few inherited variables, its mounts, `spec.env`, its GPUs."""
    env = {k: v for k, v in inherited.items() if k in INHERITED_ENV}
    # `python`, `pip` in the worker (and in `exec`) resolve to the worker's own interpreter first.
    python_dir = os.path.dirname(python)
    if python_dir:
        env["PATH"] = os.pathsep.join(p for p in (python_dir, env.get("PATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(mount_env(spec.mounts))
    env.update(spec.env)
    if spec.gpu_devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_devices)
    return env


def _proc_start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a live pid, from /proc; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19]), fields[0]
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int, start_ticks: int | None) -> bool:
    """True when `pid` runs and is the same process that was started (guards against pid reuse)."""
    if not os.path.isdir("/proc"):  # not Linux: no start time to compare, trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    found = _proc_start_ticks(pid)
    if found is None or start_ticks is None:
        return False
    ticks, state = found
    return ticks == start_ticks and state not in ("Z", "X")


def _group_is_ours(pid: int, start_ticks: int | None) -> bool:
    """True unless a process other than the one started now holds `pid` (and so may lead group `pid`).

    While no process holds a pid, Linux gives no new group that id, so a group `pid` is the worker's.
    """
    found = _proc_start_ticks(pid)
    return found is None or (start_ticks is not None and found[0] == start_ticks)


def _exit_code(returncode: int) -> int:
    """Shell convention: a process killed by signal N exits with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reap(proc: subprocess.Popen[bytes], worker_dir: Path) -> None:
    """Wait for a child (so it never stays a zombie) and record its exit code beside its meta."""
    code = _exit_code(proc.wait())
    try:
        # Only into its own incarnation's dir: the id may have been stopped and launched again.
        if json.loads((worker_dir / "meta.json").read_text())["pid"] == proc.pid:
            _write_atomic(worker_dir / "exit_code", str(code))
    except (OSError, ValueError, KeyError):
        pass  # stopped meanwhile: its runtime state is gone, and so is the need for the code


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    reaper: threading.Thread
    env: dict[str, str]


class LocalBackend:
    """Workers are local processes; see the module docstring for the on-disk layout."""

    name = "local"

    def __init__(
        self, home: Path, *, python: str = sys.executable, sandbox: SandboxConfig | None = None
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

    # -- paths and on-disk state ------------------------------------------------------------------

    def _dir(self, worker_id: str) -> Path:
        if not _SAFE_ID.match(worker_id):
            raise BackendError(f"invalid worker id {worker_id!r}")
        return self._workers_dir / worker_id

    def log_path(self, worker_id: str) -> Path:
        self._dir(worker_id)  # validates the id
        return self._logs_dir / f"{worker_id}.log"

    def _read_meta(self, worker_id: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads((self._dir(worker_id) / "meta.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BackendError(f"unreadable state for worker {worker_id!r}: {exc}")
        return meta

    def _own(self, worker_id: str, meta: dict[str, Any]) -> _Child | None:
        child = self._children.get(worker_id)
        return child if child is not None and child.proc.pid == meta["pid"] else None

    def _running(self, worker_id: str, meta: dict[str, Any]) -> bool:
        child = self._own(worker_id, meta)
        if child is not None and child.proc.returncode is not None:
            return False
        return _pid_alive(meta["pid"], meta.get("start_ticks"))

    def _remove_state(self, worker_id: str) -> None:
        """Drop the worker's runtime dir (renamed first, so a late exit-code write cannot recreate it)."""
        with self._lock:
            child = self._children.pop(worker_id, None)
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
        view = self._view(spec, python, cwd)
        popen_cwd = cwd
        if view is not None:
            assert self._sandbox is not None and self._sandbox.bwrap is not None
            cwd, popen_cwd = view.cwd, "/"
            env.update(_inside_env(spec.mounts))
            argv = sandbox_argv(self._sandbox.bwrap, view, argv)
        worker_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_path(spec.worker_id), "ab") as log:
                proc = subprocess.Popen(
                    argv,
                    cwd=popen_cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() signals the whole tree
                    close_fds=True,
                )
        except OSError as exc:
            shutil.rmtree(worker_dir, ignore_errors=True)
            raise BackendError(f"cannot start worker {spec.worker_id!r} ({argv[0]}): {exc}")
        found = _proc_start_ticks(proc.pid)
        meta = {
            "worker_id": spec.worker_id,
            "endpoint_id": spec.endpoint_id,
            "account_id": spec.account_id,
            "release": spec.release,
            "pid": proc.pid,
            "start_ticks": found[0] if found else None,
            "started_at": time.time(),
            "cwd": cwd,
            "argv": argv,
            "sandbox": None if view is None else {"uid": view.uid, "gid": view.gid},
        }
        _write_atomic(worker_dir / "meta.json", json.dumps(meta))
        reaper = threading.Thread(
            target=_reap, args=(proc, worker_dir), name=f"ember-reap-{spec.worker_id}", daemon=True
        )
        self._children[spec.worker_id] = _Child(proc=proc, reaper=reaper, env=env)
        reaper.start()

    def _view(self, spec: LaunchSpec, python: str, cwd: str) -> View | None:
        """The sandbox a worker runs in, or None when it runs as a plain process; BackendError when it
        must be sandboxed and cannot be (the error says what to install)."""
        cfg = self._sandbox
        if cfg is None:
            return None
        choice = choose(cfg.mode, available=cfg.bwrap is not None, admin=spec.admin)
        if choice.refusal is not None:
            raise BackendError(choice.refusal)
        if not choice.sandboxed:
            return None
        source = os.path.abspath(spec.source_dir) if spec.source_dir else None
        own = [p for p in (source, str(Path(python).parent.parent)) if p]
        same_path = [m.source for m in spec.mounts if m.source == m.target and m.read_only]
        read_only = shown([*python_trees(python), *own, *same_path], cfg.hidden, allowed=(*own, *same_path))
        mounts = tuple((m.source, m.target, not m.read_only) for m in spec.mounts if m.source != m.target)
        uid = gid = None
        if os.geteuid() == 0:  # root: the account's own uid; otherwise the server's (see sandbox.py)
            assert self._uids is not None
            uid = gid = self._uids.uid(spec.account_id)
            for host, _, writable in mounts:
                if writable:
                    own_tree(host, uid, gid)
        devices = gpu_devices(spec.gpu_devices) if spec.real_gpus else ()
        return View(tuple(read_only), mounts, devices, cwd=cwd if source else "/tmp", uid=uid, gid=gid)

    # -- observe ----------------------------------------------------------------------------------

    async def observe(self, endpoint_id: str | None = None) -> list[Observed]:
        """Every worker with runtime state under this home (launched, and not stopped yet).

        Exit codes are known for processes this instance started; an adopted process that died has
        exit code None unless its starter recorded one.
        """
        return await asyncio.to_thread(self._observe_sync, endpoint_id)

    def _observe_sync(self, endpoint_id: str | None) -> list[Observed]:
        found: list[Observed] = []
        for worker_dir in sorted(self._workers_dir.iterdir()):
            if worker_dir.name.startswith(".") or not worker_dir.is_dir():
                continue
            meta = self._read_meta(worker_dir.name)
            if meta is None or (endpoint_id is not None and meta["endpoint_id"] != endpoint_id):
                continue  # a launch still writing its meta, or another endpoint's worker
            found.append(self._observed(worker_dir, meta))
        return found

    def _observed(self, worker_dir: Path, meta: dict[str, Any]) -> Observed:
        worker_id = meta["worker_id"]
        child = self._own(worker_id, meta)
        running = self._running(worker_id, meta)
        exit_code: int | None = None
        if child is not None:
            detail = f"pid {meta['pid']}"
            if not running and child.proc.returncode is None:
                child.reaper.join(_KILL_WAIT_S)  # dead but not reaped yet: its reaper is about to
            if child.proc.returncode is not None:
                running, exit_code = False, _exit_code(child.proc.returncode)
        else:
            detail = f"pid {meta['pid']} (adopted)"
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
        if was_running:
            self._signal_group(pid, signal.SIGTERM)
            await self._wait_dead(worker_id, meta, grace_s)
        # SIGKILL what is left of its group (the worker itself after the grace period, or children
        # it left behind) unless its pid now belongs to another process that may lead its own group.
        if _group_is_ours(pid, meta.get("start_ticks")):
            self._signal_group(pid, signal.SIGKILL)
        if was_running and not await self._wait_dead(worker_id, meta, _KILL_WAIT_S):
            raise BackendError(f"worker {worker_id!r} (pid {pid}) survived SIGKILL")
        await asyncio.to_thread(self._remove_state, worker_id)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise BackendError(f"cannot signal worker process group {pid}: {exc}")

    async def _wait_dead(self, worker_id: str, meta: dict[str, Any], timeout_s: float) -> bool:
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
        may_start = throttled(alive if follow else None)
        appeared = False
        while not await asyncio.to_thread(path.exists):
            if not await may_start():
                raise BackendError(f"no logs for worker {worker_id!r}")
            appeared = True
            await asyncio.sleep(_FOLLOW_POLL_S)
        offset = 0 if tail is None or appeared else await asyncio.to_thread(_tail_offset, path, tail)
        pending = b""
        stopped = not follow
        while True:
            chunk = await asyncio.to_thread(_read_from, path, offset)
            if chunk:
                offset += len(chunk)
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
                continue
            if stopped:
                if pending:
                    yield pending.decode("utf-8", "replace")
                return
            if await asyncio.to_thread(self._still_running, worker_id) or await may_start():
                await asyncio.sleep(_FOLLOW_POLL_S)
            else:
                stopped = True  # one more read: keep what it wrote just before it stopped

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
        env = child.env if child is not None else _environ_of(meta["pid"])
        argv, cwd = list(command), meta["cwd"]
        box = meta.get("sandbox")
        if box is not None:  # the same sandbox: its namespaces, its uid (see sandbox.enter_argv)
            init = init_pid(meta["pid"])
            if init is None:
                raise BackendError(f"worker {worker_id!r} is not running (no sandbox found)")
            view = View((), cwd=cwd, uid=box["uid"], gid=box["gid"])
            argv, cwd = enter_argv(init, view, argv), "/"
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            return ExecResult(127, f"command not found: {command[0]}\n".encode())
        except PermissionError:
            return ExecResult(126, f"permission denied: {command[0]}\n".encode())
        except OSError as exc:
            raise BackendError(f"cannot exec in worker {worker_id!r}: {exc}")
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._signal_group(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return ExecResult(124, output + f"\n[ember] timed out after {timeout_s}s\n".encode())
        return ExecResult(_exit_code(proc.returncode), output)

    async def aclose(self) -> None:
        """Nothing to release: workers keep running, and their reaper threads keep reaping them."""


def _inside_env(mounts: tuple[Mount, ...]) -> dict[str, str]:
    """What differs in a sandboxed worker's environment: its home and temp dir are its private /tmp,
    its mounts are found at their targets (the volume at /runpod-volume, where RunPod handlers look)."""
    env = {"HOME": "/tmp", "TMPDIR": "/tmp"}
    for mount in mounts:
        if mount.source == mount.target:
            continue
        name = re.sub(r"[^A-Za-z0-9]+", "_", mount.target).strip("_").upper() or "ROOT"
        env[f"EMBER_MOUNT_{name}"] = mount.target
        if mount.target.rstrip("/") == VOLUME_PATH:
            env["RUNPOD_VOLUME_PATH"] = VOLUME_PATH
    return env


def _environ_of(pid: int) -> dict[str, str]:
    """The environment a running process was started with (for processes another instance started)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read the environment of pid {pid}: {exc}")
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(_READ_CHUNK_BYTES)
    except FileNotFoundError:
        return b""


def _tail_offset(path: Path, tail: int) -> int:
    """Byte offset where the last `tail` lines of the file begin (a final newline ends, not starts, one)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if tail <= 0:
            return size
        seen = 0
        pos = size
        while pos > 0:
            step = min(_READ_CHUNK_BYTES, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step)
            idx = data.rfind(b"\n")
            while idx != -1:
                if pos + idx != size - 1:
                    seen += 1
                    if seen == tail:
                        return pos + idx + 1
                idx = data.rfind(b"\n", 0, idx)
        return 0
