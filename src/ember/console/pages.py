"""The console's pages. Each reads through the store with the signed-in account's scope (the admin's is
every account) and renders a template; nothing here writes (edits go through the JSON API)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ember.api.deps import runtime
from ember.console.render import render, viewer_of
from ember.store.insights import percentile

router = APIRouter(include_in_schema=False)


def day_start(now: float) -> float:
    """Midnight UTC of the day `now` falls in: "today" for costs."""
    return now - (now % 86400)


@router.get("/")
@router.get("/dashboard")
@router.get("/console")
async def home(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=303)


@router.get("/console/")
async def endpoints_page(request: Request) -> Response:
    viewer = await viewer_of(request)
    rt = runtime(request)
    store = rt.store
    now = rt.clock.now()
    rows = await store.run(store.endpoints.list, viewer.scope)
    figures = await store.run(store.insights.figures, [r["id"] for r in rows], day_start(now))
    names = {}
    if viewer.is_admin:
        names = {a["id"]: a["name"] for a in await store.run(store.accounts.all)}
    items = []
    for row in rows:
        fig = figures[row["id"]]
        items.append(
            {
                "row": row,
                "account": names.get(row["account_id"], ""),
                "workers": fig.workers,
                "live": sum(fig.workers.values()),
                "queued": fig.queued,
                "in_progress": fig.in_progress,
                "delay": (percentile(fig.delay_ms, 50), percentile(fig.delay_ms, 95)),
                "execution": (percentile(fig.execution_ms, 50), percentile(fig.execution_ms, 95)),
                "cost": fig.cost_micros,
            }
        )
    return render(request, "endpoints.html", viewer, endpoints=items, started=time.time())
