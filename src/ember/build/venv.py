"""Per-endpoint virtualenvs for the local backend, built once per requirements.txt and cached on disk.
The requirements file is the first of REQUIREMENTS_CANDIDATES: at the source's root, or where RunPod's
worker templates keep it (`builder/`, or `src/` beside the handler).

A cached venv sees its own packages first and the control plane's (ember, runpod, …) after them. It is
built in a temporary directory and renamed into place, so a half-built venv is never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ember.core.errors import BuildError
from ember.fsmodes import readable_tree

REQUIREMENTS_CANDIDATES = ("requirements.txt", "builder/requirements.txt", "src/requirements.txt")
MARKER = "ember-venv.json"
BUILDS_LOG = "builds.log"
_LOG_TAIL_LINES = 40
_LOCK_POLL_S = 0.1
_LOCK_SLACK_S = 60.0


def parent_paths() -> list[str]:
    """Where the control plane's packages live: its site-packages, plus wherever ember and runpod
    were imported from when that is elsewhere (a source checkout on PYTHONPATH)."""
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and os.path.isdir(user_site):
        paths.append(user_site)
    for module in ("ember", "runpod"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            root = str(Path(spec.origin).resolve().parent.parent)
            if root not in paths and not any(root == str(Path(p).resolve()) for p in paths):
                paths.append(root)
    return paths


def venv_key(requirements: bytes, parents: list[str]) -> str:
    """The cache key: the requirements' bytes, this interpreter's version and the parent paths."""
    digest = hashlib.sha256()
    for part in (b"ember-venv-v1", requirements, sys.version.encode(), "\n".join(parents).encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def ensure_venv(
    source_dir: Path,
    cache_dir: Path,
    *,
    timeout_s: float = 900.0,
    on_output: Callable[[str], None] | None = None,
    on_build: Callable[[], None] | None = None,
) -> str | None:
    """The python of a virtualenv with `source_dir/requirements.txt` installed, or None without one.

    Cached under `cache_dir` by the requirements' content and the interpreter version; concurrent
    calls (threads or processes) build it once. `on_build` is called once, before anything else, when
    the venv is not cached yet (this call builds it or waits for another call's build); `on_output`
    receives pip's output lines as they come. Both are called on the calling thread.
    Raises BuildError (with the tail of pip's output) when the install fails or runs past `timeout_s`.
    Blocking: call it from a thread in async code.
    """
    source_dir, cache_dir = Path(source_dir).resolve(), Path(cache_dir).resolve()
    requirements_file = find_requirements(source_dir)
    if requirements_file is None:
        return None
    requirements = (source_dir / requirements_file).read_bytes()
    parents = parent_paths()
    key = venv_key(requirements, parents)
    final = cache_dir / key
    if (final / MARKER).is_file():
        return str(final / "bin" / "python")
    if on_build is not None:
        on_build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "a") as lock_file:
        _lock(lock_file, timeout_s + _LOCK_SLACK_S, key)
        try:
            if not (final / MARKER).is_file():  # built by whoever held the lock before us
                _build(source_dir, requirements_file, cache_dir, key, parents, timeout_s, on_output)
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
    return str(final / "bin" / "python")


def _lock(lock_file: TextIO, timeout_s: float, key: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise BuildError(f"timed out waiting for another build of virtualenv {key}")
            time.sleep(_LOCK_POLL_S)


def find_requirements(source_dir: Path) -> str | None:
    """The source's requirements file, relative to it: the first of REQUIREMENTS_CANDIDATES there."""
    return next((c for c in REQUIREMENTS_CANDIDATES if (source_dir / c).is_file()), None)


def _build(
    source_dir: Path,
    requirements_file: str,
    cache_dir: Path,
    key: str,
    parents: list[str],
    timeout_s: float,
    on_output: Callable[[str], None] | None,
) -> None:
    for stale in cache_dir.glob(f".build-{key}-*"):  # left by a build that died; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = cache_dir / f".build-{key}-{uuid.uuid4().hex[:8]}"
    final = cache_dir / key
    log_path = tmp / "build.log"
    try:
        creating = [sys.executable, "-m", "venv", "--without-pip", "--prompt", f"ember-{key[:8]}", str(tmp)]
        _run("creating the virtualenv", creating, source_dir, None, timeout_s, None)
        python = tmp / "bin" / "python"
        install = ["install", "--no-input", "--disable-pip-version-check", "-r", requirements_file]
        if importlib.util.find_spec("pip") is not None:
            command = [sys.executable, "-m", "pip", "--python", str(python), *install]
        else:  # the control plane has no pip: give the venv its own
            ensurepip = [str(python), "-m", "ensurepip"]
            _run("installing pip", ensurepip, source_dir, log_path, timeout_s, on_output)
            command = [str(python), "-m", "pip", *install]
        what = f"installing {source_dir / requirements_file}"
        _run(what, command, source_dir, log_path, timeout_s, on_output)
        site_packages = tmp / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        # Lines of a .pth are appended to sys.path after the venv's own site-packages, so the pinned
        # requirements win; addsitedir also runs the parent's .pth files (editable installs).
        (site_packages / "zz-ember-parent.pth").write_text(
            "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
        )
        _retarget(tmp, final)
        marker = {"key": key, "python": sys.version, "parents": parents, "built_at": time.time()}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        readable_tree(tmp)  # sandboxed workers run it as uids of their own
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(cache_dir / BUILDS_LOG, "a") as builds:
        builds.write(f"{time.time():.3f} {key} {source_dir}\n")


def _retarget(tmp: Path, final: Path) -> None:
    """Point scripts and pyvenv.cfg at the final location before the rename makes it real."""
    old, new = str(tmp).encode(), str(final).encode()
    for path in [*(tmp / "bin").iterdir(), tmp / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


def _run(
    what: str,
    command: list[str],
    cwd: Path,
    log_path: Path | None,
    timeout_s: float,
    on_output: Callable[[str], None] | None,
) -> None:
    """Run one build step, appending its output to `log_path`; BuildError with the tail on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_USER")}
    env["PIP_NO_INPUT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # pip's lines reach `on_output` (a worker's log) as they are printed
    tail: list[str] = []
    try:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise BuildError(f"{what}: cannot run {command[0]}: {exc}")
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, expire)
    timer.start()
    try:
        with open(log_path or os.devnull, "a") as log:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail = [*tail[-(_LOG_TAIL_LINES - 1) :], line.rstrip("\n")]
                log.write(line)
                if on_output is not None:
                    on_output(line.rstrip("\n"))
        proc.stdout.close()
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        reason = f"timed out after {timeout_s:g}s" if timed_out.is_set() else f"failed (exit code {code})"
        raise BuildError(f"{what} {reason}", "\n".join(tail))
