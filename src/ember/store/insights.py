"""Read-only aggregates for the web console: per endpoint, its workers by state, queue depth, delay and
execution-time percentiles, and cost since a moment. Each is one grouped query over indexed columns, so
a page costs a few queries whatever the number of jobs. Also an endpoint's recent traffic (job times,
worker transitions) for the scaling simulator, and the recent load PREDICTIVE scaling reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import and_, case, func, select

from ember.core.workers import LIVE
from ember.store.db import Repository
from ember.store.schema import jobs, ledger, worker_events, workers

J = jobs.c
L = ledger.c
W = workers.c
E = worker_events.c
SAMPLE = 2000  # the newest finished jobs a percentile is taken over


@dataclass
class EndpointFigures:
    workers: dict[str, int] = field(default_factory=dict)  # state -> live workers
    queued: int = 0
    in_progress: int = 0
    delay_ms: list[float] = field(default_factory=list)  # of jobs finished since `since`, sorted
    execution_ms: list[float] = field(default_factory=list)
    cost_micros: int = 0


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0..100) of already sorted values, None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


class InsightStore(Repository):
    def figures(self, endpoint_ids: Sequence[str], since: float) -> dict[str, EndpointFigures]:
        """Figures per endpoint: live workers by state, queued and running jobs now, the delay and
        execution times of jobs finished since `since` (the SAMPLE created last), and usage billed since
        then."""
        out = {eid: EndpointFigures() for eid in endpoint_ids}
        if not out:
            return out
        ids = list(out)
        live = [s.value for s in LIVE]
        with self.reader.connect() as conn:
            for eid, state, n in conn.execute(
                select(W.endpoint_id, W.state, func.count())
                .where(W.endpoint_id.in_(ids), W.state.in_(live))
                .group_by(W.endpoint_id, W.state)
            ):
                out[eid].workers[state] = n
            for eid, state, n in conn.execute(
                select(J.endpoint_id, J.state, func.count())
                .where(J.endpoint_id.in_(ids), J.state.in_(("IN_QUEUE", "IN_PROGRESS")))
                .group_by(J.endpoint_id, J.state)
            ):
                if state == "IN_QUEUE":
                    out[eid].queued = n
                else:
                    out[eid].in_progress = n
            for eid in ids:
                rows = conn.execute(
                    select(J.created_at, J.started_at, J.completed_at)
                    .where(
                        J.endpoint_id == eid,
                        J.completed_at >= since,
                        J.started_at.is_not(None),
                    )
                    # Newest created first: the endpoint's index walked backwards, stopping at SAMPLE.
                    .order_by(J.created_at.desc())
                    .limit(SAMPLE)
                ).all()
                fig = out[eid]
                fig.delay_ms = sorted((r.started_at - r.created_at) * 1000 for r in rows)
                fig.execution_ms = sorted((r.completed_at - r.started_at) * 1000 for r in rows)
            for eid, amount in conn.execute(
                select(L.endpoint_id, func.sum(L.amount_micros))
                .where(and_(L.endpoint_id.in_(ids), L.kind == "usage", L.created_at >= since))
                .group_by(L.endpoint_id)
            ):
                out[eid].cost_micros = int(amount or 0)
        return out

    def job_times(
        self, endpoint_id: str, since: float, limit: int
    ) -> list[tuple[float, float | None, float | None]]:
        """(created_at, started_at, completed_at) of the newest `limit` jobs of the endpoint created at or
        after `since`, oldest first."""
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(J.created_at, J.started_at, J.completed_at)
                .where(J.endpoint_id == endpoint_id, J.created_at >= since)
                .order_by(J.created_at.desc())
                .limit(limit)
            ).all()
        return [(r.created_at, r.started_at, r.completed_at) for r in reversed(rows)]

    def state_events(self, endpoint_id: str, since: float, limit: int) -> list[tuple[str, str, float]]:
        """(worker id, to-state, at) of the newest `limit` worker transitions of the endpoint at or after
        `since`, oldest first."""
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(E.worker_id, E.to_state, E.at)
                .where(E.endpoint_id == endpoint_id, E.at >= since)
                .order_by(E.at.desc(), E.id.desc())
                .limit(limit)
            ).all()
        return [(r.worker_id, r.to_state, r.at) for r in reversed(rows)]

    def recent_load(
        self, endpoint_id: str, arrived_since: float, finished_since: float
    ) -> tuple[int, float | None]:
        """(normal-priority jobs created at or after `arrived_since`, the mean execution time of the jobs
        created at or after `finished_since` that have finished; None when none has). One query over the
        endpoint's jobs index."""
        ran = and_(J.started_at.is_not(None), J.completed_at.is_not(None))
        fresh = and_(J.created_at >= arrived_since, J.low_priority.is_(False))
        with self.reader.connect() as conn:
            arrived, total_s, finished = conn.execute(
                select(
                    func.count(case((fresh, 1))),
                    func.sum(case((ran, J.completed_at - J.started_at))),
                    func.count(case((ran, 1))),
                ).where(J.endpoint_id == endpoint_id, J.created_at >= min(arrived_since, finished_since))
            ).one()
        mean = float(total_s) / int(finished) if finished else None
        return int(arrived or 0), mean
