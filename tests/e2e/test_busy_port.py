"""A busy port, as a new user meets it: `ember dev` started next to `make run` (which holds the port) serves
on the next free port and says where; an explicit --port that is taken, and `ember server` / `ember up`
on a taken port, end with one line that says what to do, never a traceback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import runpod

from tests.support.live import HANDLERS, free_port, wait_for

DEV_KEY = "ek_dev_local"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on loopback that another server listens on."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        yield int(holder.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "EMBER_HOME": str(tmp_path / "home")}
    for var in ("EMBER_DATABASE_URL", "EMBER_PUBLIC_URL", "EMBER_ADMIN_KEY", "EMBER_PORT"):
        env.pop(var, None)
    env.update(extra)
    return env


def _handler_dir(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    (d / "handler.py").write_text((HANDLERS / "echo.py").read_text())
    return d


def _ember(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ember.cli.main", *args],
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_clear_line(out: subprocess.CompletedProcess[str], port: int) -> str:
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, text
    assert f"127.0.0.1:{port}" in text and "in use" in text and "--port" in text, text
    return text


def test_ember_dev_next_to_a_server_on_its_port_serves_on_the_next_free_one(
    busy_port: int, tmp_path: Path
) -> None:
    source = _handler_dir(tmp_path)
    log_path = tmp_path / "dev.log"
    env = _env(tmp_path, EMBER_PORT=str(busy_port), EMBER_TAKE_HOLD_S="5")  # the port `make run` holds
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ember.cli.main",
                "dev",
                str(source),
                "--home",
                str(tmp_path / "dev-home"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> str | None:
            assert proc.poll() is None, log_path.read_text()
            found = re.search(r"listening on (http://127\.0\.0\.1:(\d+))", log_path.read_text())
            return found.group(1) if found else None

        url = wait_for(listening, 60, what=f"ember dev's URL ({log_path})")
        out = log_path.read_text()
        assert "Traceback" not in out, out
        port = int(url.rsplit(":", 1)[1])
        assert port != busy_port
        assert f"port {busy_port} is in use" in out and f"serves on port {port} instead" in out, out
        assert f"{url}/v2/dev/runsync" in out  # the curl line names the port really served

        saved = runpod.api_key, runpod.endpoint_url_base
        runpod.api_key, runpod.endpoint_url_base = DEV_KEY, f"{url}/v2"
        try:
            assert runpod.Endpoint("dev").run_sync({"x": 1}, timeout=60)["echo"] == {"x": 1}
        finally:
            runpod.api_key, runpod.endpoint_url_base = saved
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()


def test_ember_dev_with_a_taken_explicit_port_says_so_in_one_line(busy_port: int, tmp_path: Path) -> None:
    out = _ember(tmp_path, "dev", str(_handler_dir(tmp_path)), "--port", str(busy_port))
    _one_clear_line(out, busy_port)


@pytest.mark.parametrize("command", ["server", "up"])
def test_ember_server_and_up_on_a_taken_port_say_so_in_one_line(
    busy_port: int, tmp_path: Path, command: str
) -> None:
    out = _ember(tmp_path, command, "--port", str(busy_port))
    _one_clear_line(out, busy_port)
    assert not (tmp_path / "home" / "ember.db").exists()  # nothing was set up for a server that can't serve
    out = _ember(tmp_path, command, EMBER_PORT=str(busy_port))
    _one_clear_line(out, busy_port)


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [("server", "EMBER_SANDBOX", "maybe"), ("up", "EMBER_OUTBOUND_ALLOW", "127.0.0.0/40")],
)
def test_a_bad_setting_is_one_line_naming_its_variable(
    tmp_path: Path, command: str, variable: str, value: str
) -> None:
    out = _ember(tmp_path, command, "--port", "9", **{variable: value})
    text = (out.stdout + out.stderr).strip()
    assert out.returncode == 2 and "Traceback" not in text, text
    assert len(text.splitlines()) == 1 and text.startswith(f"error: {variable}:") and value in text, text
    assert not (tmp_path / "home").exists()
