"""The RunPod-compatible client API under /v2/{endpoint_id}/: run, runsync, status, stream, cancel,
retry, purge-queue, health. Routes write jobs to the store and wake the loops; they never start compute.
run, runsync and status are on the fast path (`api.fastpath`)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from ember.api import bodies as B
from ember.api.deps import (
    EndpointInfo,
    Runtime,
    answer_early,
    caller,
    found,
    query_param,
    read_json,
    runtime,
)
from ember.api.errors import json_response
from ember.api.fastpath import FastRoutes
from ember.core import jobs as J
from ember.core import json_body
from ember.core.errors import Conflict, InvalidInput, NotFound, Problem
from ember.core.ids import job_token, make_id
from ember.core.jobs import JobState
from ember.core.outbound import webhook_problems
from ember.core.wire import record
from ember.store.accounts import KeyInfo
from ember.store.jobs import NewJob

router = APIRouter(prefix="/v2/{endpoint_id}", tags=["jobs"])


async def _endpoint(rt: Runtime, account_id: str, ref: str) -> EndpointInfo:
    ep = await rt.endpoint_cached(account_id, ref)
    if ep is None:
        raise NotFound(f"endpoint {ref!r} not found")
    return ep


def _parse_job(body: Any, default_timeout_ms: int) -> tuple[str, str | None, str | None, bool, int, int]:
    """Validate a run body; returns (input_json, extra_json, webhook, low_priority, timeout_ms, ttl_ms)."""
    problems: list[Problem] = []
    if not isinstance(body, dict):
        raise InvalidInput(
            "the body must be a JSON object with an 'input' field",
            [Problem("body", "must be a JSON object", type(body).__name__)],
        )
    if "input" not in body:
        problems.append(Problem("input", "is required"))
    extra: dict[str, Any] = {}
    webhook = body.get("webhook")
    if webhook is not None:
        # The shape only (no DNS on this path): where it may go is checked when it is delivered.
        webhook_bad = webhook_problems(webhook)
        if webhook_bad:
            problems.extend(webhook_bad)
        else:
            extra["webhook"] = webhook
    timeout_ms, ttl_ms, low = default_timeout_ms, J.TTL_DEFAULT_MS, False
    policy = body.get("policy")
    if policy is not None:
        if not isinstance(policy, dict):
            problems.append(Problem("policy", "must be an object", policy))
        else:
            policy = B.integers(B.Policy, policy)
            body = {**body, "policy": policy}
            timeout_ms = _ms(
                policy,
                "executionTimeout",
                timeout_ms,
                J.EXECUTION_TIMEOUT_MIN_MS,
                J.EXECUTION_TIMEOUT_MAX_MS,
                problems,
            )
            ttl_ms = _ms(policy, "ttl", ttl_ms, J.TTL_MIN_MS, J.TTL_MAX_MS, problems)
            low_value = policy.get("lowPriority", False)
            if not isinstance(low_value, bool):
                problems.append(Problem("policy.lowPriority", "must be true or false", low_value))
            else:
                low = low_value
            extra["policy"] = policy
    s3 = body.get("s3Config")
    if s3 is not None:
        if not isinstance(s3, dict):
            problems.append(Problem("s3Config", "must be an object", s3))
        else:
            extra["s3Config"] = s3
    if problems:
        raise InvalidInput(
            "invalid job request: " + "; ".join(f"{p.field} {p.message}" for p in problems), problems
        )
    if len(body) > 1:  # {"input": …} alone has nothing more to check (any JSON is an input)
        B.check(B.JobRequest, body)
    input_json = json_body.dump(body["input"])
    extra_json = json_body.dump(extra) if extra else None
    return input_json, extra_json, extra.get("webhook"), low, timeout_ms, ttl_ms


def _ms(policy: dict[str, Any], name: str, default: int, lo: int, hi: int, problems: list[Problem]) -> int:
    value = policy.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(Problem(f"policy.{name}", "must be an integer number of milliseconds", value))
        return default
    if not lo <= value <= hi:
        problems.append(Problem(f"policy.{name}", f"must be between {lo} and {hi} ms", value))
        return default
    return value


fast = FastRoutes("/v2/{endpoint_id}", "jobs")


def _new_job(ep: EndpointInfo, body: Any, sync: bool) -> NewJob:
    input_json, extra_json, webhook, low, timeout_ms, ttl_ms = _parse_job(body, ep.execution_timeout_ms)
    job_id = make_id("sync_job" if sync else "job", job_token(time.time(), os.urandom(10)))
    return NewJob(
        job_id, ep.id, ep.account_id, input_json, extra_json, webhook, low, timeout_ms, ttl_ms, sync
    )


async def _submit(request: Request, limit_bytes: int, sync: bool) -> tuple[Runtime, NewJob]:
    rt = runtime(request)
    who = await caller(request)
    ep = await _endpoint(rt, who.account_id, request.path_params["endpoint_id"])
    job = _new_job(ep, await read_json(request, limit_bytes), sync)
    return rt, job


IDEMPOTENCY_HEADER = "idempotency-key"


async def _enqueue_once(rt: Runtime, job: NewJob, key: str) -> Response:
    """Queue `job` unless `key` was used on its endpoint by its account within a day: then answer with
    the first job (409 when that job's record has since expired)."""
    problem = J.idempotency_key_problem(key)
    if problem is not None:
        raise InvalidInput(f"Idempotency-Key {problem}", [Problem("Idempotency-Key", problem, key[:300])])
    window_s = J.IDEMPOTENCY_WINDOW_S
    with rt.signals.in_txn():  # "q" when it queues the job
        first = await rt.store.run(rt.store.idempotency.submit_once, job, key, rt.clock.now(), window_s)
    if first is None:
        rt.signals.jobs_submitted(job.endpoint_id)
        return json_response({"id": job.id, "status": JobState.IN_QUEUE.value})
    row = await rt.store.run(rt.store.jobs.get, first, job.account_id, job.endpoint_id)
    if row is None:
        raise Conflict(f"Idempotency-Key {key!r} queued job {first!r}, whose record has expired")
    return json_response({"id": first, "status": row["state"]})


@fast.route(
    "/run",
    ["POST"],
    "Queue a job (with an Idempotency-Key header, at most once per key and day)",
    headers=(
        (
            "Idempotency-Key",
            {
                "type": "string",
                "minLength": 1,
                "maxLength": J.IDEMPOTENCY_KEY_MAX_CHARS,
                "pattern": "^[!-~]+$",
                "description": "a retried /run with the same key within a day returns the first job",
            },
        ),
    ),
    body=B.JobRequest,
    errors=(409,),
)
async def run(request: Request) -> Response:
    rt, job = await _submit(request, J.RUN_BODY_LIMIT_BYTES, sync=False)
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None:
        return await _enqueue_once(rt, job, key)
    await rt.handoff.submit(job)
    return json_response({"id": job.id, "status": JobState.IN_QUEUE.value})


@fast.route(
    "/runsync",
    ["POST"],
    "Run a job and wait for its result",
    query=(("wait", {"type": "string", "pattern": "^[0-9]+$", "description": "milliseconds"}),),
    body=B.JobRequest,
)
async def runsync(request: Request) -> Response:
    wait_ms = J.RUNSYNC_WAIT_DEFAULT_MS
    wait = query_param(request, "wait")
    if wait is not None:
        if not wait.isdigit():
            raise InvalidInput(
                "'wait' must be an integer number of milliseconds", [Problem("wait", "not an integer", wait)]
            )
        wait_ms = min(max(int(wait), J.RUNSYNC_WAIT_MIN_MS), J.RUNSYNC_WAIT_MAX_MS)
    rt, job = await _submit(request, J.RUNSYNC_BODY_LIMIT_BYTES, sync=True)
    early = answer_early(request, _final)
    got = await rt.handoff.run_sync(job, wait_ms / 1000.0, early)
    if isinstance(got, str):
        return _final(got)
    if got is None:
        raise NotFound(f"job {job.id!r} expired")
    if got["state"] in _FINAL:
        return json_response(record(got))
    return json_response({"id": job.id, "status": got["state"]})


_FINAL = {s.value for s in J.TERMINAL}


def _final(record: str) -> Response:
    """The answer of a runsync whose job ended, with its final record (JSON text)."""
    return Response(record, media_type="application/json")


@fast.route("/status/{job_id}", ["GET", "POST"], "A job's status and output")
async def status(request: Request) -> Response:
    rt = runtime(request)
    who = await caller(request)
    ep = await _endpoint(rt, who.account_id, request.path_params["endpoint_id"])
    job_id = request.path_params["job_id"]
    row = await found(rt, f"job {job_id!r}", rt.store.jobs.get, job_id, ep.account_id, ep.id)
    rec = record(row)
    if row["webhook_error"]:  # Ember's own field: why the job's webhook was not delivered (yet)
        rec["webhookError"] = row["webhook_error"]
    return json_response(rec)


async def _job(request: Request, endpoint_id: str, job_id: str) -> tuple[Runtime, KeyInfo, EndpointInfo]:
    rt = runtime(request)
    who = await caller(request)
    ep = await _endpoint(rt, who.account_id, endpoint_id)
    return rt, who, ep


@router.get("/stream/{job_id}", summary="Stream chunks not yet read", operation_id="stream_get")
@router.post("/stream/{job_id}", summary="Stream chunks not yet read", operation_id="stream_post")
async def stream(endpoint_id: str, job_id: str, request: Request) -> Response:
    rt, _, ep = await _job(request, endpoint_id, job_id)
    row, chunks = await found(
        rt, f"job {job_id!r}", rt.store.streams.read_stream, job_id, ep.account_id, ep.id
    )
    body = {"id": job_id, "status": row["state"], "stream": [{"output": json.loads(c)} for c in chunks]}
    if row["state"] in _FINAL and row["error"]:
        body["error"] = row["error"]
    return json_response(body)


@router.post("/cancel/{job_id}", summary="Cancel a queued or running job", responses=B.error_responses(409))
async def cancel(endpoint_id: str, job_id: str, request: Request) -> Response:
    rt, _, ep = await _job(request, endpoint_id, job_id)
    with rt.signals.in_txn():  # "f" and, for a running job, "s" its worker
        row = await found(
            rt,
            f"job {job_id!r}",
            rt.store.jobs.cancel,
            job_id,
            ep.account_id,
            ep.id,
            rt.clock.now(),
            rt.limits.retention_run_s,
        )
    if row["cancelled_now"]:
        rt.signals.metrics.job_finished(ep.id, JobState.CANCELLED.value)
    if row["worker_id"] and row["stop_requested"]:
        rt.signals.stop_wanted(row["worker_id"])
    rt.signals.job_finished(job_id)
    return json_response({"id": job_id, "status": row["state"]})


@router.post(
    "/retry/{job_id}", summary="Re-queue a FAILED or TIMED_OUT job", responses=B.error_responses(409)
)
async def retry(endpoint_id: str, job_id: str, request: Request) -> Response:
    rt, _, ep = await _job(request, endpoint_id, job_id)
    with rt.signals.in_txn(("q", ep.id)):
        state = await found(
            rt, f"job {job_id!r}", rt.store.jobs.retry, job_id, ep.account_id, ep.id, rt.clock.now()
        )
    if state != JobState.IN_QUEUE.value:
        raise Conflict(f"job {job_id!r} is {state}; only FAILED or TIMED_OUT jobs can be retried")
    rt.signals.jobs_queued(ep.id)
    rt.signals.poke_scaler()
    return json_response({"id": job_id, "status": state})


@router.post("/purge-queue", summary="Remove every queued job")
async def purge_queue(endpoint_id: str, request: Request) -> Response:
    rt = runtime(request)
    who = await caller(request)
    ep = await _endpoint(rt, who.account_id, endpoint_id)
    removed = await rt.store.run(rt.store.jobs.purge_queue, ep.id, rt.clock.now(), rt.limits.retention_run_s)
    rt.signals.metrics.jobs_finished(ep.id, JobState.CANCELLED.value, removed)
    return json_response({"removed": removed, "status": "completed"})


@router.get("/health", summary="Job and worker counts")
async def health(endpoint_id: str, request: Request) -> Response:
    rt = runtime(request)
    who = await caller(request)
    ep = await _endpoint(rt, who.account_id, endpoint_id)
    counts = await rt.store.run(rt.store.jobs.counts, ep.id)
    workers = await rt.store.run(lambda: rt.store.workers.list(endpoint_id=ep.id))
    by_state: dict[str, int] = {}
    for w in workers:
        by_state[w["state"]] = by_state.get(w["state"], 0) + 1
    return json_response(
        {
            "jobs": {
                "completed": counts.get("COMPLETED", 0),
                "failed": counts.get("FAILED", 0) + counts.get("TIMED_OUT", 0),
                "inProgress": counts.get("IN_PROGRESS", 0),
                "inQueue": counts.get("IN_QUEUE", 0),
                "retried": counts.get("retried", 0),
            },
            "workers": {
                "idle": by_state.get("IDLE", 0),
                "running": by_state.get("RUNNING", 0),
                "initializing": by_state.get("INITIALIZING", 0),
                "throttled": by_state.get("THROTTLED", 0),
                "outdated": by_state.get("OUTDATED", 0),
                "unhealthy": by_state.get("UNHEALTHY", 0),
            },
        }
    )
