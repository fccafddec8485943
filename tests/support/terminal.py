"""Run a command with its standard output on a pseudo-terminal, as a person at a terminal runs it, and
collect what it drew: the CLI's live bars and spinners only show there (through a pipe it prints plain
lines). `strip_ansi` leaves the text a test can look for."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import tempfile
import termios
import time
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]+[0-~]|[@-_])")


@dataclass(frozen=True)
class Drawn:
    returncode: int
    raw: str  # what reached the terminal, escape sequences and all
    stderr: str

    @property
    def text(self) -> str:
        return strip_ansi(self.raw)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "\n")


def run_on_terminal(
    argv: list[str], env: dict[str, str], *, columns: int = 160, rows: int = 40, timeout_s: float = 300
) -> Drawn:
    """Run `argv` with standard output on a new pseudo-terminal of `columns` x `rows` (standard error to
    a file); what it drew and its exit code. Killed, and an AssertionError, after `timeout_s`."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=err, env=env)
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"{argv} ran past {timeout_s}s; drew:\n{b''.join(chunks)[-3000:]!r}")
                ready, _, _ = select.select([master], [], [], 0.5)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            code = proc.wait(timeout=30)
        finally:
            os.close(master)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return Drawn(code, b"".join(chunks).decode(errors="replace"), stderr)
