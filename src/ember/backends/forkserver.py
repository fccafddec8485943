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

The next worker is forked ahead of its request (a standby: its own session and, in the sandbox, its
own namespaces already), so a request costs a message, not a fork. It becomes the worker a plain
start would have made: the worker's whole environment, cwd, log and argv, and then the handler file
run as `__main__`. In the sandbox its private namespaces (user, mount, IPC: a fresh /tmp and
/dev/shm; see `ember.backends.forkchild`) leave workers forked from one template sharing nothing but
the template's pid namespace (they see each other in /proc, but not each other's environment,
memory, files or IPC). Where the host forbids that, the worker says so and the backend falls back to
plain starts.
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
import time
import traceback
import types
from array import array
from typing import TypedDict

from ember.backends.forkchild import become_environment, isolate_namespaces, show_identity

_MSG_MAX_BYTES = 4 * 1024 * 1024
_STANDBY_DELAY_S = 0.2  # after a request: the new worker has the CPU to itself while it starts
_NEVER_PREIMPORTED = ("__main__", "__mp_main__", "runpod", "ember.backends")


class ForkRequest(TypedDict):
    """The backend's `fork` message (see the module docstring): the worker it is to become."""

    worker_id: str
    env: dict[str, str]
    cwd: str
    handler: str


class _Child:
    """What a forked child runs: the fork request, once it is the worker."""

    def __init__(self, request: ForkRequest) -> None:
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
    _warm_reseed()
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
    """Why this process must not fork workers, or None: a Python thread, a socket or a GPU device left
    open by an import would be shared by every worker (or broken in all of them). Native thread pools
    (OpenBLAS, MKL, torch's) are no reason: they stop and restart around a fork themselves."""
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
    """Hand each request to the standby child (forked ahead, already in its own session and, in the
    sandbox, its own namespaces), which becomes the worker; until the backend shuts its end (or is
    gone) and the last worker has exited, reporting their exits. The next standby is forked a moment
    after a request (not while the new worker starts), or at once when a request finds none. Returns
    in a child once it is a worker (its request), None in the template when it is done."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda _n, _f: None)
    signal.set_wakeup_fd(wake_w)
    workers: set[int] = set()
    idle: set[int] = set()  # the standby, and standbys told to go
    standby: tuple[int, socket.socket] | None = None
    standby_at = 0.0  # when to fork the next standby
    listening = True
    while listening or workers or idle:
        timeout = None
        if listening and standby is None:
            timeout = max(0.0, standby_at - time.monotonic())
            if not timeout:
                standby, request = _fork_standby(control, (wake_r, wake_w), isolate)
                if standby is None:
                    return request  # this process was the standby, and is now a worker
                idle.add(standby[0])
                timeout = None
        ready, _, _ = select.select([control.fileno(), wake_r] if listening else [wake_r], [], [], timeout)
        if wake_r in ready:
            _drain(wake_r)
        _reap(workers, idle, control)
        if standby is not None and standby[0] not in idle:
            standby[1].close()
            standby = None  # it died idle: the next turn forks another
        if not (listening and control.fileno() in ready):
            continue
        try:
            data, ancillary, _flags, _addr = control.recvmsg(_MSG_MAX_BYTES, socket.CMSG_SPACE(8))
        except OSError:
            data, ancillary = b"", []
        fds = _fds(ancillary)
        if not data:
            listening = False  # retired, or the backend is gone: serve the workers out
            if standby is not None:
                standby[1].close()  # it reads EOF and exits
                standby = None
        elif len(fds) == 2:
            if standby is None:
                standby, request = _fork_standby(control, (wake_r, wake_w), isolate)
                if standby is None:
                    return request
            pid, line = standby
            try:
                line.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds).tobytes())])
                workers.add(pid)
            except OSError:
                pass  # the standby is gone: the backend's wait for an answer ends in a plain start
            idle.discard(pid)
            line.close()
            standby, standby_at = None, time.monotonic() + _STANDBY_DELAY_S
        for fd in fds:
            os.close(fd)
    return None


def _fork_standby(
    control: socket.socket, wake: tuple[int, int], isolate: bool
) -> tuple[tuple[int, socket.socket], None] | tuple[None, _Child]:
    """Fork the next worker ahead of its request. In the template: ((its pid, its line), None); in
    the standby, once a request came: (None, the request)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        theirs.close()
        return (pid, ours), None
    ours.close()
    return None, _await_request(theirs, control, wake, isolate)


def _await_request(
    line: socket.socket, control: socket.socket, wake: tuple[int, int], isolate: bool
) -> _Child:
    """The standby: out of the template's loop and into a session (and, sandboxed, namespaces) of its
    own, then wait for the request that makes it a worker; exits quietly if none comes."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    for fd in wake:
        os.close(fd)
    os.setsid()  # its own session and process group: stop() signals the worker's whole tree
    problem = None
    if isolate:
        try:
            isolate_namespaces()
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"  # told to the backend with the first request
    try:
        data, ancillary, _flags, _addr = line.recvmsg(_MSG_MAX_BYTES, socket.CMSG_SPACE(8))
    except OSError:
        data, ancillary = b"", []
    line.close()
    fds = _fds(ancillary)
    request = _parse(data) if data else None
    if len(fds) != 2 or request is None:
        os._exit(0)  # retired before it was needed: nothing of a worker ran here
    return _become_worker(request, fds, problem)


def _reap(workers: set[int], idle: set[int], control: socket.socket) -> None:
    """Reap exited children; report the workers' exits (a standby's is nobody's business)."""
    while workers or idle:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            workers.clear()
            idle.clear()
            return
        if pid == 0:
            return
        idle.discard(pid)
        if pid in workers:
            workers.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            _send(control, {"op": "exit", "pid": pid, "code": 128 - code if code < 0 else code})


def _become_worker(request: ForkRequest, fds: list[int], problem: str | None) -> _Child:
    log_fd, reply_fd = fds
    reply = socket.socket(fileno=reply_fd)
    try:
        if problem is not None:
            raise OSError(problem)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        os.chdir(request["cwd"])
        env: dict[str, str] = request["env"]
        become_environment(env)
        _reseed()
        reply.sendall(json.dumps({"pid": os.getpid()}).encode())
        reply.close()
    except BaseException as exc:  # noqa: BLE001 - the backend falls back to a plain start
        try:
            reply.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        finally:
            os._exit(70)
    show_identity(env, [sys.executable, "-u", request["handler"]])  # for /proc's readers: after the answer
    return _Child(request)


def _warm_reseed() -> None:
    """What numpy imports the first time it seeds from the OS (20 ms), imported here, not in a worker."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.RandomState()
        except Exception:  # noqa: BLE001 - the child's reseed just costs its first-time price
            pass


def _reseed() -> None:
    """Sibling workers must not share a random state: Python's `random` reseeds itself after a fork;
    numpy's legacy global generator (seeded once, at import) is reseeded here from the OS."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        try:
            numpy_random.seed()
        except Exception:  # noqa: BLE001 - a numpy without the legacy seed() keeps its state
            pass


def run_handler(request: ForkRequest) -> None:
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


def _parse(data: bytes) -> ForkRequest | None:
    """The fork request in `data`, as the backend sends it; None when it is not a JSON object."""
    try:
        message: ForkRequest | None = json.loads(data)  # what the backend's `fork` sends
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _send(control: socket.socket, message: dict[str, object]) -> None:
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
