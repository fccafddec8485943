"""One contract, every backend: the same behaviours hold for the in-memory and local-process backends,
and for local processes inside the sandbox (bubblewrap).

Local workers are tiny handler.py scripts; memory workers are runner coroutines that behave alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from ember.backends.base import Backend, LaunchSpec, Observed
from ember.backends.local import LocalBackend
from ember.backends.memory import MemoryBackend
from ember.backends.sandbox import SandboxConfig
from ember.core.errors import BackendError
from ember.core.sandbox import SandboxMode
from tests.conftest import need

DEADLINE_S = 15.0

# BEHAVIOUR=serve: greet, then wait for a signal. BEHAVIOUR=exit: greet, say bye, exit with EXIT_CODE.
HANDLER = """\
import os, signal, sys
print("hello from " + os.environ["RUNPOD_POD_ID"], flush=True)
if os.environ["BEHAVIOUR"] == "exit":
    print("bye", flush=True)
    sys.exit(int(os.environ.get("EXIT_CODE", "0")))
while True:
    signal.pause()
"""


async def memory_worker(backend: MemoryBackend, spec: LaunchSpec) -> int:
    backend.append_log(spec.worker_id, "hello from " + spec.env["RUNPOD_POD_ID"])
    if spec.env["BEHAVIOUR"] == "exit":
        backend.append_log(spec.worker_id, "bye")
        return int(spec.env.get("EXIT_CODE", "0"))
    await asyncio.Event().wait()
    return 0


class Harness:
    def __init__(self, backend: Backend, source_dir: str | None) -> None:
        self.backend = backend
        self.source_dir = source_dir

    def spec(
        self, worker_id: str, behaviour: str = "serve", *, endpoint_id: str = "ep_a", exit_code: int = 0
    ) -> LaunchSpec:
        env = {"RUNPOD_POD_ID": worker_id, "BEHAVIOUR": behaviour, "EXIT_CODE": str(exit_code)}
        return LaunchSpec(
            worker_id=worker_id,
            endpoint_id=endpoint_id,
            account_id="acct_1",
            release=2,
            env=env,
            source_dir=self.source_dir,
        )


@pytest.fixture(params=["memory", "local", "sandboxed"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "memory":
        holder: list[MemoryBackend] = []
        memory = MemoryBackend(runner=lambda spec: memory_worker(holder[0], spec))
        holder.append(memory)
        yield Harness(memory, None)
        return
    source = tmp_path / "src"
    source.mkdir()
    (source / "handler.py").write_text(HANDLER)
    home = tmp_path / "home"
    sandbox = None
    if request.param == "sandboxed":
        sandbox = SandboxConfig(SandboxMode.REQUIRED, hidden=(str(home),))
        need("bwrap", sandbox.bwrap is not None, "bubblewrap is not installed (apt-get install bubblewrap)")
    local = LocalBackend(home, sandbox=sandbox)
    yield Harness(local, str(source))
    # Leave no process behind whatever the test did.
    for observed in asyncio.run(local.observe()):
        asyncio.run(local.stop(observed.worker_id, grace_s=0))


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def lines_of(backend: Backend, worker_id: str, **kwargs: object) -> list[str]:
    return [line async for line in backend.logs(worker_id, **kwargs)]  # type: ignore[arg-type]


async def find(backend: Backend, worker_id: str) -> Observed | None:
    return next((o for o in await backend.observe() if o.worker_id == worker_id), None)


async def greeted(backend: Backend, worker_id: str) -> None:
    async def check() -> bool:
        return f"hello from {worker_id}" in await lines_of(backend, worker_id)

    await eventually(check, f"{worker_id} to greet")


def test_launched_worker_is_observed_running(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1"))
        observed = await find(b, "wk_1")
        assert observed is not None
        assert (observed.endpoint_id, observed.release, observed.running) == ("ep_a", 2, True)
        assert observed.exit_code is None
        assert observed.started_at is not None
        await b.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_launch_is_idempotent(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1"))
        first = await find(b, "wk_1")
        await b.launch(harness.spec("wk_1"))
        await greeted(b, "wk_1")
        assert [o.worker_id for o in await b.observe()] == ["wk_1"]
        again = await find(b, "wk_1")
        assert again is not None and first is not None
        assert (again.started_at, again.detail, again.running) == (first.started_at, first.detail, True)
        await b.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_observe_filters_by_endpoint(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_a", endpoint_id="ep_a"))
        await b.launch(harness.spec("wk_b", endpoint_id="ep_b"))
        assert [o.worker_id for o in await b.observe("ep_b")] == ["wk_b"]
        assert sorted(o.worker_id for o in await b.observe()) == ["wk_a", "wk_b"]
        assert await b.observe("ep_none") == []
        await b.stop("wk_a", grace_s=5)
        await b.stop("wk_b", grace_s=5)

    asyncio.run(scenario())


def test_stop_forgets_the_worker_and_is_idempotent(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1"))
        await greeted(b, "wk_1")
        await b.stop("wk_1", grace_s=5)
        assert await b.observe() == []
        await b.stop("wk_1", grace_s=5)
        assert await b.observe() == []

    asyncio.run(scenario())


def test_stop_of_an_unknown_worker_is_a_no_op(harness: Harness) -> None:
    async def scenario() -> None:
        await harness.backend.stop("wk_never", grace_s=1)
        assert await harness.backend.observe() == []

    asyncio.run(scenario())


def test_crashed_worker_is_observed_exited_with_its_code(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1", "exit", exit_code=3))

        async def exited() -> bool:
            observed = await find(b, "wk_1")
            assert observed is not None, "an exited worker stays observable until stopped"
            return not observed.running

        await eventually(exited, "the worker to exit")
        observed = await find(b, "wk_1")
        assert observed is not None and observed.exit_code == 3
        assert "3" in observed.detail
        await b.stop("wk_1", grace_s=5)
        assert await b.observe() == []

    asyncio.run(scenario())


def test_exited_worker_is_started_afresh_by_launch(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1", "exit", exit_code=0))

        async def exited() -> bool:
            observed = await find(b, "wk_1")
            return observed is not None and not observed.running

        await eventually(exited, "the worker to exit")
        await b.launch(harness.spec("wk_1", "serve"))
        observed = await find(b, "wk_1")
        assert observed is not None and observed.running and observed.exit_code is None
        await b.stop("wk_1", grace_s=5)

    asyncio.run(scenario())


def test_logs_give_lines_oldest_first_and_tail_the_last_ones(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1", "exit"))
        await eventually(lambda: _has(b, "wk_1", "bye"), "the bye line")
        assert await lines_of(b, "wk_1") == ["hello from wk_1", "bye"]
        assert await lines_of(b, "wk_1", tail=1) == ["bye"]
        assert await lines_of(b, "wk_1", tail=10) == ["hello from wk_1", "bye"]
        assert await lines_of(b, "wk_1", tail=0) == []

    asyncio.run(scenario())


async def _has(backend: Backend, worker_id: str, line: str) -> bool:
    return line in await lines_of(backend, worker_id)


def test_following_logs_ends_when_the_worker_exits(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1", "exit"))
        followed = await asyncio.wait_for(lines_of(b, "wk_1", follow=True), DEADLINE_S)
        assert followed == ["hello from wk_1", "bye"]

    asyncio.run(scenario())


def test_following_logs_of_a_running_worker_ends_when_it_is_stopped(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1"))
        follower = asyncio.create_task(lines_of(b, "wk_1", follow=True))
        await greeted(b, "wk_1")
        assert not follower.done()
        await b.stop("wk_1", grace_s=5)
        assert await asyncio.wait_for(follower, DEADLINE_S) == ["hello from wk_1"]

    asyncio.run(scenario())


def test_following_with_alive_waits_for_the_worker_to_start_and_restart(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        may_start = True
        asked = asyncio.Event()

        async def alive() -> bool:
            asked.set()
            return may_start

        # tail=0: none of the past; but a log that appears while following is all new.
        follower = asyncio.create_task(lines_of(b, "wk_1", follow=True, tail=0, alive=alive))
        await asyncio.wait_for(asked.wait(), DEADLINE_S)  # it waits for a log that is not there yet
        await b.launch(harness.spec("wk_1", "exit"))
        await eventually(lambda: _has(b, "wk_1", "bye"), "the first run's bye")

        async def exited() -> bool:  # a launch while it still runs (after its bye) is a no-op
            observed = await find(b, "wk_1")
            return observed is not None and not observed.running

        await eventually(exited, "the first run to exit")
        assert not follower.done(), "exited, but `alive` says it may start again"
        await b.launch(harness.spec("wk_1", "exit"))

        async def ran_twice() -> bool:
            return (await lines_of(b, "wk_1")).count("bye") == 2

        await eventually(ran_twice, "the second run's bye")
        may_start = False
        assert await asyncio.wait_for(follower, DEADLINE_S) == ["hello from wk_1", "bye"] * 2

    asyncio.run(scenario())


def test_logs_outlive_stop(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1"))
        await greeted(b, "wk_1")
        await b.stop("wk_1", grace_s=5)
        assert "hello from wk_1" in await lines_of(b, "wk_1")

    asyncio.run(scenario())


def test_logs_of_an_unknown_worker_are_an_error(harness: Harness) -> None:
    async def scenario() -> None:
        with pytest.raises(BackendError):
            await lines_of(harness.backend, "wk_never")

    asyncio.run(scenario())


def test_exec_in_a_running_worker_returns_code_and_output(harness: Harness) -> None:
    async def scenario() -> None:
        b = harness.backend
        await b.launch(harness.spec("wk_1"))
        result = await b.exec("wk_1", ["echo", "hi", "there"])
        assert (result.exit_code, result.output) == (0, b"hi there\n")
        assert (await b.exec("wk_1", ["false"])).exit_code == 1
        assert (await b.exec("wk_1", ["no-such-program-xyz"])).exit_code == 127
        await b.stop("wk_1", grace_s=5)
        with pytest.raises(BackendError):
            await b.exec("wk_1", ["true"])

    asyncio.run(scenario())


# -- the memory backend's own helpers (what tests and `ember dev` drive it with) -------------------


def test_memory_worker_times_come_from_the_injected_clock() -> None:
    from ember.control.clock import ManualClock

    async def scenario() -> None:
        clock = ManualClock(start=1000.0)
        backend = MemoryBackend(clock=clock)
        await backend.launch(Harness(backend, None).spec("wk_1"))
        clock.advance(5)
        await backend.launch(Harness(backend, None).spec("wk_2"))
        assert [o.started_at for o in await backend.observe()] == [1000.0, 1005.0]

    asyncio.run(scenario())


def test_memory_crash_ends_a_worker_with_the_given_code_and_wakes_followers() -> None:
    async def scenario() -> None:
        holder: list[MemoryBackend] = []
        backend = MemoryBackend(runner=lambda spec: memory_worker(holder[0], spec))
        holder.append(backend)
        await backend.launch(Harness(backend, None).spec("wk_1"))
        follower = asyncio.create_task(lines_of(backend, "wk_1", follow=True))
        await greeted(backend, "wk_1")
        backend.append_log("wk_1", "about to die")
        backend.crash("wk_1", exit_code=137)
        assert await asyncio.wait_for(follower, DEADLINE_S) == ["hello from wk_1", "about to die"]
        observed = await find(backend, "wk_1")
        assert observed is not None and (observed.running, observed.exit_code) == (False, 137)
        with pytest.raises(BackendError):
            backend.crash("wk_never")

    asyncio.run(scenario())


def test_memory_runner_that_raises_exits_1_with_its_error_in_the_log() -> None:
    async def failing(spec: LaunchSpec) -> None:
        raise RuntimeError("model weights missing")

    async def scenario() -> None:
        backend = MemoryBackend(runner=failing)
        await backend.launch(Harness(backend, None).spec("wk_1"))

        async def exited() -> bool:
            observed = await find(backend, "wk_1")
            return observed is not None and not observed.running

        await eventually(exited, "the failing runner to end")
        assert (await find(backend, "wk_1")).exit_code == 1  # type: ignore[union-attr]
        assert await lines_of(backend, "wk_1") == ["worker failed: RuntimeError: model weights missing"]

    asyncio.run(scenario())


def test_memory_stop_abandons_a_runner_that_ignores_cancellation_after_the_grace() -> None:
    async def scenario() -> None:
        finish = asyncio.Event()

        async def stubborn(spec: LaunchSpec) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await finish.wait()  # ignores the stop until the test lets it go

        backend = MemoryBackend(runner=stubborn)
        await backend.launch(Harness(backend, None).spec("wk_1"))
        await asyncio.sleep(0)
        await backend.stop("wk_1", grace_s=0.05)
        assert await backend.observe() == []
        finish.set()

    asyncio.run(scenario())
