"""Ember's launcher inside a worker container (its entrypoint, run by the image's own python under
docker-init): it waits for a worker identity on a fifo, runs the worker's command with that identity's
environment, and on a park request stops the worker and waits for the next identity, so that a paused
container can become a new worker. It is copied into the container's control directory, not imported:
standard library only, Python 3.7 syntax, nothing of Ember's.

Protocol (the directory is mounted read-only at /.ember; its fifos stay writable):
- `identity` (host -> launcher): one JSON line {"worker": id, "env": {name: value}}, read once per worker.
- `status` (launcher -> host): the line "parked" once a park request is done (written only while the
  host is reading, never blocking).
- SIGUSR1: park (SIGTERM the worker; when it has exited, kill every other process of the container, say
  "parked" and wait for the next identity). SIGUSR2 during a park: SIGKILL the worker.
- SIGTERM, SIGINT, SIGHUP, SIGQUIT: forwarded to the worker; the launcher exits with the worker's status,
  as the worker's own process would have (a crash or an exit ends the container, as without a launcher).

A container's first worker is the command itself (fork and exec). For the next ones, when the command is
`python [options] script [args]`, a parked container keeps a standby interpreter: the same python with
the same options, started once the last worker is gone (with its environment less the RUNPOD_* identity
and GPU variables), which has imported Ember's worker SDK when the image has it and waits for its
identity; given one, it takes that environment and runs the script as `__main__`, as `python script`
would. So a resumed worker does not pay for an interpreter's start.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time

CONTROL_DIR = "/.ember"
IDENTITY_FIFO = CONTROL_DIR + "/identity"
STATUS_FIFO = CONTROL_DIR + "/status"
STANDBY = "--standby"
MAX_IDENTITY_BYTES = 4 * 1024 * 1024
STANDBY_READY_S = 10.0
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
# Interpreter options a standby can take as they are (no value, or a value in the next argument).
_FLAG_CHARS = set("bBdEIOqsSuvR")
_VALUE_OPTIONS = ("-W", "-X")
# Modules a standby imports ahead: Ember's worker SDK reads its environment only when `start` runs.
PREIMPORT = ("ember.serverless.main",)
_IDENTITY_ONLY = ("RUNPOD_", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


class Launcher:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.base_env = dict(os.environ)
        self.child = 0
        self.standby: tuple[int, int] | None = None  # (pid, the fd its identity goes to)
        self.parking = False

    # -- signals --------------------------------------------------------------------------------------
    def on_forwarded(self, signum: int, _frame: object) -> None:
        if self.child:
            _kill(self.child, signum)
        else:  # waiting for an identity: nothing runs, so the container just ends
            os._exit(0)

    def on_park(self, _signum: int, _frame: object) -> None:
        self.parking = True
        if self.child:
            _kill(self.child, signal.SIGTERM)
        else:  # between workers (an identity never came): parked already
            kill_the_rest(keep=self.standby[0] if self.standby else 0)
            report("parked")

    def on_park_now(self, _signum: int, _frame: object) -> None:
        if self.parking and self.child:
            _kill(self.child, signal.SIGKILL)

    # -- the loop -------------------------------------------------------------------------------------
    def run(self) -> int:
        for signum in _FORWARDED:
            signal.signal(signum, self.on_forwarded)
        signal.signal(signal.SIGUSR1, self.on_park)
        signal.signal(signal.SIGUSR2, self.on_park_now)
        while True:
            env = read_identity()
            if env is None:
                continue
            self.parking = False
            environ = dict(self.base_env)
            environ.update(env)
            status = self.run_worker(environ)
            if not self.parking:
                return status
            kill_the_rest()
            self.parking = False
            self.start_standby(environ)
            report("parked")

    def run_worker(self, environ: dict[str, str]) -> int:
        """Run the worker with `environ` (in the standby when there is one); its exit status as a
        shell gives it."""
        pid = self.hand_to_standby(environ) or _spawn(self.command, environ)
        self.child = pid
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            self.child = 0
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    # -- the standby interpreter ----------------------------------------------------------------------
    def start_standby(self, last: dict[str, str]) -> None:
        """Start the next worker's interpreter ahead, when the command allows; best effort."""
        parts = split_python(self.command)
        if parts is None:
            return
        interpreter, script, args = parts
        env = {k: v for k, v in last.items() if not k.startswith(_IDENTITY_ONLY)}
        identity_r, identity_w = os.pipe()
        ready_r, ready_w = os.pipe()
        argv = [*interpreter, os.path.abspath(__file__), STANDBY, str(identity_r), str(ready_w), "--"]
        pid = _spawn([*argv, script, *args], env, keep=(identity_r, ready_w))
        os.close(identity_r)
        os.close(ready_w)
        ready = bool(select.select([ready_r], [], [], STANDBY_READY_S)[0]) and os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        if ready:
            self.standby = (pid, identity_w)
            return
        os.close(identity_w)
        _kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def hand_to_standby(self, environ: dict[str, str]) -> int:
        """The standby's pid once it has `environ`, or 0 when there is none (or it died)."""
        if self.standby is None:
            return 0
        pid, fd = self.standby
        self.standby = None
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                data = (json.dumps({"env": environ}) + "\n").encode()
                while data:
                    data = data[os.write(fd, data) :]
                return pid
        except OSError:
            pass
        finally:
            os.close(fd)
        _kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
        return 0


def split_python(argv: list[str]) -> tuple[list[str], str, list[str]] | None:
    """(interpreter and its options, script, the script's arguments) of `python [options] script
    [args]`; None for anything else (-c, -m, unknown options): those always start afresh."""
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUE_OPTIONS:
            i += 2
        elif arg.startswith(_VALUE_OPTIONS) or (
            len(arg) > 1 and arg[0] == "-" and set(arg[1:]) <= _FLAG_CHARS
        ):
            i += 1
        elif arg == "--":
            i += 1
            break
        elif arg.startswith("-"):
            return None
        else:
            break
    if i >= len(argv) or argv[i] == "-":
        return None
    return argv[:i], argv[i], argv[i + 1 :]


def be_standby(identity_fd: int, ready_fd: int, script: str, args: list[str]) -> None:
    """In the standby interpreter: import ahead, say ready, wait for the environment, run the script."""
    import importlib

    for name in PREIMPORT:
        try:
            importlib.import_module(name)
        except Exception:  # not in this image (or not ours): the worker imports what it needs itself
            pass
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    with os.fdopen(identity_fd, "rb") as source:
        line = source.readline(MAX_IDENTITY_BYTES)
    if not line:
        os._exit(0)  # the launcher let this standby go
    env = json.loads(line.decode("utf-8"))["env"]
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    import runpy

    runpy.run_path(script, run_name="__main__")


def read_identity() -> dict[str, str] | None:
    """Block until the host writes an identity: its environment; None when what came is not one."""
    with open(IDENTITY_FIFO, "rb") as fifo:
        line = fifo.readline(MAX_IDENTITY_BYTES)
    if not line.strip():
        return None
    try:
        data = json.loads(line.decode("utf-8"))
    except ValueError:
        sys.stderr.write("ember launcher: ignored an identity that is not JSON\n")
        return None
    env = data.get("env") if isinstance(data, dict) else None
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        sys.stderr.write("ember launcher: ignored an identity without an environment\n")
        return None
    return env


def kill_the_rest(keep: int = 0, timeout_s: float = 5.0) -> None:
    """SIGKILL every process of the container but docker-init (pid 1), this one and `keep`, and wait
    until they are gone (docker-init reaps them), so nothing of the last worker runs in the next one."""
    spared = (1, os.getpid(), keep)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        others = [pid for pid in _pids() if pid not in spared]
        if not others:
            return
        for pid in others:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def report(line: str) -> None:
    """Tell the host (when it is listening) without ever blocking."""
    try:
        fd = os.open(STATUS_FIFO, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # ENXIO: nobody reads; the host finds out by other means
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _spawn(argv: list[str], env: dict[str, str], keep: tuple[int, ...] = ()) -> int:
    """Fork and exec `argv` with `env` (and the fds `keep`); the child's pid."""
    pid = os.fork()
    if pid == 0:
        try:
            # exec keeps ignored signals ignored: give the program the defaults python changed.
            for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            sys.stderr.write(f"ember launcher: cannot run {argv[0]}: {exc}\n")
        os._exit(127)
    return pid


def _pids() -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    state = stat.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state != b"Z":  # zombies are docker-init's to reap
                out.append(int(name))
    return out


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def main(argv: list[str]) -> int:
    if argv[1:2] == [STANDBY]:
        identity_fd, ready_fd, _, script, *args = argv[2:]
        be_standby(int(identity_fd), int(ready_fd), script, args)
        return 0
    command = argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        sys.stderr.write("ember launcher: no command to run\n")
        return 2
    return Launcher(command).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
