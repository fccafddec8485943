"""The light install (no extras) gives a worker SDK and client that load no server dependency.

Builds a clean virtualenv, installs the project with `--no-deps -e .` plus httpx from PyPI, and
inspects `sys.modules` after importing `ember.serverless` (and the modules `start` loads) and `ember.client`.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

import pytest

from tests.conftest import need

REPO = Path(__file__).resolve().parents[2]
SERVER_MODULES = ("fastapi", "sqlalchemy", "pydantic", "starlette", "uvicorn", "alembic", "docker", "typer")
INSTALL_TIMEOUT_S = 600

PROBE = """
import json, sys
import ember.serverless
after_sdk = sorted(sys.modules)
import ember.serverless.main, ember.serverless.worker, ember.serverless.local
after_start_path = sorted(sys.modules)
import ember.client
print(json.dumps({"sdk": after_sdk, "start": after_start_path, "client": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def light_python(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("light-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    steps = [
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)],
        [str(python), "-m", "pip", "install", "-q", "httpx"],
    ]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        reachable = "Could not find a version" not in proc.stderr and "NewConnectionError" not in proc.stderr
        need("pypi", reachable, "pip could not reach PyPI to build the light install")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return python


def probe(python: Path) -> dict[str, list[str]]:
    proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def loaded_server_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in SERVER_MODULES]


def test_light_install_has_no_server_dependencies(light_python):
    installed = subprocess.run(
        [str(light_python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=120
    )
    names = {pkg["name"].lower() for pkg in json.loads(installed.stdout)}
    assert "httpx" in names and "ember-serverless" in names
    assert not names & set(SERVER_MODULES)


def test_import_of_the_worker_sdk_loads_no_server_module(light_python):
    modules = probe(light_python)
    assert "ember.serverless" in modules["sdk"]
    assert loaded_server_modules(modules["sdk"]) == []
    assert loaded_server_modules(modules["start"]) == []


def test_worker_sdk_loads_no_http_client_library_and_no_other_ember_package(light_python):
    modules = probe(light_python)["start"]
    assert not [m for m in modules if m.split(".")[0] in ("httpx", "requests", "aiohttp", "urllib3")]
    ember_parts = {m.split(".")[1] for m in modules if m.startswith("ember.")}
    assert ember_parts == {"serverless"}


def test_client_loads_httpx_but_no_server_module(light_python):
    modules = probe(light_python)["client"]
    assert "httpx" in modules
    assert loaded_server_modules(modules) == []
    assert not [m for m in modules if m.startswith("ember.core")]


def test_the_light_install_runs_a_handler_locally(light_python, tmp_path):
    handler = REPO / "tests" / "handlers" / "echo.py"
    proc = subprocess.run(
        [str(light_python), str(handler), "--test_input", '{"input": {"x": 1}}'],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"output": {"echo": {"x": 1}, "keys": ["id", "input"]}}
