"""The local backend's sandbox with real bubblewrap: stop() gives the handler its SIGTERM drain and
SIGKILLs everything after the grace period, a new backend instance adopts a sandboxed worker, a mount
at its own path is read-only, and a tenant's worker without bwrap is refused with what to install."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from ember.backends.base import LaunchSpec, Mount
from ember.backends.local import LocalBackend
from ember.backends.sandbox import SandboxConfig, init_pid
from ember.core.errors import BackendError
from ember.core.sandbox import SandboxMode
from tests.conftest import need

HANDLER = """\
import os, signal, sys, time
def drain(signum, frame):
    print("draining", flush=True)
    time.sleep(0.2)
    print("drained", flush=True)
    sys.exit(0)
if os.environ.get("DRAIN") == "1":
    signal.signal(signal.SIGTERM, drain)
elif os.environ.get("DRAIN") == "never":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:
    open(os.environ["CACHE"] + "/x", "w")
    print("cache writable", flush=True)
except OSError as exc:
    print("cache:", exc.strerror, flush=True)
print("ready", os.getuid(), flush=True)
while True:
    time.sleep(0.05)
"""


def _backend(home: Path, mode: SandboxMode = SandboxMode.REQUIRED) -> LocalBackend:
    cfg = SandboxConfig(mode, hidden=(str(home),))
    need("bwrap", cfg.bwrap is not None, "bubblewrap is not installed (apt-get install bubblewrap)")
    return LocalBackend(home, sandbox=cfg)


def _spec(tmp: Path, drain: str) -> LaunchSpec:
    source, cache = tmp / "src", tmp / "cache"
    source.mkdir(exist_ok=True)
    cache.mkdir(exist_ok=True)
    (source / "handler.py").write_text(HANDLER)
    env = {"DRAIN": drain, "CACHE": str(cache)}
    mounts = (Mount(str(cache), str(cache), read_only=True),)
    return LaunchSpec("wk_s", "ep_s", "acct_t", 1, env, source_dir=str(source), mounts=mounts)


async def _log_has(backend: LocalBackend, text: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = backend.log_path("wk_s").read_text() if backend.log_path("wk_s").exists() else ""
        if text in log:
            return log
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{log}")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_stop_drains_on_sigterm_and_a_new_instance_adopts_the_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = _backend(tmp_path / "home")
        await first.launch(_spec(tmp_path, "1"))
        log = await _log_has(first, "ready")
        assert "cache: Read-only file system" in log and f"ready {os.getuid()}" not in log
        second = _backend(tmp_path / "home")  # a control-plane restart
        [observed] = await second.observe()
        assert observed.running and "adopted" in observed.detail
        assert (
            await second.exec("wk_s", ["sh", "-c", "test -f handler.py && echo here"])
        ).output == b"here\n"
        await second.stop("wk_s", grace_s=10)
        assert "drained" in first.log_path("wk_s").read_text()
        assert await second.observe() == []

    asyncio.run(scenario())


def test_a_worker_that_ignores_sigterm_is_killed_whole_after_the_grace(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = _backend(tmp_path / "home")
        await backend.launch(_spec(tmp_path, "never"))
        await _log_has(backend, "ready")
        meta_pid = int(json.loads((tmp_path / "home" / "workers" / "wk_s" / "meta.json").read_text())["pid"])
        init = init_pid(meta_pid)
        assert init is not None
        started = time.monotonic()
        await backend.stop("wk_s", grace_s=1.0)
        assert time.monotonic() - started >= 1.0
        assert not _alive(meta_pid) and not _alive(init)
        assert await backend.observe() == []

    asyncio.run(scenario())


def test_a_tenants_worker_without_bwrap_is_refused_and_the_admins_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = LocalBackend(tmp_path / "home", sandbox=SandboxConfig(SandboxMode.AUTO, bwrap=None))
        with pytest.raises(BackendError, match="apt-get install bubblewrap"):
            await backend.launch(_spec(tmp_path, "0"))
        spec = _spec(tmp_path, "0")
        admin = LaunchSpec(**{**spec.__dict__, "admin": True})
        await backend.launch(admin)
        log = await _log_has(backend, "ready")
        assert "cache writable" in log  # unsandboxed: the host's filesystem as it is
        await backend.stop("wk_s", grace_s=0)

    asyncio.run(scenario())
