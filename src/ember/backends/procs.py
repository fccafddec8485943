"""Process and file helpers of the local backend: /proc facts about a pid (start time, liveness, the
environment it started with), exit codes, atomic writes, and reading a log file from an offset or its
tail. No state; Linux /proc where there is one."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ember.backends.base import Alive, ExecResult, throttled
from ember.core.errors import BackendError

READ_CHUNK_BYTES = 64 * 1024
_FOLLOW_POLL_S = 0.2


def proc_start_ticks(pid: int) -> tuple[int, str] | None:
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


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start ticks) of every live process below `pid` (a sandbox's init and what it runs), from
    /proc's children lists; [] where there is no /proc."""
    found: list[tuple[int, int]] = []
    stack = [pid]
    while stack and len(found) < 10_000:
        parent = stack.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            ticks = proc_start_ticks(child)
            if ticks is not None:
                found.append((child, ticks[0]))
                stack.append(child)
    return found


def pid_alive(pid: int, start_ticks: int | None) -> bool:
    """True when `pid` runs and is the same process that was started (guards against pid reuse)."""
    if not os.path.isdir("/proc"):  # not Linux: no start time to compare, trust the pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    found = proc_start_ticks(pid)
    if found is None or start_ticks is None:
        return False
    ticks, state = found
    return ticks == start_ticks and state not in ("Z", "X")


def group_is_ours(pid: int, start_ticks: int | None) -> bool:
    """True unless a process other than the one started now holds `pid` (and so may lead group `pid`).

    While no process holds a pid, Linux gives no new group that id, so a group `pid` is the worker's.
    """
    found = proc_start_ticks(pid)
    return found is None or (start_ticks is not None and found[0] == start_ticks)


def shell_exit_code(returncode: int) -> int:
    """Shell convention: a process killed by signal N exits with 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text)
    os.replace(tmp, path)


def reap(proc: subprocess.Popen[bytes], worker_dir: Path) -> None:
    """Wait for a child (so it never stays a zombie) and record its exit code beside its meta."""
    code = shell_exit_code(proc.wait())
    try:
        # Only into its own incarnation's dir: the id may have been stopped and launched again.
        if json.loads((worker_dir / "meta.json").read_text())["pid"] == proc.pid:
            write_atomic(worker_dir / "exit_code", str(code))
    except (OSError, ValueError, KeyError):
        pass  # stopped meanwhile: its runtime state is gone, and so is the need for the code


def run_command(argv: list[str], *, cwd: str, env: dict[str, str], timeout_s: float, name: str) -> ExecResult:
    """Run `argv` in its own session and collect its output (stdout and stderr together). Exit code 127
    when `name` is not found, 126 when it cannot be executed, 124 (with the output so far) past
    `timeout_s`, when its whole group is killed. Other OSErrors are raised."""
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
        return ExecResult(127, f"command not found: {name}\n".encode())
    except PermissionError:
        return ExecResult(126, f"permission denied: {name}\n".encode())
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        output, _ = proc.communicate()
        return ExecResult(124, output + f"\n[ember] timed out after {timeout_s}s\n".encode())
    return ExecResult(shell_exit_code(proc.returncode), output)


async def log_lines(
    path: Path, *, tail: int | None, follow: bool, running: Callable[[], bool], alive: Alive | None
) -> AsyncIterator[str]:
    """Lines of a log file, oldest first (see `LocalBackend.logs`): from the last `tail` lines; with
    `follow`, polling until `running()` (blocking) is False, `alive` says no start is coming and the
    file is drained. BackendError when there is no log (unless `alive` keeps a follow waiting)."""
    may_start = throttled(alive if follow else None)
    appeared = False
    while not await asyncio.to_thread(path.exists):
        if not await may_start():
            raise BackendError(f"no logs for worker {path.stem!r}")
        appeared = True
        await asyncio.sleep(_FOLLOW_POLL_S)
    offset = 0 if tail is None or appeared else await asyncio.to_thread(tail_offset, path, tail)
    pending = b""
    stopped = not follow
    while True:
        chunk = await asyncio.to_thread(read_from, path, offset)
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
        if await asyncio.to_thread(running) or await may_start():
            await asyncio.sleep(_FOLLOW_POLL_S)
        else:
            stopped = True  # one more read: keep what it wrote just before it stopped


def environ_of(pid: int) -> dict[str, str]:
    """The environment a running process shows in /proc (for processes another instance started)."""
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


def read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(READ_CHUNK_BYTES)
    except FileNotFoundError:
        return b""


def tail_offset(path: Path, tail: int) -> int:
    """Byte offset where the last `tail` lines of the file begin (a final newline ends, not starts, one)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if tail <= 0:
            return size
        seen = 0
        pos = size
        while pos > 0:
            step = min(READ_CHUNK_BYTES, pos)
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
