"""The reconciler: each tick it observes the backends and the store, calls the pure decisions
(`core.scaler.decide`, `core.reconcile.plan`, `core.placement.place`, `core.backoff`) and carries them
out: health (exits, lost pings, stuck jobs), scaling, rollouts, restarts with backoff, placement,
launches and stops. Requests never do this; they only wake the loop."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ember.backends.base import Backend, Observed, WarmParking
from ember.control.clock import Clock
from ember.control.forecast import ForecastInputs
from ember.control.launcher import STARTING_HANDLER, LaunchConfig, backend_for_spec, known_python, launch_spec
from ember.control.signals import Signals
from ember.core import backoff
from ember.core.errors import EmberError
from ember.core.ids import make_id
from ember.core.jobs import LOST_WORKER_REQUEUES, RETENTION_RUN_S, JobState, dropped_jobs
from ember.core.limits import DEFAULT_TABLE, account_room, max_workers
from ember.core.placement import Host, Pending, place
from ember.core.reconcile import STOP_MAKE_ROOM, STOP_SCALE_DOWN, WorkerView, plan
from ember.core.scaler import Observation, Reason, decide, memory_from_json, memory_to_json
from ember.core.specs import EndpointSpec, spec_from_json
from ember.core.workers import LIVE, WorkerState, WorkerType, is_lost
from ember.store.endpoints import ScaleEvent
from ember.store.facade import Store

log = logging.getLogger("ember.lifecycle")
_S = WorkerState
# A restarted worker that stays up this long is healthy again: its backoff starts over.
HEALTHY_RESET_S = 120.0
RECYCLED = "recycled after its job (refresh_worker / stopPod)"


def _ids(w: Mapping[Any, Any]) -> dict[str, Any]:
    """A worker row's ids, for a log line's `extra`."""
    return {"worker_id": w["id"], "endpoint_id": w["endpoint_id"]}


@dataclass
class LifecycleConfig:
    ping_timeout_s: float = 10.0
    init_timeout_s: float = 420.0
    stop_grace_s: float = 10.0
    stuck_grace_s: float = 5.0
    # A job a worker's pings leave out for this long was dropped (never received): re-queued or failed.
    dropped_grace_s: float = 10.0
    lost_worker_requeues: int = LOST_WORKER_REQUEUES
    retention_run_s: float = RETENTION_RUN_S
    default_backend: str = "local"
    hosts: Sequence[Host] = ()
    limit_table: Any = DEFAULT_TABLE
    backoff_base_s: float = backoff.BASE_DELAY_S


@dataclass
class _Snapshot:
    now: float
    endpoints: Sequence[Mapping[Any, Any]]
    specs: dict[str, EndpointSpec]
    workers: Sequence[Mapping[Any, Any]]
    held: dict[str, dict[str, float]]  # worker id -> {job id -> started_at} of its IN_PROGRESS jobs
    stats: dict[str, Any]
    accounts: dict[str, Mapping[Any, Any]]
    observed: dict[str, Observed] = field(default_factory=dict)
    # Workers with a launch or stop in flight when the snapshot began: what `observed` says of them may
    # predate that operation's end, so health checks must not judge them from this snapshot.
    ops_in_flight: frozenset[str] = frozenset()


class Lifecycle:
    def __init__(
        self,
        store: Store,
        backends: Mapping[str, Backend],
        clock: Clock,
        signals: Signals,
        cfg: LifecycleConfig,
        launch: LaunchConfig,
        preparer: Any = None,  # control.models.ModelPreparer: gates launches on the endpoint's model
    ) -> None:
        self.store = store
        self.backends = backends
        self.clock = clock
        self.signals = signals
        self.cfg = cfg
        self.launch_cfg = launch
        self.preparer = preparer
        self.forecast = ForecastInputs(store)  # PREDICTIVE endpoints' recent load and cold start
        self._busy_ops: dict[str, asyncio.Task[None]] = {}  # worker id -> launch/stop in flight
        self._stuck_since: dict[str, float] = {}
        self._missing_since: dict[str, dict[str, float]] = {}  # worker id -> job id -> first ping without it
        # When this control plane's first tick ran: workers cannot ping a control plane that is down, so
        # their silence counts from here at the earliest (a restart adopts them instead of failing them).
        self._started_at: float | None = None
        self._acted = 0  # bumped by every step that changes the store
        self._ticks = 0  # ticks begun

    # ---- the tick ------------------------------------------------------------------------------------
    async def tick(self) -> None:
        """Health, then scaling and planning, then placement; each step sees what the previous one
        changed (the snapshot is taken again only when a step acted; placement reads only what it
        uses again: endpoints and workers)."""
        self._ticks += 1
        if self._started_at is None:
            self._started_at = self.clock.now()
        snap = await self._snapshot()
        acted = self._acted
        await self._health(snap)
        if self._acted != acted:
            snap, acted = await self._snapshot(), self._acted
        await self._scale_and_plan(snap)
        if self._acted != acted:
            snap = await self._snapshot(keep=snap)
        await self._place(snap)
        await self._sweep_warm(snap)

    async def _snapshot(self, keep: _Snapshot | None = None) -> _Snapshot:
        """The store's endpoints and workers, and what the backends observe. With `keep`, only the
        endpoints and workers are read again (what placement and the warm sweep look at) and the rest is
        `keep`'s: a cold start's placement follows its scaling without a second full look (jobs,
        accounts, the backends)."""
        s = self.store
        now = self.clock.now()
        ops_in_flight = frozenset(self._busy_ops)
        endpoints = list(await s.run(s.endpoints.list))
        workers = list(await s.run(lambda: s.workers.list()))
        self._count_live(workers)
        specs = {e["id"]: spec_from_json(e["spec"]) for e in endpoints}
        if keep is not None:
            return replace(keep, now=now, endpoints=endpoints, specs=specs, workers=workers)
        snap = _Snapshot(
            now=now,
            endpoints=endpoints,
            specs=specs,
            workers=workers,
            held=await s.run(s.jobs.held_by_worker),
            stats=await s.run(s.jobs.queue_stats),
            accounts={a["id"]: a for a in await s.run(s.accounts.all)},
            ops_in_flight=ops_in_flight,
        )
        for name, backend in self.backends.items():
            try:
                for o in await backend.observe():
                    snap.observed[o.worker_id] = o
            except EmberError as exc:
                log.warning("observe_failed backend=%s error=%s", name, exc)
                # Without an observation we must not conclude that its workers died.
                for w in workers:
                    if w["backend"] == name:
                        snap.observed.setdefault(
                            w["id"], Observed(w["id"], w["endpoint_id"], w["release"], True)
                        )
        return snap

    def _count_live(self, workers: Sequence[Mapping[Any, Any]]) -> None:
        counts: dict[str, int] = {}
        for w in workers:
            counts[w["endpoint_id"]] = counts.get(w["endpoint_id"], 0) + 1
        self.signals.live_workers = counts

    # ---- health --------------------------------------------------------------------------------------
    async def _health(self, snap: _Snapshot) -> None:
        known = {w["id"] for w in snap.workers}
        for w in snap.workers:
            wid = w["id"]
            if wid in self._busy_ops or wid in snap.ops_in_flight:
                continue
            if w["state"] not in {s.value for s in LIVE}:
                continue
            obs = snap.observed.get(wid)
            if obs is None or not obs.running:
                code = None if obs is None else obs.exit_code
                if w["recycle"] and (code == 0 or code is None):
                    await self._finish_stop(w, RECYCLED)
                    continue
                detail = (
                    f"exited unexpectedly (exit code {code})" if obs is not None else "is no longer running"
                )
                fitness = self.signals.fitness.pop(wid, None)
                await self._fail(w, f"worker {wid} {fitness or detail}", snap.now)
                continue
            last_seen = w["last_seen_at"]
            ping = self.signals.pings.get(wid)
            if ping is not None and ping[0] < (w["launched_at"] or 0.0):
                ping = None  # from this worker id's previous run: it was restarted since
            if ping is not None and (last_seen is None or ping[0] > last_seen):
                last_seen = ping[0]
            if last_seen is not None and self._started_at is not None:
                last_seen = max(last_seen, self._started_at)
            why = is_lost(
                last_seen_at=last_seen,
                launched_at=w["launched_at"] or w["state_since"],
                now=snap.now,
                ping_timeout_s=self.cfg.ping_timeout_s,
                init_timeout_s=self.cfg.init_timeout_s,
                state=_S(w["state"]),
            )
            if why:
                await self._fail(w, f"worker {wid} {why}", snap.now, kill=True)
                continue
            if w["recycle"] and not snap.held.get(wid):
                # It asked to be replaced (stopPod) and has finished its jobs; SDKs only say so and keep
                # polling, so stop it now (SIGTERM, then SIGKILL after the grace period).
                await self._stop(w, RECYCLED)
                continue
            await self._check_stuck(w, ping, snap.now)
            await self._check_dropped(w, ping, snap)
            if (
                w["failures"]
                and w["state"] in (_S.IDLE.value, _S.RUNNING.value)
                and snap.now - (w["launched_at"] or snap.now) > HEALTHY_RESET_S
            ):
                await self.store.run(
                    lambda w=w: self.store.workers.update(
                        w["id"], failures=0, first_failure_at=None, next_attempt_at=None
                    )
                )
        # Orphans: runtime workers with no live record (e.g. a stop interrupted by a crash).
        live_ids = {w["id"] for w in snap.workers if w["state"] in {s.value for s in LIVE}}
        for wid in snap.observed:
            if wid not in live_ids and wid not in self._busy_ops:
                row = None if wid in known else await self.store.run(self.store.workers.get, wid)
                backend_name = row["backend"] if row else None
                for name, backend in self.backends.items():
                    if backend_name in (None, name):
                        log.info("orphan_stop worker=%s backend=%s", wid, name, extra={"worker_id": wid})
                        self._spawn(wid, backend.stop(wid, self.cfg.stop_grace_s))

    async def _check_stuck(
        self, w: Mapping[Any, Any], ping: tuple[float, frozenset[str]] | None, now: float
    ) -> None:
        """A worker still holding a job that was cancelled or timed out (a sync handler ignoring job-stop)
        is stopped after a grace period, so the platform enforces the execution timeout."""
        if ping is None or not ping[1]:
            self._stuck_since.pop(w["id"], None)
            return
        finals = 0
        for job_id in ping[1]:
            row = await self.store.run(self.store.jobs.get, job_id)
            if row is not None and row["worker_id"] == w["id"] and row["state"] in ("CANCELLED", "TIMED_OUT"):
                finals += 1
        if not finals:
            self._stuck_since.pop(w["id"], None)
            return
        since = self._stuck_since.setdefault(w["id"], now)
        if now - since >= self.cfg.stuck_grace_s:
            self._stuck_since.pop(w["id"], None)
            log.info("stuck_worker_stop worker=%s", w["id"], extra=_ids(w))
            await self._stop(w, "stopped: it kept running a job that was cancelled or timed out")

    async def _check_dropped(
        self, w: Mapping[Any, Any], ping: tuple[float, frozenset[str]] | None, snap: _Snapshot
    ) -> None:
        """Jobs recorded as held by a live worker that its pings keep leaving out were never received
        (say, a job handed over in an answer a crash cut off): re-queued, or failed after their re-queue."""
        dropped, self._missing_since[w["id"]] = dropped_jobs(
            snap.held.get(w["id"], {}), ping, self._missing_since.get(w["id"], {}), self.cfg.dropped_grace_s
        )
        if dropped:
            self._acted += 1
            log.info("jobs_dropped worker=%s jobs=%s", w["id"], ",".join(dropped), extra=_ids(w))
            reason = f"worker {w['id']} never reported holding the job (it was handed over but not received)"
            await self._release_jobs(w["id"], reason, snap.now, only=dropped)

    async def _fail(self, w: Mapping[Any, Any], reason: str, now: float, kill: bool = False) -> None:
        self._acted += 1
        s = self.store
        state = backoff.Backoff(w["failures"], w["first_failure_at"], now if w["failures"] else None)
        state = state.record_failure(now)
        prev = await s.run(
            lambda: s.workers.transition(
                w["id"],
                _S.UNHEALTHY,
                now,
                reason,
                failures=state.failures,
                first_failure_at=state.first_failure_at,
                next_attempt_at=now + backoff.delay_s(state.failures, base_s=self.cfg.backoff_base_s),
                recycle=False,
                idle_since=None,
            )
        )
        if prev is None:
            return
        log.info(
            "worker_transition worker=%s from=%s to=UNHEALTHY reason=%r", w["id"], prev, reason, extra=_ids(w)
        )
        await self._release_jobs(w["id"], reason, now)
        backend = self.backends.get(w["backend"])
        if backend is not None:
            self._spawn(w["id"], backend.stop(w["id"], 0.0 if not kill else 1.0))

    async def _release_jobs(
        self, worker_id: str, reason: str, now: float, only: Sequence[str] | None = None
    ) -> None:
        s = self.store
        again, failed = await s.run(
            lambda: s.jobs.release_worker_jobs(
                worker_id, reason, self.cfg.lost_worker_requeues, now, self.cfg.retention_run_s, only
            )
        )
        for job_id in failed:
            self.signals.job_finished(job_id)
        if not (again or failed):
            return
        row = await s.run(s.workers.get, worker_id)
        endpoint_id = row["endpoint_id"] if row is not None else None
        if endpoint_id is not None:
            self.signals.metrics.jobs_finished(endpoint_id, JobState.FAILED.value, len(failed))
        if again:
            ids = {"worker_id": worker_id, "endpoint_id": endpoint_id}
            log.info("jobs_requeued worker=%s jobs=%s", worker_id, ",".join(again), extra=ids)
            if endpoint_id is not None:
                self.signals.jobs_queued(endpoint_id, len(again))

    # ---- scaling and planning ------------------------------------------------------------------------
    async def _scale_and_plan(self, snap: _Snapshot) -> None:
        by_endpoint: dict[str, list[Mapping[Any, Any]]] = {}
        for w in snap.workers:
            by_endpoint.setdefault(w["endpoint_id"], []).append(w)
        live_ids = {e["id"] for e in snap.endpoints}
        # Workers of deleted endpoints stop.
        for ep_id, ws in by_endpoint.items():
            if ep_id not in live_ids:
                for w in ws:
                    if w["id"] not in self._busy_ops and not snap.held.get(w["id"]):
                        await self._stop(w, "endpoint deleted")
        per_account: dict[str, int] = {}
        for w in snap.workers:
            per_account[w["account_id"]] = per_account.get(w["account_id"], 0) + 1
        for ep in snap.endpoints:
            await self._scale_endpoint(ep, snap, by_endpoint.get(ep["id"], []), per_account)

    async def _scale_endpoint(
        self,
        ep: Mapping[Any, Any],
        snap: _Snapshot,
        workers: list[Mapping[Any, Any]],
        per_account: dict[str, int],
    ) -> None:
        s = self.store
        spec = snap.specs[ep["id"]]
        release = ep["release"]
        account = snap.accounts.get(ep["account_id"])
        balance = int(account["balance_micros"]) if account else 0
        limit = max_workers(balance, self.cfg.limit_table)
        mine = len(workers)
        room = account_room(limit, per_account.get(ep["account_id"], 0) - mine)
        stats = snap.stats.get(ep["id"])
        # Recycled and stopping workers take no new job: they neither count toward the target nor stand
        # in a replacement's way (the health step stops them).
        workers = [w for w in workers if not w["recycle"]]
        current = [w for w in workers if w["release"] == release and w["state"] != _S.OUTDATED.value]
        busy = [w for w in current if snap.held.get(w["id"])]
        idle = [
            w["idle_since"] or w["state_since"]
            for w in current
            if w["state"] == _S.IDLE.value and not snap.held.get(w["id"])
        ]
        obs = Observation(
            now=snap.now,
            queued=stats.queued if stats else 0,
            queued_low_priority=stats.queued_low if stats else 0,
            oldest_wait_s=max(0.0, snap.now - stats.oldest_created_at)
            if stats and stats.oldest_created_at
            else 0.0,
            in_progress=stats.in_progress if stats else 0,
            workers=len(current),
            busy_workers=len(busy),
            idle_workers=tuple(idle),
        )
        obs = await self.forecast.observe(obs, ep["id"], spec.scaling)
        mem = memory_from_json(json.loads(ep["scale_memory"] or "{}"))
        zero = balance <= 0
        if release == 0:  # nothing built yet: nothing to run
            decision_target, reason, new_mem = 0, Reason.NO_RELEASE, mem
        else:
            d = decide(spec.scaling, obs, mem, account_room=room, zero_balance=zero)
            decision_target, reason, new_mem = d.target, d.reason, d.memory
        status = None
        if zero and reason == Reason.ZERO_BALANCE:
            status = "account balance is exhausted: no new workers start until credit is added"
        elif reason == Reason.ACCOUNT_LIMIT:
            status = f"limited by the account's maximum of {limit} workers (balance tier)"
        if decision_target != ep["desired_workers"] or reason != ep["scale_reason"] or new_mem != mem:
            if decision_target != ep["desired_workers"] or reason != ep["scale_reason"]:
                log.info(
                    "scale_decision endpoint=%s target=%d reason=%s queued=%d workers=%d",
                    ep["id"],
                    decision_target,
                    reason,
                    obs.queued,
                    obs.workers,
                    extra={"endpoint_id": ep["id"]},
                )
            changed = decision_target != ep["desired_workers"] or reason != ep["scale_reason"]
            event = ScaleEvent(snap.now, obs.queued, obs.workers) if changed else None
            await s.run(
                lambda: s.endpoints.set_scaling(
                    ep["id"],
                    decision_target,
                    reason,
                    memory_to_json(new_mem),
                    status,
                    event,
                )
            )
        elif status is not None and status != ep["status_message"]:
            await s.run(s.endpoints.set_status, ep["id"], status)
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
        steps = plan(decision_target, views, release=release, workers_min=spec.scaling.workers_min)
        if steps.empty:
            return
        rows = {w["id"]: w for w in workers}
        # Workers being launched or stopped right now count, but are not acted on twice.
        self._acted += 1
        for wid in steps.outdate:
            if wid in self._busy_ops:
                continue
            prev = await s.run(
                lambda wid=wid: s.workers.transition(wid, _S.OUTDATED, snap.now, "a new release is serving")
            )
            if prev:
                ids = {"worker_id": wid, "endpoint_id": ep["id"]}
                log.info("worker_transition worker=%s from=%s to=OUTDATED", wid, prev, extra=ids)
                self.signals.retire(wid)
        for wid, why in steps.stop:
            if wid not in self._busy_ops:
                # A ready flex worker that scales down may leave its runtime warm for the next one.
                w = rows[wid]
                warm = why in (STOP_SCALE_DOWN, STOP_MAKE_ROOM) and w["state"] == _S.IDLE.value
                await self._stop(w, why, park=warm and w["type"] == WorkerType.FLEX.value)
        if steps.launch and not zero and not await self._model_ready(ep, spec):
            return
        for wtype in steps.launch:
            if zero:
                break
            await self._create_worker(ep, spec, wtype, snap.now)
            per_account[ep["account_id"]] = per_account.get(ep["account_id"], 0) + 1

    async def _model_ready(self, ep: Mapping[Any, Any], spec: EndpointSpec) -> bool:
        """Workers of an endpoint whose model is still being fetched are neither created nor started
        (so nobody is billed for the download); the endpoint's status line says how far it has got."""
        if self.preparer is None:
            return True
        ok, why = await self.preparer.ready(ep, spec)
        current = ep["status_message"]
        if not ok and why != current:
            await self.store.run(self.store.endpoints.set_status, ep["id"], why)
        elif ok and self.preparer.owns_status(current):
            await self.store.run(self.store.endpoints.set_status, ep["id"], "")
        return bool(ok)

    async def _create_worker(
        self, ep: Mapping[Any, Any], spec: EndpointSpec, wtype: WorkerType, now: float
    ) -> None:
        self._acted += 1
        s = self.store
        wid = make_id("worker", uuid.uuid4().hex[:12])
        backend = backend_for_spec(spec, self.backends, self.cfg.default_backend)
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

    # ---- placement and launch ------------------------------------------------------------------------
    async def _place(self, snap: _Snapshot) -> None:
        pending: list[Pending] = []
        rows: dict[str, Mapping[Any, Any]] = {}
        used: set[tuple[str, str, str]] = set()
        live_endpoints = {e["id"] for e in snap.endpoints}
        for w in snap.workers:
            state = w["state"]
            holds = w["id"] in self._busy_ops or state in {s.value for s in LIVE}
            if holds and w["gpu_devices"]:
                used.update(("local", w["gpu_type"], d) for d in w["gpu_devices"].split(","))
            if w["id"] in self._busy_ops:
                continue
            if w["endpoint_id"] not in live_endpoints:
                continue
            spec = snap.specs[w["endpoint_id"]]
            if state == _S.THROTTLED.value or (state == _S.UNHEALTHY.value and self._due(w, snap.now)):
                if state == _S.UNHEALTHY.value and backoff.give_up(w["first_failure_at"], snap.now):
                    await self._finish_stop(w, "gave up: unhealthy for 7 days")
                    await self.store.run(
                        self.store.endpoints.set_status,
                        w["endpoint_id"],
                        f"worker {w['id']} kept failing for 7 days: {w['reason']}",
                    )
                    continue
                ep_row = next(e for e in snap.endpoints if e["id"] == w["endpoint_id"])
                if not await self._model_ready(ep_row, spec):
                    continue
                rows[w["id"]] = w
                pending.append(
                    Pending(
                        w["id"], w["endpoint_id"], tuple(spec.gpu_type_ids), spec.gpu_count, w["state_since"]
                    )
                )
        if not pending:
            return
        result = place(pending, self.cfg.hosts, used)
        for a in result.assigned:
            w = rows[a.worker_id]
            await self._launch(w, snap.specs[w["endpoint_id"]], a.gpu_type, a.device_ids, snap.now)
        for wid in result.throttled:
            w = rows[wid]
            if w["state"] == _S.UNHEALTHY.value:
                await self.store.run(
                    lambda w=w: self.store.workers.transition(
                        w["id"], _S.THROTTLED, snap.now, "restart waits for a free GPU"
                    )
                )

    def _due(self, w: Mapping[Any, Any], now: float) -> bool:
        return w["next_attempt_at"] is None or w["next_attempt_at"] <= now

    async def _launch(
        self,
        w: Mapping[Any, Any],
        spec: EndpointSpec,
        gpu_type: str | None,
        devices: Sequence[str],
        now: float,
    ) -> None:
        self._acted += 1
        s = self.store
        key = "wk_" + secrets.token_hex(20)
        # A local start whose python is known prepares nothing: it is starting its handler already.
        local = w["backend"] != "docker" and known_python(self.launch_cfg, spec)
        prev = await s.run(
            lambda: s.workers.transition(
                w["id"],
                _S.INITIALIZING,
                now,
                STARTING_HANDLER if local else "starting",
                gpu_type=gpu_type,
                gpu_devices=",".join(devices),
                launched_at=now,
                last_seen_at=None,
                idle_since=None,
                recycle=False,
            )
        )
        if prev is None:
            return
        log.info(
            "worker_transition worker=%s from=%s to=INITIALIZING gpu=%s devices=%s",
            w["id"],
            prev,
            gpu_type,
            ",".join(devices),
            extra=_ids(w),
        )
        await s.run(lambda: s.accounts.drop_worker_keys(w["id"]))
        await s.run(
            lambda: s.accounts.add_key(
                key,
                account_id=w["account_id"],
                kind="worker",
                endpoint_id=w["endpoint_id"],
                worker_id=w["id"],
                now=now,
            )
        )
        row = await s.run(s.workers.get, w["id"]) or w
        backend = self.backends.get(w["backend"])

        async def go() -> None:
            try:
                if backend is None:
                    raise EmberError(f"the {w['backend']} backend is not enabled on this server")
                ls = await launch_spec(self.launch_cfg, worker=row, spec=spec, key=key, backend=w["backend"])
                await backend.launch(ls)
            except EmberError as exc:
                await self._fail(row, f"worker {w['id']} could not start: {exc.message}", self.clock.now())
                self.signals.reconcile.set()

        # A launch that ends with nothing else having happened wakes no tick: the tick that placed it
        # has done the rest (on a cold start, another tick now would run beside the worker's start).
        self._spawn(w["id"], go(), quiet=True)

    # ---- stopping ------------------------------------------------------------------------------------
    async def _stop(self, w: Mapping[Any, Any], reason: str, park: bool = False) -> None:
        """Stop assigning jobs, then SIGTERM (the SDK drains), then record STOPPED. With `park`, a
        backend that keeps warm runtimes (Docker) may keep the worker's container paused for reuse."""
        self._acted += 1
        s = self.store
        await s.run(lambda: s.workers.update(w["id"], recycle=True))
        self.signals.retire(w["id"])
        backend = self.backends.get(w["backend"])

        async def go() -> None:
            if backend is not None and w["state"] not in (_S.THROTTLED.value, _S.UNHEALTHY.value):
                try:
                    if park and isinstance(backend, WarmParking):
                        await backend.park(w["id"], self.cfg.stop_grace_s)
                    else:
                        await backend.stop(w["id"], self.cfg.stop_grace_s)
                except EmberError as exc:
                    log.warning("stop_failed worker=%s error=%s", w["id"], exc, extra=_ids(w))
            await self._finish_stop(w, reason)

        self._spawn(w["id"], go())

    async def _sweep_warm(self, snap: _Snapshot) -> None:
        """Warm runtimes past their time, of a deleted endpoint or of a release no longer served go."""
        releases = {e["id"]: int(e["release"]) for e in snap.endpoints}
        for name, backend in self.backends.items():
            if isinstance(backend, WarmParking):
                try:
                    await backend.sweep_warm(releases)
                except EmberError as exc:
                    log.warning("warm_sweep_failed backend=%s error=%s", name, exc)

    async def _finish_stop(self, w: Mapping[Any, Any], reason: str) -> None:
        self._acted += 1
        s = self.store
        now = self.clock.now()
        prev = await s.run(lambda: s.workers.transition(w["id"], _S.STOPPED, now, reason))
        if prev:
            log.info(
                "worker_transition worker=%s from=%s to=STOPPED reason=%r",
                w["id"],
                prev,
                reason,
                extra=_ids(w),
            )
        await self._release_jobs(w["id"], f"worker {w['id']} stopped ({reason})", now)
        await s.run(s.accounts.drop_worker_keys, w["id"])
        self.signals.pings.pop(w["id"], None)
        self._missing_since.pop(w["id"], None)
        self.signals.reconcile.set()

    def _spawn(self, worker_id: str, coro: Any, quiet: bool = False) -> None:
        """Run a launch or stop of the worker in the background (one at a time per worker); the loop
        looks again when it ends, since ticks meanwhile left the worker alone. `quiet`: only when a
        tick began meanwhile."""
        if worker_id in self._busy_ops:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._busy_ops[worker_id] = task
        ticks = self._ticks

        def done(t: asyncio.Task[None]) -> None:
            self._busy_ops.pop(worker_id, None)
            if not t.cancelled() and t.exception() is not None:
                log.error(
                    "worker_op_failed worker=%s error=%r",
                    worker_id,
                    t.exception(),
                    extra={"worker_id": worker_id},
                )
            if not quiet or self._ticks != ticks or t.cancelled() or t.exception() is not None:
                self.signals.reconcile.set()

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for launches and stops in flight (used at shutdown and by tests)."""
        while self._busy_ops:
            await asyncio.gather(*list(self._busy_ops.values()), return_exceptions=True)
