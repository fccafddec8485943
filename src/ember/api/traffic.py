"""GET /v1/endpoints/{ref}/traffic: an endpoint's recent jobs (created, started, completed), its workers'
cold starts and the price of its worker, for its owner: what `ember simulate` replays, so that the
simulator works against a remote server."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from ember.api.deps import RuntimeDep, caller, own_endpoint
from ember.api.errors import json_response
from ember.api.views import iso
from ember.core.billing import PriceTable
from ember.core.specs import spec_from_json
from ember.core.traces import cold_starts, median

router = APIRouter(prefix="/v1")
MAX_WINDOW_S = 7 * 24 * 3600
MAX_JOBS = 100_000
WORKER_EVENTS = 20_000


@router.get(
    "/endpoints/{ref}/traffic",
    tags=["endpoints"],
    summary="An endpoint's recent job times and cold starts (for `ember simulate`)",
)
async def endpoint_traffic(
    ref: str,
    request: Request,
    rt: RuntimeDep,
    seconds: int = Query(3600, ge=1, le=MAX_WINDOW_S, description="how far back, in seconds"),
    limit: int = Query(10_000, ge=1, le=MAX_JOBS, description="at most this many jobs, the newest"),
) -> Response:
    """`jobs`: the newest `limit` jobs created in the last `seconds`, oldest first, each with its
    `createdAt`, `startedAt` and `completedAt` in epoch seconds (null until it happened). `coldStartsS`:
    the launch-to-ready times of the endpoint's workers started in that window, in order, and their
    median. `price`: what one second of its worker costs (flex, before the active discount), in
    micro-dollars, for the GPU type its newest worker ran on (else its first preference). `server`: the
    lifecycle's tick and how long a job-take is held, which the simulator mirrors."""
    who = await caller(request)  # not a dependency: a bad `seconds` or `limit` answers 400 before a bad key
    row = await own_endpoint(rt, who.account_id, ref)
    now = rt.clock.now()
    since = now - seconds
    s = rt.store
    times = await s.run(s.insights.job_times, row["id"], since, limit)
    events = await s.run(s.insights.state_events, row["id"], since, WORKER_EVENTS)
    starts = cold_starts(events)
    spec = spec_from_json(row["spec"])
    workers = await s.run(lambda: s.workers.list(endpoint_id=row["id"], include_stopped=True))
    newest = max(workers, key=lambda w: w["created_at"], default=None)
    gpu_type = (newest["gpu_type"] if newest is not None else None) or (
        spec.gpu_type_ids[0] if spec.gpu_type_ids else None
    )
    table = rt.services.prices if rt.services.prices is not None else PriceTable()
    runner = getattr(request.app.state, "runner", None)
    tick_s = runner.intervals.tick_s if runner is not None else None
    return json_response(
        {
            "endpointId": row["id"],
            "from": iso(since),
            "to": iso(now),
            "fromAt": since,
            "toAt": now,
            "jobs": [{"createdAt": c, "startedAt": st, "completedAt": done} for c, st, done in times],
            "coldStartsS": [round(d, 3) for d in starts],
            "coldStartMedianS": median(starts),
            "price": {
                "gpuTypeId": gpu_type,
                "gpuCount": spec.gpu_count if gpu_type else 0,
                "flexMicrosPerS": table.base_micros_per_s(gpu_type, spec.gpu_count),
                "activeDiscountPct": table.active_discount_pct,
            },
            "server": {"tickS": tick_s, "takeHoldS": rt.limits.take_hold_s},
        }
    )
