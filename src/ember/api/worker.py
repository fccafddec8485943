"""The RunPod worker protocol under /v2/{endpoint_id}/ (spec §1): job-take (long poll), job-take-batch,
job-done (raw body, any content type), job-stream, ping, job-stop (long poll). Worker keys only."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api.deps import Runtime, hold_clock, read_json, runtime, worker_caller
from ember.api.errors import json_response
from ember.core import jobs as J
from ember.core.errors import Conflict, InvalidInput, NotFound
from ember.core.wire import worker_job
from ember.core.workers import TAKES_JOBS, WorkerState

router = APIRouter(prefix="/v2/{endpoint_id}", tags=["worker protocol"])

NO_CONTENT = Response(status_code=204)
_TAKING = {s.value for s in TAKES_JOBS}
RESULT_LIMIT_BYTES = 64 * 1024 * 1024


async def _mark_seen(rt: Runtime, worker: Any, now: float, *, ready: bool = True) -> Any:
    """Refresh last_seen_at (at most once a second). With `ready`, first contact also makes an
    INITIALIZING worker IDLE (a take that gets a job at once makes it RUNNING instead)."""
    if ready and worker["state"] == WorkerState.INITIALIZING.value:
        await rt.store.run(
            rt.store.workers.transition,
            worker["id"],
            WorkerState.IDLE,
            now,
            "ready",
            last_seen_at=now,
            idle_since=now,
        )
        rt.signals.reconcile.set()
        return await rt.store.run(rt.store.workers.get, worker["id"])
    if worker["last_seen_at"] is None or now - worker["last_seen_at"] >= 1.0:
        await rt.store.run(rt.store.workers.update, worker["id"], last_seen_at=now)
    return worker


async def _heard_from(rt: Runtime, worker_id: str, now: float) -> None:
    """Refresh a worker's last_seen_at, at most once a second, without reading its record."""
    if now - rt.heard.get(worker_id, 0.0) >= 1.0:
        rt.heard[worker_id] = now
        await rt.store.run(rt.store.workers.update, worker_id, last_seen_at=now)


async def _worker(request: Request, endpoint_id: str, worker_id: str) -> tuple[Runtime, Any]:
    rt = runtime(request)
    worker_caller(request, endpoint_id, worker_id)
    worker = await rt.store.run(rt.store.workers.get, worker_id)
    if worker is None or worker["endpoint_id"] != endpoint_id:
        raise NotFound(f"worker {worker_id!r} is not known on endpoint {endpoint_id!r}")
    return rt, worker


async def _take(request: Request, endpoint_id: str, worker_id: str, limit: int) -> Response:
    rt, worker = await _worker(request, endpoint_id, worker_id)
    worker = await _mark_seen(rt, worker, rt.clock.now(), ready=False)
    deadline = hold_clock() + rt.limits.take_hold_s
    first = True
    while True:
        if worker["state"] not in _TAKING or worker["recycle"]:
            # Outdated, stopping or recycled workers take no new job: hold, then say "nothing".
            await rt.signals.stops.wait("retire:" + worker_id, max(0.0, deadline - hold_clock()))
            return NO_CONTENT
        now = rt.clock.now()
        was_running = worker["state"] == WorkerState.RUNNING.value
        claimed = await rt.store.run(
            rt.store.take, endpoint_id, worker_id, limit, now, mark_running=not was_running
        )
        if claimed:
            if limit == 1 and not request.url.path.endswith("-batch/" + worker_id):
                body = worker_job(claimed[0].id, claimed[0].input_json, claimed[0].extra_json)
            else:
                body = "[" + ",".join(worker_job(c.id, c.input_json, c.extra_json) for c in claimed) + "]"
            return Response(body, media_type="application/json")
        if first:
            first = False
            if worker["state"] == WorkerState.INITIALIZING.value:
                worker = await _mark_seen(rt, worker, now)
            in_progress = request.query_params.get("job_in_progress") == "1"
            if worker["state"] == WorkerState.RUNNING.value and not in_progress:
                held = await rt.store.run(rt.store.jobs.held_by, worker_id)
                if not held:
                    await rt.store.run(
                        rt.store.workers.transition,
                        worker_id,
                        WorkerState.IDLE,
                        now,
                        "no job",
                        idle_since=now,
                    )
        remaining = deadline - hold_clock()
        if remaining <= 0 or await request.is_disconnected():
            return NO_CONTENT
        await rt.signals.jobs.wait(endpoint_id, min(remaining, 5.0))
        worker = await rt.store.run(rt.store.workers.get, worker_id) or worker


def _batch_size(request: Request) -> int:
    raw = request.query_params.get("batch_size", "1")
    try:
        return max(1, min(int(raw), 1000))
    except ValueError:
        raise InvalidInput(f"batch_size must be an integer, got {raw!r}")


@router.get("/job-take/{worker_id}", summary="Take the next job (long poll)")
async def job_take(endpoint_id: str, worker_id: str, request: Request) -> Response:
    return await _take(request, endpoint_id, worker_id, 1)


@router.get("/job-take-batch/{worker_id}", summary="Take up to batch_size jobs (long poll)")
async def job_take_batch(endpoint_id: str, worker_id: str, request: Request) -> Response:
    return await _take(request, endpoint_id, worker_id, _batch_size(request))


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@router.post("/job-done/{worker_id}/{job_id}", summary="Report a job's result or progress")
async def job_done(endpoint_id: str, worker_id: str, job_id: str, request: Request) -> Response:
    # The worker key names this endpoint and worker (keys die with their worker), so the hot path
    # needs no worker record: the result statement itself checks that the worker holds the job.
    rt = runtime(request)
    worker_caller(request, endpoint_id, worker_id)
    body = await read_json(request, RESULT_LIMIT_BYTES)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput("the result must be a JSON object")
    now = rt.clock.now()
    await _heard_from(rt, worker_id, now)
    if J.is_progress_update(body):
        await rt.store.run(rt.store.jobs.progress, job_id, worker_id, _dump(body.get("output")))
        return json_response({"status": "ok"})
    state, fields = J.classify_result(body)
    output = _dump(fields["output"]) if "output" in fields else None
    outcome = await rt.store.run(
        rt.store.report,
        job_id,
        worker_id,
        state,
        output,
        fields.get("error"),
        now,
        rt.limits.retention_run_s,
        rt.limits.retention_sync_s,
    )
    if outcome == "unknown":
        raise NotFound(f"job {job_id!r} not found")
    if outcome == "not_held":
        raise Conflict(f"job {job_id!r} is not held by worker {worker_id!r}")
    if outcome == "done":
        rt.signals.job_finished(job_id)
    if body.get("stopPod"):
        await rt.store.run(lambda: rt.store.workers.update(worker_id, recycle=True))
        rt.signals.reconcile.set()
    return json_response({"status": "ok" if outcome == "done" else "ignored"})


@router.post("/job-stream/{worker_id}/{job_id}", summary="Append a stream chunk")
async def job_stream(endpoint_id: str, worker_id: str, job_id: str, request: Request) -> Response:
    rt, _ = await _worker(request, endpoint_id, worker_id)
    body = await read_json(request, J.STREAM_CHUNK_LIMIT_BYTES + 1024)
    if not isinstance(body, dict):
        raise InvalidInput('a stream chunk must be a JSON object {"output": …}')
    if body.get("error") and "output" not in body:
        return json_response({"status": "ignored"})  # error chunks end in job-done (gotcha 30)
    outcome = await rt.store.run(rt.store.jobs.stream_chunk, job_id, worker_id, _dump(body.get("output")))
    if outcome == "unknown":
        raise NotFound(f"job {job_id!r} not found")
    if outcome == "not_held":
        raise Conflict(f"job {job_id!r} is not held by worker {worker_id!r}")
    return json_response({"status": "ok" if outcome == "done" else "ignored"})


@router.get("/ping/{worker_id}", summary="Heartbeat")
async def ping(endpoint_id: str, worker_id: str, request: Request) -> Response:
    rt, worker = await _worker(request, endpoint_id, worker_id)
    now = rt.clock.now()
    q = request.query_params
    if q.get("status") == "unhealthy":
        # The worker exits right after this report; the lifecycle loop records the failure with this reason.
        rt.signals.fitness[worker_id] = (
            f"failed its start-up check {q.get('check', '?')}: {q.get('reason', '')}"[:500]
        )
        rt.signals.reconcile.set()
        return json_response({"status": "ok"})
    await _mark_seen(rt, worker, now)
    ids = frozenset(i for i in q.get("job_id", "").split(",") if i)
    rt.signals.pings[worker_id] = (now, ids)
    return json_response({"status": "ok"})


@router.get("/job-stop/{worker_id}", summary="Jobs this worker should stop (long poll)")
async def job_stop(endpoint_id: str, worker_id: str, request: Request) -> Response:
    rt, _ = await _worker(request, endpoint_id, worker_id)
    deadline = hold_clock() + rt.limits.take_hold_s
    while True:
        ids = await rt.store.run(rt.store.jobs.take_stops, worker_id)
        if ids:
            return json_response({"jobsToStop": ids})
        remaining = deadline - hold_clock()
        if remaining <= 0 or await request.is_disconnected():
            return NO_CONTENT
        await rt.signals.stops.wait(worker_id, min(remaining, 5.0))
