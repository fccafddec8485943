"""FlashBoot in the local backend itself (no control plane): a release's first plain start reports its
modules through the fd it was given, a template imports them and later workers are forked from it,
each with its own identity, its exit code observed; an import that starts a thread makes the release
unfit (plain starts); at most `templates_max` templates run; a retired template outlives its last
worker only. Real processes; the handlers report with the SDK's own `report_modules`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.backends.base import LaunchSpec
from ember.backends.local import LocalBackend

DEADLINE_S = 60.0

# Reports its modules when asked (as Ember's SDK does on its first job), says who it is, then waits;
# a worker whose id ends in "-exit" exits with 3 instead.
HANDLER = """\
import colorsys, os, sys, time
if "EMBER_MODULES_FD" in os.environ:
    from ember.serverless.main import report_modules
    report_modules(int(os.environ.pop("EMBER_MODULES_FD")))
me = os.environ["RUNPOD_POD_ID"]
print("worker", me, os.getppid(), "colorsys" in sys.modules, flush=True)
if me.endswith("-exit"):
    sys.exit(3)
time.sleep(60)
"""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "runtime"
    yield path
    leftover = LocalBackend(path)
    for observed in asyncio.run(leftover.observe()):
        asyncio.run(leftover.stop(observed.worker_id, grace_s=0))


def source(tmp_path: Path, name: str, script: str = HANDLER) -> str:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "handler.py").write_text(script)
    return str(directory)


def spec(worker_id: str, src: str, endpoint: str = "ep_a", **env: str) -> LaunchSpec:
    return LaunchSpec(
        worker_id=worker_id,
        endpoint_id=endpoint,
        account_id="acct_1",
        release=1,
        env={"RUNPOD_POD_ID": worker_id, "RUNPOD_AI_API_KEY": f"key-{worker_id}", **env},
        source_dir=src,
    )


async def eventually(check: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def templates(home: Path, endpoint: str = "ep_a") -> list[dict[str, Any]]:
    found = []
    for meta in (home / "templates").glob("*/meta.json"):
        info = json.loads(meta.read_text())
        if info["endpoint_id"] == endpoint:
            found.append(info)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


async def learned(backend: LocalBackend, home: Path, src: str, endpoint: str = "ep_a") -> dict[str, Any]:
    """A first, plain worker teaches the release's template; its ready template's meta."""
    await backend.launch(spec(f"{endpoint}-first", src, endpoint))

    async def ready() -> dict[str, Any] | None:
        await backend.observe()  # takes the report and starts the template
        return next((t for t in templates(home, endpoint) if t["state"] == "ready"), None)

    deadline = time.monotonic() + DEADLINE_S
    while (template := await ready()) is None:
        assert time.monotonic() < deadline, "no template became ready"
        await asyncio.sleep(0.05)
    await backend.stop(f"{endpoint}-first", grace_s=0)
    return template


def log_of(home: Path, worker_id: str) -> str:
    return (home / "logs" / f"{worker_id}.log").read_text()


def meta_of(home: Path, worker_id: str) -> dict[str, Any]:
    return dict(json.loads((home / "workers" / worker_id / "meta.json").read_text()))


def test_later_workers_are_forked_from_the_template_the_first_one_taught(tmp_path: Path, home: Path) -> None:
    src = source(tmp_path, "src")

    async def scenario() -> None:
        backend = LocalBackend(home, templates_max=2)
        template = await learned(backend, home, src)
        assert "colorsys" in (home / "templates" / template["key"] / "modules").read_text().split()
        for worker in ("wk-1", "wk-2"):
            await backend.launch(spec(worker, src))
        for worker in ("wk-1", "wk-2"):
            line = await eventually(lambda w=worker: "worker " in log_of(home, w) and log_of(home, w), worker)
            assert f"[ember] forking from template {template['key']}" in line
            # Its own id and parent (the template), with the handler's import already done there.
            assert f"worker {worker} {template['pid']} True" in line
            meta = meta_of(home, worker)
            assert meta["template"] == {"key": template["key"], "pid": template["pid"]}
            environ = Path(f"/proc/{meta['pid']}/environ").read_bytes().split(b"\0")
            assert f"RUNPOD_AI_API_KEY=key-{worker}".encode() in environ
            observed = [o for o in await backend.observe() if o.worker_id == worker][0]
            assert observed.running and "forked from template" in observed.detail
        result = await backend.exec("wk-1", ["sh", "-c", "echo $RUNPOD_POD_ID; pwd"])
        assert result.output.decode().split() == ["wk-1", src]
        await backend.launch(spec("wk-3-exit", src))
        await eventually(lambda: "worker wk-3-exit" in log_of(home, "wk-3-exit"), "wk-3-exit")

        async def exited() -> Any:
            found = [o for o in await backend.observe() if o.worker_id == "wk-3-exit"]
            return found and not found[0].running and found[0]

        deadline = time.monotonic() + DEADLINE_S
        while not (done := await exited()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert done.exit_code == 3  # reported by the template, its parent
        for worker in ("wk-1", "wk-2", "wk-3-exit"):
            await backend.stop(worker, grace_s=1)
        await backend.aclose()
        await eventually(lambda: not alive(template["pid"]), "the retired template to exit")

    asyncio.run(scenario())


def test_an_import_that_starts_a_thread_leaves_the_release_to_plain_starts(
    tmp_path: Path, home: Path
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "spinner.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    src = source(tmp_path, "src", "import spinner\n" + HANDLER)

    async def scenario() -> None:
        backend = LocalBackend(home, templates_max=2)
        await backend.launch(spec("wk-first", src, PYTHONPATH=str(lib)))

        async def unfit() -> list[Path]:
            await backend.observe()
            return list((home / "templates").glob("*/unfit"))

        deadline = time.monotonic() + DEADLINE_S
        while not (marks := await unfit()):
            assert time.monotonic() < deadline, "the template was not found unfit"
            await asyncio.sleep(0.05)
        assert "threads" in marks[0].read_text()
        await backend.launch(spec("wk-2", src, PYTHONPATH=str(lib)))
        line = await eventually(
            lambda: "worker wk-2" in log_of(home, "wk-2") and log_of(home, "wk-2"), "wk-2"
        )
        assert "forking" not in line and meta_of(home, "wk-2")["template"] is None
        for worker in ("wk-first", "wk-2"):
            await backend.stop(worker, grace_s=0)
        await backend.aclose()

    asyncio.run(scenario())


def test_at_most_templates_max_run_and_a_retired_one_outlives_only_its_workers(
    tmp_path: Path, home: Path
) -> None:
    src_a, src_b = source(tmp_path, "a"), source(tmp_path, "b")

    async def scenario() -> None:
        backend = LocalBackend(home, templates_max=1)
        first = await learned(backend, home, src_a, "ep_a")
        await backend.launch(spec("wk-a", src_a, "ep_a"))  # forked from A's template
        await eventually(lambda: "worker wk-a" in log_of(home, "wk-a"), "wk-a")
        assert meta_of(home, "wk-a")["template"]["pid"] == first["pid"]
        second = await learned(backend, home, src_b, "ep_b")  # B's template retires A's, the older
        assert second["pid"] != first["pid"]
        await asyncio.sleep(0.5)
        assert alive(first["pid"])  # retired, but its worker still runs
        await backend.launch(spec("wk-a2", src_a, "ep_a"))  # no template of A's: a plain start
        await eventually(lambda: "worker wk-a2" in log_of(home, "wk-a2"), "wk-a2")
        assert meta_of(home, "wk-a2")["template"] is None
        await backend.stop("wk-a", grace_s=1)
        await eventually(lambda: not alive(first["pid"]), "the retired template to exit")
        for worker in ("wk-a2",):
            await backend.stop(worker, grace_s=0)
        await backend.aclose()
        await eventually(lambda: not alive(second["pid"]), "B's template to exit at close")

    asyncio.run(scenario())


def test_a_handler_without_the_report_keeps_plain_starts(tmp_path: Path, home: Path) -> None:
    src = source(tmp_path, "src", "import os, time\nprint('worker', flush=True)\ntime.sleep(60)\n")

    async def scenario() -> None:
        backend = LocalBackend(home, templates_max=2)
        await backend.launch(spec("wk-1", src))
        await eventually(lambda: "worker" in log_of(home, "wk-1"), "wk-1")
        await backend.observe()
        await backend.stop("wk-1", grace_s=0)
        assert not list((home / "templates").glob("*/report-*"))  # its report will not come: dropped
        await backend.launch(spec("wk-2", src))
        await eventually(lambda: "worker" in log_of(home, "wk-2"), "wk-2")
        assert meta_of(home, "wk-2")["template"] is None and templates(home) == []
        await backend.stop("wk-2", grace_s=0)
        await backend.aclose()

    asyncio.run(scenario())


def test_templates_are_off_with_templates_max_zero(tmp_path: Path, home: Path) -> None:
    src = source(tmp_path, "src")

    async def scenario() -> None:
        backend = LocalBackend(home, templates_max=0)
        await backend.launch(spec("wk-1", src))
        await eventually(lambda: "worker" in log_of(home, "wk-1"), "wk-1")
        env = Path(f"/proc/{meta_of(home, 'wk-1')['pid']}/environ").read_bytes()
        assert b"EMBER_MODULES_FD" not in env and not (home / "templates").exists()
        await backend.stop("wk-1", grace_s=0)

    asyncio.run(scenario())
    assert os.path.isdir(home / "workers")
