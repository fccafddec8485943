"""One FlashBoot template process, from the backend's side: start it (in its workers' sandbox) and wait
until it has imported its modules, ask it to fork a worker, relay its workers' exits, retire it. Which
templates run is `ember.backends.templates`' business; the template's own side is
`ember.backends.forkserver` (the protocol is described there)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ember.backends.procs import proc_start_ticks, write_atomic
from ember.backends.sandbox import View, sandbox_argv

START_TIMEOUT_S = 600.0
FORK_TIMEOUT_S = 10.0
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_ANSWER_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class Recipe:
    """How a release's template starts, taken from one of its worker launches."""

    key: str  # "<endpoint>.r<release>.<digest>": also the name of its directory
    endpoint_id: str
    release: int
    cwd: str  # the handler's directory (the same path inside the sandbox)
    handler: str  # the handler file, in cwd
    source_dir: str
    env: dict[str, str]  # the worker's environment less its identity
    python: str
    view: View | None  # the workers' sandbox (None: unsandboxed); children take namespaces of their own
    bwrap: str | None

    @property
    def isolate(self) -> bool:
        return self.view is not None

    def argv(self) -> list[str]:
        """What starts the template: the worker's python, in its sandbox when it has one."""
        command = [self.python, "-u", "-m", "ember.backends.forkserver"]
        return command if self.view is None else sandbox_argv(self.bwrap or "bwrap", self.view, command)


@dataclass(frozen=True)
class Forked:
    pid: int  # the worker, as this host sees it
    start_ticks: int | None
    key: str
    template_pid: int | None


class Failed(Exception):
    """The template did not start, or did not fork the worker (dead, broken pipe, no answer in time)."""


class Unfit(Exception):
    """Forking cannot give a worker what a plain start gives it (said by the template or its child)."""


class TemplateProcess:
    """A template's process and socket. `state` is starting | ready | retired | dead; thread-safe."""

    def __init__(self, recipe: Recipe, directory: Path) -> None:
        self.recipe = recipe
        self.directory = directory
        self.state = "starting"
        self.pid: int | None = None  # the template's python, as this host sees it
        self.drop_dir = False  # its release is gone: forget what was learned once it exits
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # state, children
        self._fork_lock = threading.Lock()  # one fork request at a time
        self._children: dict[int, tuple[str, int]] = {}  # its pid for a worker -> (worker, host pid)
        self._early_exits: dict[int, int] = {}  # exits heard before the fork's answer was
        self._info: dict[str, object] = {"key": recipe.key, "endpoint_id": recipe.endpoint_id}
        self._info["release"] = recipe.release

    def start(self) -> None:
        """Start it and wait until it has imported its modules. Raises Unfit or Failed."""
        recipe = self.recipe
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock = parent
        modules_fd = os.open(self.directory / "modules", os.O_RDONLY)
        env = dict(recipe.env)
        env.update(
            EMBER_TEMPLATE_FD=str(child.fileno()),
            EMBER_TEMPLATE_MODULES_FD=str(modules_fd),
            EMBER_TEMPLATE_ISOLATE="1" if recipe.isolate else "",
            EMBER_TEMPLATE_SOURCE=recipe.source_dir,
            EMBER_TEMPLATE_ARGV0=recipe.handler,
        )
        try:
            with open(self.directory / "template.log", "ab") as out:
                self._proc = subprocess.Popen(
                    recipe.argv(),
                    cwd="/" if recipe.isolate else recipe.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(child.fileno(), modules_fd),
                )
        except OSError as exc:
            raise Failed(f"cannot start: {exc}") from None
        finally:
            child.close()
            os.close(modules_fd)
        with self._lock:
            retired = self.state == "retired"
        if retired:  # retired while it was being started: it forks nothing, and exits when ready
            try:
                parent.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.write_info(outer_pid=self._proc.pid, started_at=time.time())
        parent.settimeout(START_TIMEOUT_S)
        try:
            message, pid = _receive(parent)
        except TimeoutError:
            raise Failed(f"not ready within {START_TIMEOUT_S:.0f}s") from None
        parent.settimeout(None)
        if message.get("op") == "unfit":
            raise Unfit(str(message.get("why")))
        if message.get("op") != "ready":
            raise Failed(f"exited before it was ready (see {self.directory / 'template.log'})")
        with self._lock:
            self.pid = pid
            if self.state == "starting":
                self.state = "ready"
        self.write_info(pid=pid, imported=message.get("imported"), skipped=message.get("skipped") or [])

    def relay(self, on_exit: Callable[[str, int, int], None]) -> None:
        """Pass on its workers' exits (`on_exit(worker_id, pid, code)`) until it exits."""
        assert self._sock is not None
        while True:
            message, _pid = _receive(self._sock)
            if not message:
                return
            inner, code = message.get("pid"), message.get("code")
            if message.get("op") != "exit" or not isinstance(inner, int):
                continue
            code = code if isinstance(code, int) else 0  # the template always sends an int (or None)
            with self._lock:
                known = self._children.pop(inner, None)
                if known is None:
                    self._early_exits[inner] = code
            if known is not None:
                on_exit(known[0], known[1], code)

    def fork(self, worker_id: str, env: dict[str, str], log_path: Path) -> tuple[Forked, int | None]:
        """Fork a worker with `env`, its output to `log_path`. Returns it, and its exit code if it has
        already exited. Raises Failed, or Unfit when its child cannot be set up as a worker here."""
        recipe = self.recipe
        with self._fork_lock:
            if self._sock is None or self.state != "ready":
                raise Failed("the template is not ready")
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            parent.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            try:
                log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(
                        log_fd, f"[ember] forking from template {recipe.key} (pid {self.pid})\n".encode()
                    )
                    request = {"worker_id": worker_id, "env": env, "cwd": recipe.cwd}
                    request["handler"] = recipe.handler
                    fds = array("i", [log_fd, child.fileno()]).tobytes()
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
                    self._sock.sendmsg([json.dumps(request).encode()], ancillary, socket.MSG_DONTWAIT)
                finally:
                    os.close(log_fd)
                    child.close()
                parent.settimeout(FORK_TIMEOUT_S)
                answer, host_pid = _receive(parent)
            except TimeoutError:
                raise Failed(f"no answer within {FORK_TIMEOUT_S:.0f}s") from None
            except OSError as exc:
                raise Failed(f"the template did not take the request: {exc}") from None
            finally:
                parent.close()
        if not answer:
            raise Failed("the template closed the request unanswered")
        if "error" in answer:
            raise Unfit(f"a forked worker cannot be set up here: {answer['error']}")
        inner = answer.get("pid")
        if host_pid is None or host_pid <= 0 or not isinstance(inner, int):
            raise Failed("the forked worker did not say who it is")
        found = proc_start_ticks(host_pid)
        with self._lock:
            early = self._early_exits.pop(inner, None)
            if early is None:
                self._children[inner] = (worker_id, host_pid)
        return Forked(host_pid, found[0] if found else None, recipe.key, self.pid), early

    def retire(self) -> bool:
        """No more forks: it exits once its last worker has (a sandboxed template's workers live in its
        pid namespace and would die with it). False when it was retired already."""
        with self._lock:
            if self.state in ("retired", "dead"):
                return False
            self.state = "retired"
        if self._proc is not None and self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)  # it reads EOF; its workers' exits still come
            except OSError:
                pass
        return True

    def finish(self) -> None:
        """After `relay` (or a failed start): reap it, killing it first if it is still there without
        workers (failed while starting, or hung), and record that it exited."""
        with self._lock:
            self.state = "dead"
            childless = not self._children
        if self._proc is not None:
            if self._proc.poll() is None and childless:
                kill_group(self._proc.pid)
            self._proc.wait()
        if self._sock is not None:
            self._sock.close()
        if not self.drop_dir and self.directory.is_dir():
            self.write_info(state="exited")

    def write_info(self, **changes: object) -> None:
        """meta.json beside its modules: what operators (and tests) read of it."""
        self._info.update(changes)
        self._info["state"] = changes.get("state", self.state)
        if self.directory.is_dir():
            write_atomic(self.directory / "meta.json", json.dumps(self._info))


def enter_forked_argv(pid: int, view: View, command: list[str]) -> list[str]:
    """The argv that runs `command` (an `exec`) inside a forked sandboxed worker: its own user, mount
    and IPC namespaces and its template's pid namespace, as the worker's uid, without privileges.

    The worker's user namespace maps its uid alone and denies setgroups, so the server's groups are
    dropped before entering (`setpriv --clear-groups`) and nsenter switches uid and gid itself."""
    argv = ["nsenter", f"--target={pid}", "--user", "--mount", "--pid", "--ipc", "--preserve-credentials"]
    if view.uid is not None:
        argv = ["setpriv", "--clear-groups", "--", *argv, f"--setuid={view.uid}", f"--setgid={view.gid}"]
    return [*argv, "--root", f"--wdns={view.cwd}", "--", "setpriv", "--no-new-privs", "--", *command]


def _receive(sock: socket.socket) -> tuple[dict[str, object], int | None]:
    """One message and its sender's pid as this host sees it (the kernel's, not the sender's word);
    ({}, None) at the end of the stream; {"op": "garbled"} for anything but a JSON object."""
    try:
        data, ancillary, _flags, _addr = sock.recvmsg(_ANSWER_MAX_BYTES, socket.CMSG_SPACE(_CREDS.size))
    except TimeoutError:
        raise
    except OSError:
        return {}, None
    if not data:
        return {}, None
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    pids = [
        _CREDS.unpack(payload[: _CREDS.size])[0]
        for level, kind, payload in ancillary
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDS.size
    ]
    return (message if isinstance(message, dict) else {"op": "garbled"}), next(iter(pids), None)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except OSError:
        pass


def note(log_path: Path, line: str) -> None:
    """A line of Ember's own in a worker's log."""
    try:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass
