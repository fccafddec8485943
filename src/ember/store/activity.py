"""An endpoint's recent activity as the console's endpoint page shows it: its workers and their
transitions inside a time window, its recent jobs (without inputs and outputs) and its newest releases.
Every query is bounded (a LIMIT, a window) and runs on an index: ix_worker_events_endpoint,
ix_jobs_endpoint, and the endpoint_id indexes of workers and releases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select

from ember.core.timeline import Transition, WorkerNow
from ember.core.workers import WorkerState
from ember.store.db import Repository
from ember.store.rows import ReleaseSummary
from ember.store.schema import jobs, releases, worker_events, workers

J = jobs.c
W = workers.c
EV = worker_events.c
R = releases.c

JOB_COLUMNS = (
    J.id,
    J.state,
    J.worker_id,
    J.created_at,
    J.started_at,
    J.completed_at,
    J.error,
    J.requeues,
    J.retried,
)


@dataclass(frozen=True)
class Window:
    """What a timeline is drawn from: the workers that lived inside [since, now] (newest first, at
    most the limit asked for), `more` when others were left out, and the transitions since `since`
    (the newest, at most the limit asked for: `since` is moved up to the oldest one kept when more
    happened, so that the window shows only what it fully knows)."""

    since: float
    workers: Sequence[WorkerNow]
    events: Sequence[Transition]
    more: bool


@dataclass(frozen=True)
class JobLine:
    id: str
    state: str
    worker_id: str | None
    created_at: float
    started_at: float | None
    completed_at: float | None
    error: str | None
    requeues: int
    retried: int


class ActivityStore(Repository):
    def window(self, endpoint_id: str, since: float, max_workers: int, max_events: int) -> Window:
        """The endpoint's workers alive at some moment after `since` and their transitions since then."""
        q = (
            select(W.id, W.state, W.state_since, W.reason, W.type)
            .where(
                W.endpoint_id == endpoint_id,
                or_(W.state != WorkerState.STOPPED.value, W.state_since >= since),
            )
            .order_by(W.created_at.desc(), W.id)
            .limit(max_workers + 1)
        )
        e = (
            select(EV.worker_id, EV.from_state, EV.to_state, EV.at, EV.reason)
            .where(EV.endpoint_id == endpoint_id, EV.at >= since)
            .order_by(EV.at.desc(), EV.id.desc())
            .limit(max_events)
        )
        with self.reader.connect() as conn:
            rows = conn.execute(q).all()
            evs = conn.execute(e).all()
        shown = [WorkerNow(r.id, r.state, r.state_since, r.reason or "", r.type) for r in rows[:max_workers]]
        ids = {w.worker_id for w in shown}
        events = [
            Transition(r.worker_id, r.from_state, r.to_state, r.at, r.reason or "")
            for r in reversed(evs)
            if r.worker_id in ids
        ]
        if len(evs) == max_events:
            since = max(since, evs[-1].at)
        return Window(since, shown, events, len(rows) > max_workers)

    def recent_jobs(
        self, endpoint_id: str, *, state: str | None = None, worker_id: str | None = None, limit: int = 50
    ) -> list[JobLine]:
        """The endpoint's newest jobs (by creation), optionally in one state or taken by one worker."""
        q = select(*JOB_COLUMNS).where(J.endpoint_id == endpoint_id)
        if state:
            q = q.where(J.state == state)
        if worker_id:
            q = q.where(J.worker_id == worker_id)
        q = q.order_by(J.created_at.desc()).limit(limit)
        with self.reader.connect() as conn:
            return [JobLine(*r) for r in conn.execute(q).all()]

    def releases(self, endpoint_id: str, limit: int = 20) -> Sequence[ReleaseSummary]:
        """The endpoint's newest releases (by number), without their build logs."""
        q = (
            select(R.number, R.status, R.image, R.commit, R.created_at, R.spec)
            .where(R.endpoint_id == endpoint_id)
            .order_by(R.number.desc())
            .limit(limit)
        )
        return self._rows(ReleaseSummary, q)
