"""The README's five-minute tour, run as written by a new user: its ```bash blocks and its Python
snippets, in a fresh `bash` whose environment has only the basics (PATH without Ember's virtualenv, a
HOME of its own), against a server started as `make run` starts it (`ember up`, on 127.0.0.1:8000, the
port the README names). `my-handler/handler.py` is written from the README's own block.

Commands that serve or follow until stopped (`ember dev`, `ember logs -f`) run in the background for a
bounded time: `ember dev` must answer a job on the URL it prints, `ember logs -f` must still be
following (not have failed) when it is stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import need
from tests.support.live import ROOT, wait_for

README = ROOT / "README.md"
PORT = 8000  # the README's URLs name it
URL = f"http://127.0.0.1:{PORT}"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_TIMEOUT_S = 180.0
FOLLOW_S = 4.0  # how long a following command (`ember logs -f`) runs before it is stopped
LONG_RUNNING = re.compile(r"^ember (dev\b|logs\b.*\s-f\b)")
SHELL_STATE = re.compile(r"^(source|\.|export|cd)\s")  # lines whose effect later commands depend on


@dataclass(frozen=True)
class Block:
    lang: str
    text: str


def tour_blocks() -> list[Block]:
    """The fenced code blocks of the README's tour section, in order."""
    text = README.read_text()
    start = text.index("## A five-minute tour")
    end = text.index("\n## ", start + 1)
    return [Block(m[1], m[2]) for m in re.finditer(r"```(\w+)\n(.*?)```", text[start:end], re.S)]


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: comment lines and trailing `  # …` comments dropped, backslash
    continuations joined, `a ; b` split into its commands."""
    commands: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\s{2,}#.*$", "", line)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.extend(c.strip() for c in (pending + line).split(" ; ") if c.strip())
        pending = ""
    return commands


@pytest.fixture(scope="module")
def tour_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tour-home")


def fresh_env(home: Path) -> dict[str, str]:
    """What a new login shell has: no virtualenv on PATH, no EMBER_* settings."""
    return {"PATH": BASE_PATH, "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb", "COLUMNS": "200"}


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no owner
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def make_run(tour_home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ember up` from the virtualenv, with the default EMBER_HOME (~/.ember under the tour's HOME)."""
    if not port_is_free(PORT):
        why = f"the README's tour talks to {URL}, and port {PORT} is in use on this machine"
        if os.environ.get("CI"):
            pytest.fail(why)
        need("port-8000", False, why)
    ember = Path(sys.prefix) / "bin" / "ember"
    log = open(tour_home / "make-run.log", "ab")  # noqa: SIM115 - kept open for the server's lifetime
    proc = subprocess.Popen(
        [str(ember), "up"],
        env=fresh_env(tour_home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def up() -> bool:
        assert proc.poll() is None, (tour_home / "make-run.log").read_text()
        return (tour_home / ".ember" / "admin_key").exists() and b"Ember is up" in (
            tour_home / "make-run.log"
        ).read_bytes()

    try:
        wait_for(up, 60, interval_s=0.2, what="`ember up` to deploy the example endpoint")
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        for meta in (tour_home / ".ember" / "runtime" / "workers").glob("*/meta.json"):
            try:
                os.killpg(json.loads(meta.read_text())["pid"], signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


class Shell:
    """A new user's shell in `cwd`: each command runs in a fresh `bash` after the earlier commands that
    change the shell's state (`source`, `export`, `cd`), as they would have in one session."""

    def __init__(self, cwd: Path, home: Path) -> None:
        self.cwd = cwd
        self.env = fresh_env(home)
        self.state: list[str] = []

    def script(self, command: str) -> str:
        return "\n".join(["set -e", *self.state, command])

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", self.script(command)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        if SHELL_STATE.match(command):
            self.state.append(command)
        return proc

    def start(self, command: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen(
                ["bash", "--noprofile", "--norc", "-c", self.script(f"exec {command}")],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def check_dev_server(shell: Shell, command: str, log: Path) -> None:
    """`ember dev` runs until stopped: it must print where it listens and answer a job there."""
    proc = shell.start(command, log)
    try:

        def banner() -> re.Match[str] | None:
            assert proc.poll() is None, f"`{command}` exited with {proc.returncode}:\n{log.read_text()}"
            text = log.read_text(errors="replace")
            return re.search(
                r"listening on (http://\S+).*?API key: (\S+).*?/v2/([\w.-]+)/runsync", text, re.S
            )

        found = wait_for(banner, 90, interval_s=0.2, what=f"`{command}` to say where it listens")
        url, key, name = found[1], found[2], found[3]
        resp = httpx.post(
            f"{url}/v2/{name}/runsync",
            json={"input": {"x": 2}},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert resp.status_code == 200 and resp.json()["output"] == {"echo": {"x": 2}}, resp.text
    finally:
        stop(proc)


def check_follower(shell: Shell, command: str, log: Path) -> None:
    """`ember logs -f` follows until stopped: after a while it must still be running, without errors."""
    proc = shell.start(command, log)
    try:
        deadline = time.monotonic() + FOLLOW_S
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # observing that it keeps running for a while is the point here
        assert proc.poll() is None, f"`{command}` exited with {proc.returncode}:\n{log.read_text()}"
    finally:
        stop(proc)
    assert "error" not in log.read_text().lower(), log.read_text()


def test_the_readme_tour_runs_as_written_in_a_fresh_shell(
    make_run: subprocess.Popen[bytes], tour_home: Path, tmp_path: Path
) -> None:
    blocks = tour_blocks()
    assert [b.lang for b in blocks].count("bash") >= 3, "the tour's shell blocks were not found"
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix)  # the tour runs in the checkout, where `make run` made .venv
    shell = Shell(work, tour_home)
    ran: list[str] = []
    for number, block in enumerate(blocks):
        if block.lang == "python":
            first = block.text.splitlines()[0]
            if first.startswith("# ") and first.endswith(".py"):  # a file the reader creates
                path = work / first[2:].strip()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text)
                continue
            snippet = work / f"snippet{number}.py"
            snippet.write_text(block.text)
            commands = [f"python {snippet.name}"]
        else:
            commands = shell_commands(block.text)
        for command in commands:
            log = tmp_path / f"step{len(ran)}.log"
            if LONG_RUNNING.match(command):
                (check_dev_server if command.startswith("ember dev") else check_follower)(shell, command, log)
            else:
                proc = shell.run(command)
                assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
                assert "Traceback" not in proc.stderr, (command, proc.stderr)
                check_output(command, proc.stdout)
            ran.append(command)
    # The tour did what it says: the example answered, the SDK ran jobs, the handler was deployed.
    assert any(c.startswith("source .venv/bin/activate") for c in ran)
    assert any(c.startswith("curl") for c in ran) and any(c.startswith("ember deploy") for c in ran)
    assert any(c.startswith("ember dev") for c in ran)


def check_output(command: str, stdout: str) -> None:
    """What the README says each kind of command shows."""
    if command.startswith("curl"):
        record = json.loads(stdout)
        assert record["status"] == "COMPLETED" and record["output"]["greeting"] == "Hello, Ada!", record
    elif command.startswith("python snippet"):
        assert "Hello, Ada!" in stdout and "Hello, Bob!" in stdout, stdout  # run_sync, then run + output
    elif command.startswith("python my-handler/handler.py"):
        assert '"echo": {"x": 1}' in stdout or "'echo': {'x': 1}" in stdout, stdout
    elif command.startswith("ember deploy"):
        assert "Endpoint my-ep" in stdout and "my-handler/handler.py" in stdout, stdout
    elif command == "ember endpoints":
        assert "my-ep" in stdout and "hello" in stdout, stdout
