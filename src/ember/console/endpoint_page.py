"""The console's page of one endpoint (its workers' state timeline over the last hour, the scaler's
decisions, recent jobs, a live log tail, releases, settings) and the page of one of its jobs. Another
account's endpoint or job is a 404 page, as an unknown one is (the admin sees every account's). Reads
only, each bounded; the page's script edits through the JSON API and tails logs from it."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ember.api.deps import Runtime, runtime
from ember.console.pages import day_start
from ember.console.render import Viewer, render, viewer_of
from ember.console.timeline_svg import chart, duration, hms, svg, when
from ember.core.jobs import JobState
from ember.core.specs import spec_from_json
from ember.core.timeline import lanes
from ember.core.workers import WorkerState
from ember.store.activity import JobLine
from ember.store.insights import percentile
from ember.store.rows import EndpointRow, ReleaseSummary

router = APIRouter(include_in_schema=False)

SPANS = {"5m": 300.0, "15m": 900.0, "1h": 3600.0}  # the timeline's zoom levels; the last hour by default
DEFAULT_SPAN = "1h"
MAX_LANES = 100
MAX_EVENTS = 5000
JOBS_SHOWN = 50
DECISIONS_SHOWN = 30
DECISIONS_SINCE_S = 86400.0
RELEASES_SHOWN = 20
LOG_LINES = 200  # what the log tail asks for per worker and keeps on the page
PAYLOAD_SHOWN = 4000  # characters of a job's input, output or error shown on its page
STATES = [s.value for s in WorkerState]
JOB_STATES = [s.value for s in JobState]


def _problem(request: Request, viewer: Viewer, status: int, title: str, message: str) -> Response:
    response = render(request, "problem.html", viewer, title=title, message=message)
    response.status_code = status
    return response


def _not_found(request: Request, viewer: Viewer, what: str) -> Response:
    return _problem(request, viewer, 404, "Not found", f"{what} was not found.")


async def _endpoint(rt: Runtime, viewer: Viewer, endpoint_id: str) -> EndpointRow | None:
    """The endpoint by id when the viewer may see it (its own account's; any for the admin)."""
    row = await rt.store.run(rt.store.endpoints.get, endpoint_id, viewer.scope)
    return row if row is not None and row["id"] == endpoint_id else None


def _job_line(job: JobLine) -> dict[str, object]:
    delay = job.started_at - job.created_at if job.started_at is not None else None
    execution = (
        job.completed_at - job.started_at
        if job.completed_at is not None and job.started_at is not None
        else None
    )
    return {
        "id": job.id,
        "state": job.state,
        "worker_id": job.worker_id,
        "queued": hms(job.created_at),
        "taken": hms(job.started_at),
        "done": hms(job.completed_at),
        "delay": duration(delay),
        "execution": duration(execution),
        "error": (job.error or "")[:200],
        "requeues": job.requeues,
        "retried": job.retried,
    }


def _settings(spec_json: str) -> dict[str, object]:
    spec = spec_from_json(spec_json)
    s = spec.scaling
    return {
        "workersMin": s.workers_min,
        "workersMax": s.workers_max,
        "idleTimeout": s.idle_timeout_s,
        "scalerType": s.scaler_type,
        "scalerValue": s.scaler_value,
        "gpuTypeIds": ", ".join(spec.gpu_type_ids),
        "gpuCount": spec.gpu_count,
    }


def _release(row: ReleaseSummary, serving: int) -> dict[str, object]:
    image = row["image"]
    if not image:
        image = json.loads(row["spec"]).get("image_name")
    return {
        "number": row["number"],
        "status": row["status"],
        "serving": row["number"] == serving,
        "created": when(row["created_at"]),
        "image": image or "",
        "commit": (row["commit"] or "")[:12],
    }


@router.get("/console/endpoints/{endpoint_id}")
async def endpoint_page(
    request: Request, endpoint_id: str, status: str = "", worker: str = "", span: str = DEFAULT_SPAN
) -> Response:
    viewer = await viewer_of(request)
    rt = runtime(request)
    store = rt.store
    row = await _endpoint(rt, viewer, endpoint_id)
    if row is None:
        return _not_found(request, viewer, f"Endpoint {endpoint_id}")
    if status and status not in JOB_STATES:
        return _problem(request, viewer, 400, "Bad filter", f"status must be one of {', '.join(JOB_STATES)}")
    if len(worker) > 80:
        return _problem(request, viewer, 400, "Bad filter", "worker must be a worker id")
    if span not in SPANS:
        return _problem(request, viewer, 400, "Bad span", f"span must be one of {', '.join(SPANS)}")
    now = rt.clock.now()
    window = await store.run(store.activity.window, endpoint_id, now - SPANS[span], MAX_LANES, MAX_EVENTS)
    timeline = chart(lanes(window.workers, window.events, window.since, now), window.since, now)
    jobs = await store.run(
        lambda: store.activity.recent_jobs(
            endpoint_id, state=status or None, worker_id=worker or None, limit=JOBS_SHOWN
        )
    )
    figures = (await store.run(store.insights.figures, [endpoint_id], day_start(now)))[endpoint_id]
    decisions = await store.run(
        store.endpoints.scale_events, endpoint_id, now - DECISIONS_SINCE_S, DECISIONS_SHOWN
    )
    releases = await store.run(store.activity.releases, endpoint_id, RELEASES_SHOWN)
    return render(
        request,
        "endpoint.html",
        viewer,
        endpoint=row,
        owner=row["account_id"] == viewer.account_id,
        timeline=timeline,
        timeline_svg=svg(timeline, f"Worker states over the last {span}"),
        window_from=hms(window.since),
        window_to=hms(now),
        truncated=window.since > now - SPANS[span],
        span=span,
        zoom=[(name, _query(status=status, worker=worker, span=name)) for name in SPANS],
        more_workers=window.more,
        states=STATES,
        job_states=JOB_STATES,
        figures=figures,
        delay=(percentile(figures.delay_ms, 50), percentile(figures.delay_ms, 95)),
        execution=(percentile(figures.execution_ms, 50), percentile(figures.execution_ms, 95)),
        decisions=[
            {
                "at": when(d["at"]),
                "desired": d["desired"],
                "reason": d["reason"],
                "queued": d["queued"],
                "workers": d["workers"],
            }
            for d in decisions
        ],
        jobs=[_job_line(j) for j in jobs],
        filter_status=status,
        filter_worker=worker,
        lane_workers=[r.worker_id for r in timeline.rows],
        releases=[_release(r, row["release"]) for r in releases],
        settings=_settings(row["spec"]),
        log_lines=LOG_LINES,
    )


def _query(**params: str) -> str:
    """A query string of the non-default parameters (`?…`, or "" when all are defaults)."""
    kept = {k: v for k, v in params.items() if v and not (k == "span" and v == DEFAULT_SPAN)}
    return "?" + urlencode(kept) if kept else ""


def _shown(text: str | None) -> str:
    if text is None:
        return ""
    return text if len(text) <= PAYLOAD_SHOWN else text[:PAYLOAD_SHOWN] + f"… ({len(text)} characters)"


@router.get("/console/endpoints/{endpoint_id}/jobs/{job_id}")
async def job_page(request: Request, endpoint_id: str, job_id: str) -> Response:
    viewer = await viewer_of(request)
    rt = runtime(request)
    row = await _endpoint(rt, viewer, endpoint_id)
    job = None
    if row is not None:
        job = await rt.store.run(rt.store.jobs.get, job_id, viewer.scope, endpoint_id)
    if row is None or job is None:
        return _not_found(request, viewer, f"Job {job_id}")
    created, started, completed = job["created_at"], job["started_at"], job["completed_at"]
    steps = [("Queued", created, "")]
    if started is not None:
        steps.append(("Taken", started, f"by {job['worker_id']}" if job["worker_id"] else ""))
    if completed is not None:
        steps.append(("Done", completed, job["state"]))
    return render(
        request,
        "job.html",
        viewer,
        endpoint=row,
        job=job,
        steps=[{"name": n, "at": when(at), "note": note} for n, at, note in steps],
        delay=duration(started - created if started is not None else None),
        execution=duration(completed - started if completed is not None and started is not None else None),
        input=_shown(job["input"]),
        output=_shown(job["output"]),
        error=_shown(job["error"]),
        webhook_error=_shown(job["webhook_error"]),
    )
