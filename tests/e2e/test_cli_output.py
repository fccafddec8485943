"""What the `ember` CLI prints for scripts and for people, against a live server: through a pipe every
table is tab-separated with whole ids (rich used to cut job ids at its 80-column guess), every listing
takes --json, `ember jobs -f` follows new jobs and changes of state, `ember deploy --wait` shows a live
status on a terminal, and shell completion is on."""

from __future__ import annotations

import json
import queue
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import LiveServer, handler_dir, wait_for
from tests.support.terminal import run_on_terminal

EMBER = [sys.executable, "-m", "ember.cli.main"]


def piped_env(server: LiveServer) -> dict[str, str]:
    """The CLI's environment with no width hint: a pipe, as a script's `$(ember jobs)` has it."""
    env = server.cli_env()
    env.pop("COLUMNS", None)
    env.pop("FORCE_COLOR", None)
    return env


def piped(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*EMBER, *args], env=piped_env(server), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def tsv(text: str) -> list[dict[str, str]]:
    """A tab-separated table (header line first) as one dict per row."""
    header, *lines = text.rstrip("\n").split("\n")
    names = header.split("\t")
    rows = [dict(zip(names, line.split("\t"), strict=True)) for line in lines]
    return rows


@pytest.fixture(scope="module")
def echo(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    source = handler_dir(tmp_path_factory.mktemp("out"), "echo")
    return server.deploy("piped-echo", source, workersMax=1, idleTimeout=300)


def test_jobs_through_a_pipe_prints_whole_ids(server: LiveServer, echo: dict[str, Any]) -> None:
    ids = [
        server.api("POST", f"/v2/{echo['id']}/run", json={"input": {"n": n}}).json()["id"] for n in range(3)
    ]
    wait_for(lambda: {j["status"] for j in jobs_json(server, echo)} == {"COMPLETED"}, 60, what="the jobs")
    rows = tsv(piped(server, "jobs", echo["id"]).stdout)
    assert set(ids) <= {r["ID"] for r in rows}, rows
    assert all(len(r["ID"]) == len(ids[0]) for r in rows)
    assert {r["ENDPOINT"] for r in rows} == {echo["id"]}
    assert all(r["WORKER"].startswith("wk-") and "…" not in r["WORKER"] for r in rows), rows
    # A long line is not folded at a guessed width either: one line per row.
    assert len(piped(server, "jobs", echo["id"]).stdout.splitlines()) == len(rows) + 1


def jobs_json(server: LiveServer, endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(piped(server, "jobs", endpoint["id"], "--json").stdout)  # type: ignore[no-any-return]


def test_every_table_prints_whole_values_through_a_pipe(server: LiveServer, echo: dict[str, Any]) -> None:
    server.run_job(echo["id"], {"x": 1})
    [endpoint] = [r for r in tsv(piped(server, "endpoints").stdout) if r["NAME"] == "piped-echo"]
    assert endpoint["ID"] == echo["id"] and endpoint["MAX"] == "1"
    workers = tsv(piped(server, "workers", "piped-echo").stdout)
    assert {w["ID"] for w in workers} == {w["id"] for w in server.workers(echo["id"])}
    assert tsv(piped(server, "releases", "piped-echo").stdout)[0]["SERVING"] == "*"
    usage = tsv(piped(server, "usage", "--endpoint", "piped-echo").stdout.split("\nTotal:")[0] + "\n")
    assert {u["WORKER"] for u in usage} <= {w["id"] for w in server.workers(echo["id"], include_stopped=True)}
    assert tsv(piped(server, "registry", "ls").stdout) == []
    assert tsv(piped(server, "models", "ls").stdout) == []


@pytest.mark.parametrize(
    "args",
    [
        ("endpoints",),
        ("workers", "piped-echo"),
        ("jobs",),
        ("releases", "piped-echo"),
        ("usage",),
        ("balance",),
        ("models", "ls"),
        ("volumes", "ls"),
        ("registry", "ls"),
    ],
)
def test_every_listing_takes_json(server: LiveServer, echo: dict[str, Any], args: tuple[str, ...]) -> None:
    data = json.loads(piped(server, *args, "--json").stdout)
    assert isinstance(data, list | dict)


class Following:
    """`ember ARGS` running with standard output a pipe: its lines as they come, then Ctrl-C."""

    def __init__(self, server: LiveServer, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*EMBER, *args],
            env=piped_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Ctrl-C as a terminal delivers it, whatever the tests were started from (a shell starts a
            # background job with SIGINT ignored, and children inherit that).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self._queue: queue.Queue[str] = queue.Queue()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self._queue.put(line.rstrip("\n"))

    def shows(self, predicate: Callable[[str], bool], what: str) -> str:
        def found() -> str | None:
            while not self._queue.empty():
                self.lines.append(self._queue.get())
            return next((ln for ln in self.lines if predicate(ln)), None)

        return wait_for(found, 60, what=f"{what} in {self.lines}")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)  # it ends at the pipe's end, once the process has gone
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def test_jobs_follow_prints_new_jobs_and_their_changes_until_ctrl_c(
    server: LiveServer, echo: dict[str, Any]
) -> None:
    follow = Following(server, "jobs", echo["id"], "-f")
    try:
        follow.shows(lambda ln: ln.startswith("ID\tENDPOINT\tSTATUS"), "the header")
        job = server.api("POST", f"/v2/{echo['id']}/run", json={"input": {"follow": True}}).json()["id"]
        follow.shows(lambda ln: ln.startswith(f"{job}\t{echo['id']}\tCOMPLETED\twk-"), f"{job} COMPLETED")
        assert all(len(ln.split("\t")) == 6 for ln in follow.lines), follow.lines
        assert follow.interrupt() == 0, "Ctrl-C ends the follow quietly"
    finally:
        follow.close()


def test_jobs_follow_with_json_prints_one_record_per_line(server: LiveServer, echo: dict[str, Any]) -> None:
    follow = Following(server, "jobs", echo["id"], "-f", "--json", "--limit", "5")
    try:
        job = server.api("POST", f"/v2/{echo['id']}/runsync", json={"input": {"j": 1}}).json()
        done = follow.shows(lambda ln: json.loads(ln)["id"] == job["id"], f"{job['id']} as JSON")
        assert json.loads(done)["status"] == "COMPLETED"
        assert follow.interrupt() == 0
    finally:
        follow.close()


def test_deploy_wait_on_a_terminal_shows_the_worker_starting_live(server: LiveServer, tmp_path: Path) -> None:
    source = handler_dir(tmp_path, "echo")
    argv = [*EMBER, "deploy", str(source), "--name", "on-a-tty", "--workers-min", "1", "--workers-max", "1"]
    drawn = run_on_terminal([*argv, "--wait", "--wait-timeout", "120"], server.cli_env(), timeout_s=180)
    assert drawn.returncode == 0, drawn.text + drawn.stderr
    assert "\x1b[" in drawn.raw, "a terminal gets the live status"
    assert "Endpoint on-a-tty created" in drawn.text
    assert "waiting for a worker" in drawn.text or "worker wk-" in drawn.text, drawn.text
    assert "is ready" in drawn.text, drawn.text


def test_shell_completion_is_on() -> None:
    help_text = subprocess.run([*EMBER, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--install-completion" in help_text and "--show-completion" in help_text
    # Run from bash, as a user would: the shell is detected from the parent process, whatever runs the tests.
    script = subprocess.run(
        ["bash", "-c", shlex.join([*EMBER, "--show-completion"])], capture_output=True, text=True, timeout=60
    )
    assert script.returncode == 0, script.stderr
    assert "_EMBER_COMPLETE" in script.stdout and "complete " in script.stdout
