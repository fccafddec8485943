"""Local-process backend behaviours beyond the shared contract: adoption, signals, env, exec, reaping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ember.backends.base import LaunchSpec, Mount, Observed
from ember.backends.local import LocalBackend
from ember.core.errors import BackendError

DEADLINE_S = 15.0

GREETER = """\
import os, signal
print("ready", flush=True)
while True:
    signal.pause()
"""

PRINT_ENV = """\
import os, signal
for name in os.environ["SHOW"].split(","):
    print(name + "=" + os.environ.get(name, "<unset>"), flush=True)
print("ready", flush=True)
while True:
    signal.pause()
"""

IGNORES_SIGTERM = """\
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    signal.pause()
"""

EXITS_ON_SIGTERM = """\
import signal, sys
def bye(signum, frame):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
while True:
    signal.pause()
"""

SPAWNS_GRANDCHILD = """\
import signal, subprocess, sys
stubborn = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.pause()"
child = subprocess.Popen([sys.executable, "-c", stubborn])
print("grandchild", child.pid, flush=True)
print("ready", flush=True)
while True:
    signal.pause()
"""

CRASHES = """\
import sys
print("ready", flush=True)
sys.exit(7)
"""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The backend's home; whatever a test leaves running there is stopped, even when it fails."""
    path = tmp_path / "home"
    yield path
    if path.exists():
        leftover = LocalBackend(path)
        for observed in asyncio.run(leftover.observe()):
            asyncio.run(leftover.stop(observed.worker_id, grace_s=0))


def source(tmp_path: Path, script: str, name: str = "src") -> str:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / "handler.py").write_text(script)
    return str(directory)


def spec(worker_id: str, source_dir: str, **kwargs: object) -> LaunchSpec:
    env = kwargs.pop("env", {"RUNPOD_POD_ID": worker_id})
    return LaunchSpec(
        worker_id=worker_id,
        endpoint_id="ep_a",
        account_id="acct_1",
        release=1,
        env=env,  # type: ignore[arg-type]
        source_dir=source_dir,
        **kwargs,  # type: ignore[arg-type]
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def lines(backend: LocalBackend, worker_id: str) -> list[str]:
    return [line async for line in backend.logs(worker_id)]


async def ready(backend: LocalBackend, worker_id: str) -> list[str]:
    async def check() -> bool:
        return "ready" in await lines(backend, worker_id)

    await eventually(check, f"{worker_id} to be ready")
    return await lines(backend, worker_id)


async def find(backend: LocalBackend, worker_id: str) -> Observed | None:
    return next((o for o in await backend.observe() if o.worker_id == worker_id), None)


def pid_of(home: Path, worker_id: str) -> int:
    return int(json.loads((home / "workers" / worker_id / "meta.json").read_text())["pid"])


def gone(pid: int) -> bool:
    """True when no live process has this pid (a zombie of another parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def test_a_fresh_instance_adopts_running_workers_after_the_first_is_dropped(
    tmp_path: Path, home: Path
) -> None:
    src = source(tmp_path, GREETER)

    async def scenario() -> None:
        first = LocalBackend(home)
        await first.launch(spec("wk_1", src, env={"RUNPOD_POD_ID": "wk_1", "FOO": "bar"}))
        await ready(first, "wk_1")
        pid = pid_of(home, "wk_1")
        del first

        second = LocalBackend(home)
        observed = await find(second, "wk_1")
        assert observed is not None and observed.running and "adopted" in observed.detail
        result = await second.exec("wk_1", ["sh", "-c", 'echo "$FOO"; pwd'])
        assert result.output.decode().split() == ["bar", src]
        await second.launch(spec("wk_1", src))  # still running: a no-op, not a second process
        assert pid_of(home, "wk_1") == pid
        await second.stop("wk_1", grace_s=5)
        assert await second.observe() == []
        await eventually(lambda: _true(gone(pid)), "the adopted process to die")

    asyncio.run(scenario())


async def _true(value: bool) -> bool:
    return value


RESTARTED_CONTROL_PLANE = """\
import asyncio, sys
from pathlib import Path
from ember.backends.base import LaunchSpec
from ember.backends.local import LocalBackend
spec = LaunchSpec(worker_id="wk_1", endpoint_id="ep_a", account_id="acct_1", release=4,
                  env={"RUNPOD_POD_ID": "wk_1"}, source_dir=sys.argv[2])
asyncio.run(LocalBackend(Path(sys.argv[1])).launch(spec))
"""


def test_workers_of_an_exited_control_plane_are_adopted_and_their_death_seen(
    tmp_path: Path, home: Path
) -> None:
    src = source(tmp_path, GREETER)
    subprocess.run(
        [sys.executable, "-c", RESTARTED_CONTROL_PLANE, str(home), src], check=True, timeout=DEADLINE_S
    )

    async def scenario() -> None:
        backend = LocalBackend(home)
        await ready(backend, "wk_1")
        observed = await find(backend, "wk_1")
        assert observed is not None and observed.running and observed.release == 4
        os.kill(pid_of(home, "wk_1"), signal.SIGKILL)

        async def dead() -> bool:
            found = await find(backend, "wk_1")
            return found is not None and not found.running

        await eventually(dead, "the killed worker to be seen dead")
        observed = await find(backend, "wk_1")
        assert observed is not None and observed.exit_code is None  # not our child: code unknown
        await backend.stop("wk_1", grace_s=1)
        assert await backend.observe() == []

    asyncio.run(scenario())


def test_stop_sends_sigterm_first(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, EXITS_ON_SIGTERM)))
        await ready(backend, "wk_1")
        started = time.monotonic()
        await backend.stop("wk_1", grace_s=60)
        assert time.monotonic() - started < 60, "a worker that exits on SIGTERM is not waited for"
        assert (await lines(backend, "wk_1"))[-1] == "got SIGTERM"

    asyncio.run(scenario())


def test_stop_kills_a_worker_that_ignores_sigterm_after_the_grace_period(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, IGNORES_SIGTERM)))
        await ready(backend, "wk_1")
        pid = pid_of(home, "wk_1")
        started = time.monotonic()
        await backend.stop("wk_1", grace_s=0.5)
        assert time.monotonic() - started >= 0.5, "SIGKILL came before the grace period ended"
        assert gone(pid)
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped by the backend
        assert await backend.observe() == []

    asyncio.run(scenario())


def test_stop_kills_the_whole_process_group(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, SPAWNS_GRANDCHILD)))
        log = await ready(backend, "wk_1")
        grandchild = int(next(line for line in log if line.startswith("grandchild")).split()[1])
        assert not gone(grandchild)
        await backend.stop("wk_1", grace_s=0.2)
        await eventually(lambda: _true(gone(grandchild)), "the grandchild to die")

    asyncio.run(scenario())


def test_a_crashed_worker_is_reaped_and_leaves_no_zombie(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, CRASHES)))
        pid = pid_of(home, "wk_1")

        async def exited() -> bool:
            found = await find(backend, "wk_1")
            return found is not None and not found.running

        await eventually(exited, "the crash to be observed")
        observed = await find(backend, "wk_1")
        assert observed is not None and observed.exit_code == 7
        assert (home / "workers" / "wk_1" / "exit_code").read_text() == "7"
        assert not Path(f"/proc/{pid}").exists()
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        await backend.stop("wk_1", grace_s=1)
        assert not (home / "workers" / "wk_1").exists()
        assert "ready" in await lines(backend, "wk_1")

    asyncio.run(scenario())


def test_env_gpus_and_mounts_reach_the_process_and_nothing_else_leaks(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_TEST_CONTROL_PLANE_SECRET", "must-not-leak")
    backend = LocalBackend(home)
    shown = ",".join(
        [
            "FOO",
            "CUDA_VISIBLE_DEVICES",
            "RUNPOD_VOLUME_PATH",
            "EMBER_MOUNT_RUNPOD_VOLUME",
            "EMBER_MOUNT_MODELS_HF",
            "EMBER_TEST_CONTROL_PLANE_SECRET",
            "HOME",
        ]
    )
    launch = spec(
        "wk_1",
        source(tmp_path, PRINT_ENV),
        env={"RUNPOD_POD_ID": "wk_1", "FOO": "bar", "SHOW": shown},
        gpu_devices=("1", "3"),
        mounts=(Mount("/srv/volumes/v1", "/runpod-volume", read_only=False), Mount("/srv/hf", "/models/hf")),
    )

    async def scenario() -> None:
        await backend.launch(launch)
        log = await ready(backend, "wk_1")
        assert "FOO=bar" in log
        assert "CUDA_VISIBLE_DEVICES=1,3" in log
        assert "RUNPOD_VOLUME_PATH=/srv/volumes/v1" in log
        assert "EMBER_MOUNT_RUNPOD_VOLUME=/srv/volumes/v1" in log
        assert "EMBER_MOUNT_MODELS_HF=/srv/hf" in log
        assert "EMBER_TEST_CONTROL_PLANE_SECRET=<unset>" in log
        assert f"HOME={os.environ['HOME']}" in log
        await backend.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_without_devices_cuda_visible_devices_is_not_set(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)
    env = {"RUNPOD_POD_ID": "wk_1", "SHOW": "CUDA_VISIBLE_DEVICES"}

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, PRINT_ENV), env=env))
        assert "CUDA_VISIBLE_DEVICES=<unset>" in await ready(backend, "wk_1")
        await backend.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_exec_runs_in_the_worker_dir_with_its_env_and_interpreter(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)
    src = source(tmp_path, GREETER)
    probe = "import os, sys; print(os.getcwd()); print(os.environ['FOO']); print(sys.executable)"

    async def scenario() -> None:
        await backend.launch(spec("wk_1", src, env={"RUNPOD_POD_ID": "wk_1", "FOO": "bar"}))
        result = await backend.exec("wk_1", ["python", "-c", probe])
        cwd, foo, python = result.output.decode().split()
        assert (result.exit_code, cwd, foo) == (0, src, "bar")
        assert Path(python).parent == Path(sys.executable).parent
        failing = await backend.exec("wk_1", ["sh", "-c", "echo oops >&2; exit 5"])
        assert (failing.exit_code, failing.output) == (5, b"oops\n")
        await backend.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_exec_past_its_timeout_is_killed_with_code_124(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, GREETER)))
        result = await backend.exec("wk_1", ["sh", "-c", "echo started; exec sleep 30"], timeout_s=0.3)
        assert result.exit_code == 124
        assert result.output.startswith(b"started\n") and b"timed out" in result.output
        await backend.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_custom_command_and_interpreter_are_used(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home, python="/no/such/python")
    src = source(tmp_path, GREETER)

    async def scenario() -> None:
        with pytest.raises(BackendError, match="cannot start worker"):
            await backend.launch(spec("wk_bad", src))
        await backend.launch(spec("wk_py", src, python=sys.executable))
        await ready(backend, "wk_py")
        await backend.launch(
            spec("wk_cmd", src, command=["sh", "-c", "echo from-command; echo ready; sleep 30"])
        )
        assert (await ready(backend, "wk_cmd"))[0] == "from-command"
        assert sorted(o.worker_id for o in await backend.observe()) == ["wk_cmd", "wk_py"]
        await backend.stop("wk_py", grace_s=5)
        await backend.stop("wk_cmd", grace_s=5)

    asyncio.run(scenario())


SHOWS_WHERE = """\
import os, signal, sys
from sibling import NAME
print("file=" + os.path.basename(__file__), "cwd=" + os.getcwd(), "sibling=" + NAME, flush=True)
print("ready", flush=True)
while True:
    signal.pause()
"""


def test_a_handler_in_a_subdirectory_runs_from_there_with_its_siblings_importable(
    tmp_path: Path, home: Path
) -> None:
    backend = LocalBackend(home)
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "rp_handler.py").write_text(SHOWS_WHERE)
    (root / "src" / "sibling.py").write_text("NAME = 'next door'\n")

    async def scenario() -> None:
        await backend.launch(spec("wk_src", str(root), handler="src/rp_handler.py"))
        shown = (await ready(backend, "wk_src"))[0]
        assert shown == f"file=rp_handler.py cwd={root / 'src'} sibling=next door"
        result = await backend.exec("wk_src", ["pwd"])
        assert result.output.decode().strip() == str(root / "src")
        await backend.stop("wk_src", grace_s=5)

    asyncio.run(scenario())


def test_bad_launches_are_backend_errors(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)

    async def scenario() -> None:
        with pytest.raises(BackendError, match="does not exist"):
            await backend.launch(spec("wk_1", str(tmp_path / "missing")))
        with pytest.raises(BackendError, match="invalid worker id"):
            await backend.launch(spec("../escape", source(tmp_path, GREETER)))
        with pytest.raises(BackendError, match="neither a source_dir nor a command"):
            await backend.launch(LaunchSpec("wk_2", "ep_a", "acct_1", 1, {}))
        assert await backend.observe() == []

    asyncio.run(scenario())


def test_logs_keep_a_partial_last_line_and_tail_across_chunks(tmp_path: Path, home: Path) -> None:
    backend = LocalBackend(home)
    many = "import sys\nfor i in range(20000): print('line', i)\nsys.stdout.write('no newline')\n"

    async def scenario() -> None:
        await backend.launch(spec("wk_1", source(tmp_path, many)))

        async def exited() -> bool:
            found = await find(backend, "wk_1")
            return found is not None and not found.running

        await eventually(exited, "the writer to finish")
        everything = await lines(backend, "wk_1")
        assert len(everything) == 20001 and everything[-1] == "no newline"
        assert everything[12345] == "line 12345"
        tail = [line async for line in backend.logs("wk_1", tail=3)]
        assert tail == ["line 19998", "line 19999", "no newline"]
        await backend.stop("wk_1", grace_s=1)

    asyncio.run(scenario())
