"""A FlashBoot template: the release's worker interpreter with the handler's modules imported, which
forks workers on request. Started by `ember.backends.templates` as `python -u -m ember.backends.forkserver`
with the worker's python, in the handler's directory, inside the worker's sandbox; standard library
only, and nothing in it may be unsafe across a fork: no threads, no sockets but its own pipe to the
backend, no CUDA (it checks after importing and reports itself unfit otherwise).

The backend's side is a SOCK_SEQPACKET socket (fd EMBER_TEMPLATE_FD), one JSON message per packet:
  template -> backend: {"op": "ready", "imported": n, "skipped": [..]} | {"op": "unfit", "why": ..}
                       {"op": "exit", "pid": p, "code": c} (a child it forked has exited)
  backend -> template: {"op": "fork", "worker_id", "env", "cwd", "handler"} with two fds: the worker's
                       log (its stdout and stderr) and a socket on which the child says {"pid": p}
                       once it is the worker (the kernel adds its pid as the backend sees it).
When the backend closes its end the template forks no more, and exits once its last child has.

A forked child becomes the worker a plain start would have made: its own session, the worker's whole
environment, cwd, log and argv, and then the handler file run as `__main__`. In the sandbox it also
takes private namespaces of its own (user, mount, IPC: a fresh /tmp and /dev/shm), drops the
capabilities that gave it and becomes non-dumpable, so that workers forked from one template share
nothing but the template's pid namespace (they see each other in /proc, but not each other's
environment, memory, files or IPC). Where the host forbids that, the child says so and the backend
falls back to plain starts.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
import types
from array import array
from typing import Any

from ember.backends.forkchild import isolate_namespaces, show_identity

_MSG_MAX_BYTES = 4 * 1024 * 1024
_NEVER_PREIMPORTED = ("__main__", "__mp_main__", "runpod", "ember.backends")


class _Child:
    """What a forked child runs: the fork request, once it is the worker."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop("EMBER_TEMPLATE_FD")))
    modules_fd = int(os.environ.pop("EMBER_TEMPLATE_MODULES_FD"))
    isolate = os.environ.pop("EMBER_TEMPLATE_ISOLATE", "") == "1"
    source = os.environ.pop("EMBER_TEMPLATE_SOURCE", "")
    sys.argv = [os.environ.pop("EMBER_TEMPLATE_ARGV0", "handler.py")]  # as `python -u handler.py`
    with os.fdopen(modules_fd, "r", encoding="utf-8") as f:
        names = f.read().split()
    imported, skipped = preimport(names, source)
    why = unfit(control.fileno())
    if why:
        _send(control, {"op": "unfit", "why": why})
        return
    _send(control, {"op": "ready", "imported": imported, "skipped": skipped[:50]})
    child = serve(control, isolate)
    if child is not None:
        run_handler(child.request)


def preimport(names: list[str], source: str) -> tuple[int, list[str]]:
    """Import `names` in their order; skip those that fail, and those the template must not import:
    the handler's own modules (files of its release's source, which may read the worker's identity
    when imported, so they are imported by the worker itself, as in a plain start) and the runpod SDK
    (which reads the worker's identity when imported). Returns (imported, skipped with reasons)."""
    local: dict[str, bool] = {}
    imported, skipped = 0, []
    for name in names:
        if name in sys.modules:
            continue
        top = name.partition(".")[0]
        if any(name == n or name.startswith(n + ".") for n in _NEVER_PREIMPORTED):
            continue
        if top not in local:
            local[top] = _is_local(top, source)
        if local[top]:
            skipped.append(f"{name}: the handler's own module")
            continue
        try:
            importlib.import_module(name)
            imported += 1
        except BaseException as exc:  # noqa: BLE001 - a module that fails to import is skipped, whatever it raises
            skipped.append(f"{name}: {type(exc).__name__}")
    return imported, skipped


def _is_local(top: str, source: str) -> bool:
    if not source:
        return False
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    places = [spec.origin or "", *(spec.submodule_search_locations or [])]
    root = os.path.realpath(source).rstrip("/") + "/"
    return any(p and os.path.realpath(p).startswith(root) for p in places)


def unfit(control_fd: int) -> str | None:
    """Why this process must not fork workers, or None: a thread, a socket or a GPU device left open
    by an import would be shared by every worker (or broken in all of them)."""
    if threading.active_count() > 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
        return f"an import started threads ({names})"
    torch = sys.modules.get("torch.cuda")
    if torch is not None and getattr(torch, "is_initialized", lambda: False)():
        return "an import initialised CUDA"
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:") and int(fd) != control_fd:
            return "an import left a socket open"
        if target.startswith("/dev/nvidia"):
            return f"an import opened a GPU device ({target})"
    return None


def serve(control: socket.socket, isolate: bool) -> _Child | None:
    """Fork a worker per request until the backend shuts its end (or is gone) and the last child has
    exited; their exits are reported meanwhile. Returns in a forked child (its request), None in the
    template when it is done."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda _n, _f: None)
    signal.set_wakeup_fd(wake_w)
    children: set[int] = set()
    listening = True
    while listening or children:
        watched = [control.fileno(), wake_r] if listening else [wake_r]
        ready, _, _ = select.select(watched, [], [])
        if wake_r in ready:
            _drain(wake_r)
        _reap(children, control)
        if not (listening and control.fileno() in ready):
            continue
        try:
            data, ancillary, _flags, _addr = control.recvmsg(_MSG_MAX_BYTES, socket.CMSG_SPACE(8))
        except OSError:
            data, ancillary = b"", []
        fds = _fds(ancillary)
        if not data:
            listening = False  # retired, or the backend is gone: serve the children out
        elif len(fds) == 2 and isinstance(request := _parse(data), dict):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                return _become_worker(request, fds, control, (wake_r, wake_w), isolate)
            children.add(pid)
        for fd in fds:
            os.close(fd)
    return None


def _reap(children: set[int], control: socket.socket) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        _send(control, {"op": "exit", "pid": pid, "code": 128 - code if code < 0 else code})


def _become_worker(
    request: dict[str, Any], fds: list[int], control: socket.socket, wake: tuple[int, int], isolate: bool
) -> _Child:
    log_fd, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        for fd in wake:
            os.close(fd)
        os.setsid()  # its own session and process group: stop() signals the worker's whole tree
        if isolate:
            isolate_namespaces()
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(request["cwd"])
        env: dict[str, str] = request["env"]
        os.environ.clear()
        os.environ.update(env)
        show_identity(env, [sys.executable, "-u", request["handler"]])
        _reseed()
        reply.sendall(json.dumps({"pid": os.getpid()}).encode())
        reply.close()
    except BaseException as exc:  # noqa: BLE001 - the backend falls back to a plain start
        try:
            reply.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(70)
    return _Child(request)


def _reseed() -> None:
    """Sibling workers must not share a random state: Python's `random` reseeds itself after a fork;
    numpy's legacy global generator (seeded once, at import) is reseeded here from the OS."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # noqa: BLE001 - a numpy without the legacy seed() keeps its state
            pass


def run_handler(request: dict[str, Any]) -> None:
    """Run the handler file as `python -u <file>` would: a fresh `__main__` with its absolute path as
    `__file__`, argv[0] as given. Its SystemExit ends the process as usual; an uncaught exception is
    printed without this module's frames and exits 1."""
    path = os.path.abspath(request["handler"])
    sys.argv = [request["handler"]]
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=path,
        __cached__=None,
        __builtins__=builtins,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __spec__=None,
        __package__=None,
    )
    sys.modules["__main__"] = module
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    try:
        exec(code, module.__dict__)
    except SystemExit:
        raise
    except Exception as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        sys.excepthook(type(exc), exc, tb)
        raise SystemExit(1) from None


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _parse(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:
        pass  # the backend is gone: the children carry on


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
