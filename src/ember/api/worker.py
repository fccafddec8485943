"""The RunPod worker protocol under /v2/{endpoint_id}/ (spec §1): job-take (long poll), job-take-batch,
job-done (raw body, any content type), job-stream, ping, job-stop (long poll). Worker keys only."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api.deps import Runtime, answer_early, query_param, read_json, runtime, worker_caller
from ember.api.errors import json_response
from ember.api.fastpath import FastRoutes
from ember.control.handoff import hold_clock
from ember.core import jobs as J
from ember.core import json_body
from ember.core.errors import Conflict, InvalidInput, NotFound
from ember.core.jobs import JobState
from ember.core.wire import worker_job
from ember.core.workers import WorkerState
from ember.store.facade import Report
from ember.store.jobs import Claimed
from ember.store.rows import WorkerRow

router = APIRouter(prefix="/v2/{endpoint_id}", tags=["worker protocol"])
fast = FastRoutes("/v2/{endpoint_id}", "worker protocol")

NO_CONTENT = Response(status_code=204)
RESULT_LIMIT_BYTES = 64 * 1024 * 1024


async def _mark_seen(rt: Runtime, worker: WorkerRow, now: float, *, ready: bool = True) -> WorkerRow:
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
        fresh = await rt.store.run(rt.store.workers.get, worker["id"])
        return fresh if fresh is not None else worker
    if worker["last_seen_at"] is None or now - worker["last_seen_at"] >= 1.0:
        await rt.store.run(rt.store.workers.seen, worker["id"], now)
    return worker


async def _heard_from(rt: Runtime, worker_id: str, now: float) -> None:
    """Refresh a worker's last_seen_at, at most once a second, without reading its record."""
    if now - rt.heard.get(worker_id, 0.0) >= 1.0:
        rt.heard[worker_id] = now
        await rt.store.run(rt.store.workers.seen, worker_id, now)


async def _worker(request: Request, endpoint_id: str, worker_id: str) -> tuple[Runtime, WorkerRow]:
    rt = runtime(request)
    await worker_caller(request, endpoint_id, worker_id)
    worker = await rt.store.run(rt.store.workers.get, worker_id)
    if worker is None or worker["endpoint_id"] != endpoint_id:
        raise NotFound(f"worker {worker_id!r} is not known on endpoint {endpoint_id!r}")
    return rt, worker


def _jobs_body(claimed: Sequence[Claimed], as_list: bool) -> str:
    if not as_list:
        return worker_job(claimed[0].id, claimed[0].input_json, claimed[0].extra_json)
    return "[" + ",".join(worker_job(c.id, c.input_json, c.extra_json) for c in claimed) + "]"


async def _client_gone(request: Request) -> None:
    """Returns when the client hangs up (or the response has been sent)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _take(request: Request, limit: int, as_list: bool) -> Response:
    endpoint_id, worker_id = request.path_params["endpoint_id"], request.path_params["worker_id"]
    rt, worker = await _worker(request, endpoint_id, worker_id)
    worker = await _mark_seen(rt, worker, rt.clock.now(), ready=False)
    in_progress = query_param(request, "job_in_progress") == "1"

    async def first_empty(worker: WorkerRow, now: float) -> WorkerRow:
        # Nothing was queued: the worker is ready (first contact), and idle unless it holds jobs.
        was_running = worker["state"] == WorkerState.RUNNING.value
        if worker["state"] == WorkerState.INITIALIZING.value:
            worker = await _mark_seen(rt, worker, now)
        if was_running and not in_progress:
            held = await rt.store.run(rt.store.jobs.held_by, worker_id)
            if not held:
                await rt.store.run(
                    rt.store.workers.transition, worker_id, WorkerState.IDLE, now, "no job", idle_since=now
                )
        return worker

    def answer(claimed: Sequence[Claimed]) -> Response:
        return Response(_jobs_body(claimed, as_list), media_type="application/json")

    def answer_one(job: Claimed) -> Response:
        return answer([job])

    early = answer_early(request, answer_one)
    gone = functools.partial(_client_gone, request)
    claimed = await rt.handoff.take(endpoint_id, worker, limit, gone, first_empty, early)
    return answer(claimed) if claimed else NO_CONTENT


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = query_param(request, name)
    if raw is None:
        return default
    try:
        return max(lo, min(int(raw), hi))
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {raw!r}")


@fast.route(
    "/job-take/{worker_id}",
    ["GET"],
    "Take the next job (long poll)",
    query=("job_in_progress",),
    responses={"200": "A job", "204": "No job within the hold"},
)
async def job_take(request: Request) -> Response:
    return await _take(request, 1, as_list=False)


@fast.route(
    "/job-take-batch/{worker_id}",
    ["GET"],
    "Take up to batch_size jobs (long poll)",
    query=("batch_size", "job_in_progress"),
    responses={"200": "Jobs", "204": "No job within the hold"},
)
async def job_take_batch(request: Request) -> Response:
    p = request.path_params
    # A stranger gets 401, not a 400 for batch_size.
    await worker_caller(request, p["endpoint_id"], p["worker_id"])
    return await _take(request, _int_param(request, "batch_size", 1, 1, 1000), as_list=True)


@fast.route(
    "/job-done/{worker_id}/{job_id}",
    ["POST"],
    "Report a job's result or progress; with take=N (Ember's SDK), also take up to N next jobs",
    query=("isStream", "take"),
    body=B.WorkerResult,
    errors=(409,),
)
async def job_done(request: Request) -> Response:
    # The worker key names this endpoint and worker (keys die with their worker), so the hot path
    # needs no worker record: the result statement itself checks that the worker holds the job.
    p = request.path_params
    endpoint_id, worker_id, job_id = p["endpoint_id"], p["worker_id"], p["job_id"]
    rt = runtime(request)
    await worker_caller(request, endpoint_id, worker_id)
    body = await read_json(request, RESULT_LIMIT_BYTES)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InvalidInput("the result must be a JSON object")
    now = rt.clock.now()
    await _heard_from(rt, worker_id, now)
    if J.is_progress_update(body):
        await rt.store.run(rt.store.jobs.progress, job_id, worker_id, json_body.dump(body.get("output")))
        return json_response({"status": "ok"})
    state, fields = J.classify_result(body)
    output = json_body.dump(fields["output"]) if "output" in fields else None
    stop_pod = bool(body.get("stopPod"))
    take = 0 if stop_pod else _int_param(request, "take", 0, 0, 1000)
    error = fields.get("error")
    answered = None
    if not stop_pod:  # a runsync's result recorded after its answer (when its hand-over is deferred)
        answered = rt.handoff.report_answered(job_id, worker_id, state, output, error, now, take)
    if answered is not None:
        report, seen, retired = answered
    else:
        seen = rt.handoff.queued_count(endpoint_id)  # before the claim: jobs queued during it are seen
        retired = rt.signals.dispatch.retirements  # before the result's look at the worker
        report = await _report(rt, job_id, worker_id, endpoint_id, state, output, error, now, take, stop_pod)
    if report.outcome == "unknown":
        raise NotFound(f"job {job_id!r} not found")
    if report.outcome == "not_held":
        raise Conflict(f"job {job_id!r} is not held by worker {worker_id!r}")
    if report.finished is not None:
        f = report.finished
        sent = rt.signals.job_finished(job_id, report.record, webhook=f.has_webhook)
        delay_s = f.started_at - f.created_at if f.started_at is not None else None
        execution_s = now - f.started_at if f.started_at is not None else None
        rt.signals.metrics.job_finished(endpoint_id, state.value, delay_s, execution_s)
        if not sent:  # let a runsync waiting on this job answer its client before this reply
            await asyncio.sleep(0)
    if stop_pod and report.outcome in ("done", "final"):
        # Whatever SDK it runs, the worker only says so and keeps polling: end its open takes, and let the
        # lifecycle stop and replace it now.
        rt.signals.retire(worker_id)
        rt.signals.reconcile.set()
    next_jobs = report.next_jobs
    if report.may_take and not next_jobs:
        gone = functools.partial(_client_gone, request)
        early = answer_early(request, _with_job)
        next_jobs = await rt.handoff.hold_for_jobs(
            endpoint_id, worker_id, take, now, gone, seen, retired, early
        )
    if next_jobs:
        return _with_jobs(next_jobs)
    return json_response({"status": "ok" if report.outcome == "done" else "ignored"})


def _with_job(job: Claimed) -> Response:
    return _with_jobs([job])


def _with_jobs(jobs: Sequence[Claimed]) -> Response:
    """A job-done's answer that hands the worker its next jobs."""
    return Response(
        '{"status":"ok","jobs":' + _jobs_body(jobs, as_list=True) + "}", media_type="application/json"
    )


async def _report(
    rt: Runtime,
    job_id: str,
    worker_id: str,
    endpoint_id: str,
    state: JobState,
    output: str | None,
    error: str | None,
    now: float,
    take: int,
    stop_pod: bool,
) -> Report:
    """`Store.report` the result (with stopPod, the worker is retired in the same transaction)."""
    with rt.signals.in_txn(*((("r", worker_id),) if stop_pod else ())):  # and "f", with the record
        return await rt.store.run(
            rt.store.report,
            job_id,
            worker_id,
            state,
            output,
            error,
            now,
            rt.limits.retention_run_s,
            rt.limits.retention_sync_s,
            take_endpoint=endpoint_id,
            take=take,
            recycle=stop_pod,
        )


@router.post(
    "/job-stream/{worker_id}/{job_id}",
    summary="Append a stream chunk",
    openapi_extra=B.body_doc(B.StreamChunk),
    responses=B.error_responses(409),
)
async def job_stream(endpoint_id: str, worker_id: str, job_id: str, request: Request) -> Response:
    rt, _ = await _worker(request, endpoint_id, worker_id)
    body = await read_json(request, J.STREAM_CHUNK_LIMIT_BYTES + 1024)
    if not isinstance(body, dict):
        raise InvalidInput('a stream chunk must be a JSON object {"output": …}')
    if body.get("error") and "output" not in body:
        return json_response({"status": "ignored"})  # error chunks end in job-done (gotcha 30)
    outcome = await rt.store.run(
        rt.store.streams.stream_chunk, job_id, worker_id, json_body.dump(body.get("output")), endpoint_id
    )
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
        reason = f"failed its start-up check {q.get('check', '?')}: {q.get('reason', '')}"
        rt.signals.presence.failed_check(worker_id, reason[:500])
        if not rt.store.inline:  # for the process that runs the lifecycle, if it is another
            await rt.store.run(rt.store.pings.failed_check, worker_id, reason[:500], now)
        rt.signals.reconcile.set()
        return json_response({"status": "ok"})
    await _mark_seen(rt, worker, now)
    ids = frozenset(i for i in q.get("job_id", "").split(",") if i)
    rt.signals.presence.pinged(worker_id, now, ids)
    if not rt.store.inline:  # other processes may run the lifecycle: they read it from the database
        await rt.store.run(rt.store.pings.record, worker_id, now, ids)
    if ids:
        with rt.signals.in_txn(("s", worker_id)):
            flagged: int = await rt.store.run(rt.store.jobs.stop_again, worker_id, sorted(ids))
        if flagged:
            rt.signals.stop_wanted(worker_id)
    return json_response({"status": "ok"})


@router.get(
    "/job-stop/{worker_id}",
    summary="Jobs this worker should stop (long poll)",
    responses={204: {"description": "Nothing to stop within the hold"}},
)
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
