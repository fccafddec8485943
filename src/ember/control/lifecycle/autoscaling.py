"""The lifecycle's scaling step, per endpoint: builds the scaler's Observation (`core.scaler.observe`),
calls `core.scaler.decide`, records the decision (target, reason, memory, status line) and carries out
`core.reconcile.plan`: new THROTTLED workers to place, stops, and OUTDATED marks for a rollout. The
workers of deleted endpoints are stopped here too."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence

from ember.control.forecast import ForecastInputs
from ember.control.launcher import backend_for_spec
from ember.control.lifecycle.ops import WorkerOps
from ember.control.lifecycle.placement import model_ready
from ember.control.lifecycle.snapshot import Snapshot
from ember.control.model_preparer import ModelPreparer
from ember.core.ids import make_id
from ember.core.limits import account_room, max_workers
from ember.core.reconcile import STOP_MAKE_ROOM, STOP_SCALE_DOWN, Plan, WorkerView, plan
from ember.core.scaler import (
    Decision,
    Memory,
    Observation,
    Reason,
    WorkerFacts,
    decide,
    memory_from_json,
    memory_to_json,
    observe,
    status_line,
)
from ember.core.specs import EndpointSpec
from ember.core.workers import WorkerState, WorkerType
from ember.store.endpoints import ScaleEvent
from ember.store.rows import EndpointRow, WorkerRow

log = logging.getLogger("ember.lifecycle")
_S = WorkerState


class Autoscaling:
    def __init__(self, ops: WorkerOps, forecast: ForecastInputs, preparer: ModelPreparer | None) -> None:
        self.ops = ops
        self.store = ops.store
        self.cfg = ops.cfg
        self.forecast = forecast  # PREDICTIVE endpoints' recent load and cold start
        self.preparer = preparer

    async def step(self, snap: Snapshot) -> None:
        """Stop the workers of deleted endpoints, then scale every endpoint in turn (each sees the
        account's workers that the ones before it created)."""
        by_endpoint: dict[str, list[WorkerRow]] = {}
        for w in snap.workers:
            by_endpoint.setdefault(w["endpoint_id"], []).append(w)
        live_ids = {e["id"] for e in snap.endpoints}
        for ep_id, ws in by_endpoint.items():
            if ep_id not in live_ids:
                for w in ws:
                    if not self.ops.busy(w["id"]) and not snap.held.get(w["id"]):
                        await self.ops.stop(w, "endpoint deleted")
        per_account: dict[str, int] = {}
        for w in snap.workers:
            per_account[w["account_id"]] = per_account.get(w["account_id"], 0) + 1
        for ep in snap.endpoints:
            await self._scale_endpoint(ep, snap, by_endpoint.get(ep["id"], []), per_account)

    async def _scale_endpoint(
        self,
        ep: EndpointRow,
        snap: Snapshot,
        workers: list[WorkerRow],
        per_account: dict[str, int],
    ) -> None:
        """Observe the endpoint, decide its target, record the decision, then carry out the plan that
        moves its workers toward it. `per_account` counts each account's workers, new ones included."""
        spec = snap.specs[ep["id"]]
        release = ep["release"]
        account = snap.accounts.get(ep["account_id"])
        balance = int(account["balance_micros"]) if account else 0
        limit = max_workers(balance, self.cfg.limit_table)
        room = account_room(limit, per_account.get(ep["account_id"], 0) - len(workers))
        obs = await self.forecast.observe(_observation(ep, snap, workers), ep["id"], spec.scaling)
        mem = memory_from_json(json.loads(ep["scale_memory"] or "{}"))
        zero = balance <= 0
        if release == 0:  # nothing built yet: nothing to run
            decision = Decision(0, Reason.NO_RELEASE, mem)
        else:
            decision = decide(spec.scaling, obs, mem, account_room=room, zero_balance=zero)
        status = status_line(decision.reason, zero_balance=zero, account_limit=limit)
        await self._record(ep, snap.now, obs, decision, mem, status)
        # Recycled and stopping workers take no new job: they are not the plan's to act on either (the
        # health step stops them).
        workers = [w for w in workers if not w["recycle"]]
        views = [
            WorkerView(
                w["id"],
                _S(w["state"]),
                WorkerType(w["type"]),
                w["release"],
                bool(snap.held.get(w["id"])),
                w["idle_since"],
            )
            for w in workers
        ]
        steps = plan(decision.target, views, release=release, workers_min=spec.scaling.workers_min)
        if not steps.empty:
            await self._carry_out(steps, ep, spec, {w["id"]: w for w in workers}, snap.now, zero, per_account)

    async def _record(
        self,
        ep: EndpointRow,
        now: float,
        obs: Observation,
        decision: Decision,
        mem: Memory,
        status: str | None,
    ) -> None:
        """Store the decision when it changed anything (a new target or reason is logged and becomes a
        scale event), else only a status line that changed."""
        s = self.store
        changed = decision.target != ep["desired_workers"] or decision.reason != ep["scale_reason"]
        if changed or decision.memory != mem:
            if changed:
                log.info(
                    "scale_decision endpoint=%s target=%d reason=%s queued=%d workers=%d",
                    ep["id"],
                    decision.target,
                    decision.reason,
                    obs.queued,
                    obs.workers,
                    extra={"endpoint_id": ep["id"]},
                )
            event = ScaleEvent(now, obs.queued, obs.workers) if changed else None
            await s.run(
                lambda: s.endpoints.set_scaling(
                    ep["id"],
                    decision.target,
                    decision.reason,
                    memory_to_json(decision.memory),
                    status,
                    event,
                )
            )
        elif status is not None and status != ep["status_message"]:
            await s.run(s.endpoints.set_status, ep["id"], status)

    async def _carry_out(
        self,
        steps: Plan,
        ep: EndpointRow,
        spec: EndpointSpec,
        rows: Mapping[str, WorkerRow],
        now: float,
        zero_balance: bool,
        per_account: dict[str, int],
    ) -> None:
        """Mark, stop and create workers as the plan says. Workers being launched or stopped right now
        count, but are not acted on twice; none is created while the balance is exhausted or the
        endpoint's model is being fetched."""
        ops = self.ops
        s = self.store
        ops.acted += 1
        for wid in steps.outdate:
            if ops.busy(wid):
                continue
            with ops.signals.in_txn(("r", wid)):
                prev = await s.run(s.workers.transition, wid, _S.OUTDATED, now, "a new release is serving")
            if prev:
                ids = {"worker_id": wid, "endpoint_id": ep["id"]}
                log.info("worker_transition worker=%s from=%s to=OUTDATED", wid, prev, extra=ids)
                ops.signals.retire(wid)
        for wid, why in steps.stop:
            if not ops.busy(wid):
                # A ready flex worker that scales down may leave its runtime warm for the next one.
                w = rows[wid]
                warm = why in (STOP_SCALE_DOWN, STOP_MAKE_ROOM) and w["state"] == _S.IDLE.value
                await ops.stop(w, why, park=warm and w["type"] == WorkerType.FLEX.value)
        if steps.launch and not zero_balance and not await model_ready(self.store, self.preparer, ep, spec):
            return
        for wtype in steps.launch:
            if zero_balance:
                break
            await self._create_worker(ep, spec, wtype, now)
            per_account[ep["account_id"]] = per_account.get(ep["account_id"], 0) + 1

    async def _create_worker(
        self, ep: EndpointRow, spec: EndpointSpec, wtype: WorkerType, now: float
    ) -> None:
        """A new THROTTLED worker record: the placement step gives it a place to run."""
        self.ops.acted += 1
        s = self.store
        wid = make_id("worker", uuid.uuid4().hex[:12])
        backend = backend_for_spec(spec, self.ops.fleet.kinds(), self.cfg.default_backend)
        await s.run(
            lambda: s.workers.create(
                id=wid,
                endpoint_id=ep["id"],
                account_id=ep["account_id"],
                release=ep["release"],
                type=wtype.value,
                state=_S.THROTTLED,
                now=now,
                reason="waiting for a place to run",
                gpu_type=None,
                gpu_count=spec.gpu_count if spec.gpu_type_ids else 0,
                gpu_devices="",
                backend=backend,
                launched=False,
            )
        )
        log.info(
            "worker_created worker=%s endpoint=%s type=%s release=%s",
            wid,
            ep["id"],
            wtype.value,
            ep["release"],
            extra={"worker_id": wid, "endpoint_id": ep["id"]},
        )


def _observation(ep: EndpointRow, snap: Snapshot, workers: Sequence[WorkerRow]) -> Observation:
    """The scaler's Observation of the endpoint (`core.scaler.observe`) from the snapshot's rows."""
    stats = snap.stats.get(ep["id"])
    facts = [
        WorkerFacts(
            release=w["release"],
            state=_S(w["state"]),
            state_since=w["state_since"],
            idle_since=w["idle_since"],
            busy=bool(snap.held.get(w["id"])),
            recycle=bool(w["recycle"]),
        )
        for w in workers
    ]
    return observe(
        snap.now,
        ep["release"],
        facts,
        queued=stats.queued if stats else 0,
        queued_low_priority=stats.queued_low if stats else 0,
        oldest_created_at=stats.oldest_created_at if stats else None,
        in_progress=stats.in_progress if stats else 0,
    )
