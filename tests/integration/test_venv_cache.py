"""Per-endpoint virtualenv cache: built once per requirements, pins first, ember still importable."""

from __future__ import annotations

import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ember.build.venv import BUILDS_LOG, ensure_venv, find_requirements
from ember.core.errors import BuildError
from tests.conftest import need


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def project(tmp_path: Path, name: str, requirements: str | None) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "handler.py").write_text("print('hi')\n")
    if requirements is not None:
        (directory / "requirements.txt").write_text(requirements)
    return directory


def run_python(python: str, code: str) -> str:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_no_requirements_means_the_control_plane_python(tmp_path: Path) -> None:
    assert ensure_venv(project(tmp_path, "app", None), tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()


def test_concurrent_calls_build_one_venv_whose_pins_win_and_that_imports_ember(tmp_path: Path) -> None:
    need("pypi", pypi_reachable(), "installing six needs the PyPI index")
    source = project(tmp_path, "app", "six==1.16.0\n")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: ensure_venv(source, cache), range(2)))
    python = results[0]
    assert python is not None and results == [python, python]
    assert len((cache / BUILDS_LOG).read_text().splitlines()) == 1
    venv = Path(python).parent.parent
    assert venv.parent == cache and not list(cache.glob(".build-*"))

    probe = "import six, ember, runpod; print(six.__version__); print(six.__file__); print(ember.__name__)"
    version, six_file, ember_name = run_python(python, probe).splitlines()
    assert version == "1.16.0", "the requirement's version must win over the control plane's"
    assert Path(six_file).is_relative_to(venv)
    assert ember_name == "ember"
    activate = (venv / "bin" / "activate").read_text()
    assert str(venv) in activate and ".build-" not in activate

    # Same requirements elsewhere: the cached venv, no second build.
    other = project(tmp_path, "other", "six==1.16.0\n")
    assert ensure_venv(other, cache) == python
    assert len((cache / BUILDS_LOG).read_text().splitlines()) == 1


def test_a_failed_build_raises_with_the_log_tail_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = project(tmp_path, "app", "this is not a requirement ===\n")
    cache = tmp_path / "cache"
    lines: list[str] = []
    with pytest.raises(BuildError) as caught:
        ensure_venv(source, cache, on_output=lines.append)
    assert "requirements.txt" in caught.value.message
    assert "this is not a requirement" in caught.value.log_tail
    assert lines, "pip's output is streamed to on_output"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []

    # The lock was released: fixing the file builds at once (an empty requirements file needs no
    # index), and relative paths are taken from the caller's directory, not the build's.
    (source / "requirements.txt").write_text("# nothing pinned\n")
    monkeypatch.chdir(tmp_path)
    python = ensure_venv(Path("app"), Path("cache"))
    assert python is not None and Path(python).is_absolute() and Path(python).parent.parent.parent == cache
    assert run_python(python, "import ember, runpod; print('ok')") == "ok"


def test_requirements_are_found_where_runpod_templates_keep_them(tmp_path: Path) -> None:
    """builder/requirements.txt (RunPod's worker template) or src/requirements.txt (beside src/handler.py),
    when the root has none; the root's file wins when there are several. Empty files need no index."""
    assert find_requirements(project(tmp_path, "none", None)) is None
    template = project(tmp_path, "template", None)
    (template / "builder").mkdir()
    (template / "builder" / "requirements.txt").write_text("# builder\n")
    assert find_requirements(template) == "builder/requirements.txt"
    python = ensure_venv(template, tmp_path / "cache")
    assert python is not None and run_python(python, "import runpod; print('ok')") == "ok"
    beside = project(tmp_path, "beside", None)
    (beside / "src").mkdir()
    (beside / "src" / "requirements.txt").write_text("# src\n")
    assert find_requirements(beside) == "src/requirements.txt"
    (beside / "requirements.txt").write_text("# root\n")
    assert find_requirements(beside) == "requirements.txt"
