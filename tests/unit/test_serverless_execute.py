"""Running one job through each kind of handler (sync, async, generators), in-process."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from ember.serverless.execute import AsyncBridge, Identity, JobCancelled, JobRun, execute, looks_async

IDENTITY = Identity(hostname="host-a", worker_id="wk-1", version="0.1.0")
WAIT_S = 10.0


@pytest.fixture(scope="module")
def bridge():
    return AsyncBridge()


def run_job(handler, bridge, *, job=None, aggregate=False, on_chunk=None):
    chunks = []
    run = JobRun(job or {"id": "j1", "input": {"a": 1}})

    def emit(chunk):
        chunks.append(chunk)
        if on_chunk is not None:
            on_chunk(run, chunk)

    result = execute(handler, run, bridge=bridge, identity=IDENTITY, emit_chunk=emit, aggregate=aggregate)
    return result, chunks


def test_sync_handler_gets_the_whole_job_and_its_return_is_wrapped(bridge):
    job = {"id": "j1", "input": {"a": 1}, "webhook": "http://x", "s3Config": {"b": 2}}
    (body, is_stream), chunks = run_job(lambda job: {"keys": sorted(job)}, bridge, job=job)
    assert body == {"output": {"keys": ["id", "input", "s3Config", "webhook"]}}
    assert not is_stream and chunks == []


def test_raising_handler_reports_type_message_and_a_traceback_starting_in_user_code(bridge):
    def handler(job):
        raise ValueError("boom")

    (body, _), _ = run_job(handler, bridge)
    info = json.loads(body["error"])
    assert info["error_type"] == "<class 'ValueError'>" and info["error_message"] == "boom"
    assert (info["hostname"], info["worker_id"]) == ("host-a", "wk-1")
    first_frame = info["error_traceback"].splitlines()[1]
    assert "test_serverless_execute.py" in first_frame and "in handler" in first_frame


def test_async_handler_runs_on_the_loop(bridge):
    async def handler(job):
        await asyncio.sleep(0)
        return {"got": job["input"]}

    (body, is_stream), _ = run_job(handler, bridge)
    assert body == {"output": {"got": {"a": 1}}} and not is_stream


def test_plain_function_returning_a_coroutine_is_awaited(bridge):
    async def inner():
        return "late"

    (body, _), _ = run_job(lambda job: inner(), bridge)
    assert body == {"output": "late"}


def test_async_handler_exception_is_reported(bridge):
    async def handler(job):
        raise KeyError("missing")

    (body, _), _ = run_job(handler, bridge)
    assert json.loads(body["error"])["error_type"] == "<class 'KeyError'>"


def test_sync_generator_streams_every_chunk_in_order(bridge):
    def handler(job):
        yield from ({"i": i} for i in range(3))

    (body, is_stream), chunks = run_job(handler, bridge)
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert body == {"output": []} and is_stream


def test_generator_output_is_aggregated_when_asked(bridge):
    def handler(job):
        yield from range(3)

    (body, _), _ = run_job(handler, bridge, aggregate=True)
    assert body == {"output": [0, 1, 2]}


def test_async_generator_streams_and_aggregates(bridge):
    async def handler(job):
        for i in range(3):
            await asyncio.sleep(0)
            yield i

    (body, is_stream), chunks = run_job(handler, bridge, aggregate=True)
    assert chunks == [0, 1, 2] and body == {"output": [0, 1, 2]} and is_stream


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_error_chunk_ends_the_stream_unsent_and_closes_the_generator(bridge, kind):
    closed = []

    def sync_handler(job):
        try:
            yield 1
            yield {"error": "chunk err", "other": 1}
            yield 3
        finally:
            closed.append(True)

    async def async_handler(job):
        try:
            yield 1
            yield {"error": "chunk err", "other": 1}
            yield 3
        finally:
            closed.append(True)

    handler = sync_handler if kind == "sync" else async_handler
    (body, is_stream), chunks = run_job(handler, bridge, aggregate=True)
    assert chunks == [1] and body == {"error": "chunk err"} and is_stream
    assert closed == [True]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_generator_raising_sends_its_chunks_then_a_plain_string_error(bridge, kind):
    def sync_handler(job):
        yield 1
        raise RuntimeError("gen boom")

    async def async_handler(job):
        yield 1
        raise RuntimeError("gen boom")

    (body, _), chunks = run_job(sync_handler if kind == "sync" else async_handler, bridge)
    assert chunks == [1]
    assert body["error"].startswith("handler: gen boom \ntraceback: Traceback")
    assert "RuntimeError: gen boom" in body["error"]


def test_stopping_an_async_handler_cancels_its_task(bridge):
    started = threading.Event()
    saw_cancel = threading.Event()

    async def handler(job):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    run = JobRun({"id": "j1", "input": None})
    stopper_result = []

    def stopper():
        if started.wait(WAIT_S):
            stopper_result.append(run.cancel())

    thread = threading.Thread(target=stopper)
    thread.start()
    with pytest.raises(JobCancelled):
        execute(handler, run, bridge=bridge, identity=IDENTITY, emit_chunk=lambda c: None, aggregate=False)
    thread.join(WAIT_S)
    assert stopper_result == [True]
    assert saw_cancel.wait(WAIT_S)


def test_stopping_a_sync_generator_takes_effect_at_the_next_chunk(bridge):
    def handler(job):
        yield from range(100)

    with pytest.raises(JobCancelled):
        run_job(handler, bridge, on_chunk=lambda run, chunk: run.cancel())


def test_a_stop_for_a_sync_handler_is_remembered_but_cannot_interrupt():
    run = JobRun({"id": "j1", "input": None})
    assert run.cancel() is False
    assert run.cancel_requested


def test_looks_async_recognizes_coroutine_and_async_generator_functions():
    async def coroutine_fn(job):
        return None

    async def async_gen_fn(job):
        yield None

    def sync_fn(job):
        return None

    class Handler:
        async def __call__(self, job):
            return None

        async def method(self, job):
            return None

    assert looks_async(coroutine_fn) and looks_async(async_gen_fn) and looks_async(Handler().method)
    assert not looks_async(sync_fn) and not looks_async(print)
