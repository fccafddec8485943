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
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time

CONTROL_DIR = "/.ember"
IDENTITY_FIFO = CONTROL_DIR + "/identity"
STATUS_FIFO = CONTROL_DIR + "/status"
MAX_IDENTITY_BYTES = 4 * 1024 * 1024
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class Launcher:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.child = 0
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
            kill_the_rest()
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
            identity = read_identity()
            if identity is None:
                continue
            self.parking = False
            status = self.run_worker(identity["env"])
            if not self.parking:
                return status
            kill_the_rest()
            self.parking = False
            report("parked")

    def run_worker(self, env: dict[str, str]) -> int:
        """Fork and exec the worker's command with `env`; its exit status as a shell gives it."""
        environ = dict(os.environ)
        environ.update(env)
        pid = os.fork()
        if pid == 0:
            # exec keeps ignored signals ignored: give the worker the defaults python changed.
            for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
            try:
                os.execvpe(self.command[0], self.command, environ)
            except OSError as exc:
                sys.stderr.write(f"ember launcher: cannot run {self.command[0]}: {exc}\n")
                os._exit(127)
        self.child = pid
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            self.child = 0
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


def read_identity() -> dict[str, dict[str, str]] | None:
    """Block until the host writes an identity; None when what came is not one (ignored)."""
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
    return {"env": env}


def kill_the_rest(timeout_s: float = 5.0) -> None:
    """SIGKILL every process of the container but docker-init (pid 1) and this one, and wait until
    they are gone (docker-init reaps them), so nothing of the last worker runs in the next one."""
    me = os.getpid()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        others = [pid for pid in _pids() if pid not in (1, me)]
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
    command = argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        sys.stderr.write("ember launcher: no command to run\n")
        return 2
    return Launcher(command).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
