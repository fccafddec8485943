"""What one lifecycle tick looks at: the store's endpoints, workers, held jobs, queue counts and
accounts, and what runs where (`control.fleet`: this machine's backends, the hosts' reports). Read
only, but for a count it publishes (each endpoint's non-stopped workers, `Presence.counted`) and the
hosts it finds silent past their timeout, which it marks LOST."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ember.control.fleet import Fleet, Observation
from ember.control.signals import Signals
from ember.core.specs import EndpointSpec, spec_from_json
from ember.core.workers import WorkerState
from ember.store.facade import Store
from ember.store.rows import AccountRow, EndpointRow, WorkerRow
from ember.store.sweeps import QueueStats

log = logging.getLogger("ember.lifecycle")
# A worker that fails a start-up check reports it while it starts (then exits).
_STARTING = frozenset({WorkerState.INITIALIZING, WorkerState.IDLE, WorkerState.RUNNING})


@dataclass
class Snapshot:
    now: float
    endpoints: Sequence[EndpointRow]
    specs: dict[str, EndpointSpec]
    workers: Sequence[WorkerRow]
    held: dict[str, dict[str, float]]  # worker id -> {job id -> started_at} of its IN_PROGRESS jobs
    stats: dict[str, QueueStats]  # endpoint id -> its queue's counts
    accounts: dict[str, AccountRow]
    seen: Observation = field(default_factory=Observation)  # what runs where (`control.fleet`)
    # Workers with a launch or stop in flight when the snapshot began: what `observed` says of them may
    # predate that operation's end, so health checks must not judge them from this snapshot.
    ops_in_flight: frozenset[str] = frozenset()


async def take(
    store: Store,
    fleet: Fleet,
    signals: Signals,
    now: float,
    ops_in_flight: frozenset[str],
    keep: Snapshot | None = None,
) -> Snapshot:
    """The store's endpoints and workers, and what the backends observe. With `keep`, only the
    endpoints and workers are read again (what placement and the warm sweep look at) and the rest is
    `keep`'s: a cold start's placement follows its scaling without a second full look (jobs,
    accounts, the backends)."""
    s = store
    endpoints = list(await s.run(s.endpoints.list))
    workers = list(await s.run(lambda: s.workers.list()))
    signals.presence.counted(_count_by_endpoint(workers))
    specs = {e["id"]: spec_from_json(e["spec"]) for e in endpoints}
    if keep is not None:
        return replace(keep, now=now, endpoints=endpoints, specs=specs, workers=workers)
    snap = Snapshot(
        now=now,
        endpoints=endpoints,
        specs=specs,
        workers=workers,
        held=await s.run(s.sweeps.held_by_worker),
        stats=await s.run(s.sweeps.queue_stats),
        accounts={a["id"]: a for a in await s.run(s.accounts.all)},
        ops_in_flight=ops_in_flight,
    )
    if not s.inline:  # workers may ping other processes on the database (`Presence.merge`)
        live = [w["id"] for w in workers if w["state"] != WorkerState.STOPPED]
        signals.presence.merge(await s.run(s.pings.latest, live))
        launched = {w["id"]: w["launched_at"] or 0.0 for w in workers if w["state"] in _STARTING}
        signals.presence.merge_failed_checks(await s.run(s.pings.failed_checks, launched))
    await fleet.refresh(now)
    snap.seen = await fleet.observe(workers)
    return snap


def _count_by_endpoint(workers: Sequence[WorkerRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in workers:
        counts[w["endpoint_id"]] = counts.get(w["endpoint_id"], 0) + 1
    return counts
