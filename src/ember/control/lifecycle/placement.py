"""The lifecycle's placement step: THROTTLED workers, and UNHEALTHY ones whose backoff is over, get
GPUs (`core.placement.place`) and are launched in the background; an endpoint's workers wait while its
model is fetched, and a worker failing for 7 days is given up."""

from __future__ import annotations

import logging
import secrets

from ember.control.launcher import STARTING_HANDLER, LaunchConfig, known_python, launch_spec
from ember.control.lifecycle.ops import WorkerOps, ids
from ember.control.lifecycle.snapshot import Snapshot
from ember.control.model_preparer import ModelPreparer
from ember.core import backoff
from ember.core.errors import EmberError
from ember.core.hosts import LOCAL
from ember.core.placement import Assignment, Pending, place
from ember.core.specs import EndpointSpec
from ember.core.workers import LIVE, WorkerState
from ember.store.facade import Store
from ember.store.rows import EndpointRow, WorkerRow

log = logging.getLogger("ember.lifecycle")
_S = WorkerState
_LIVE_STATES = frozenset(s.value for s in LIVE)


async def model_ready(
    store: Store, preparer: ModelPreparer | None, ep: EndpointRow, spec: EndpointSpec
) -> bool:
    """Workers of an endpoint whose model is still being fetched are neither created nor started
    (so nobody is billed for the download); the endpoint's status line says how far it has got."""
    if preparer is None:
        return True
    ok, why = await preparer.ready(ep["account_id"], spec)
    current = ep["status_message"]
    if not ok and why != current:
        await store.run(store.endpoints.set_status, ep["id"], why)
    elif ok and preparer.owns_status(current):
        await store.run(store.endpoints.set_status, ep["id"], "")
    return bool(ok)


class Placement:
    def __init__(self, ops: WorkerOps, launch: LaunchConfig, preparer: ModelPreparer | None) -> None:
        self.ops = ops
        self.store = ops.store
        self.launch_cfg = launch
        self.preparer = preparer

    async def place(self, snap: Snapshot) -> None:
        """Give the waiting workers of live endpoints GPUs, launch those placed; a restart that finds
        none free goes back to THROTTLED."""
        ops = self.ops
        pending: list[Pending] = []
        rows: dict[str, WorkerRow] = {}
        used: set[tuple[str, str, str]] = set()
        load: dict[tuple[str, str], int] = {}
        live_endpoints = {e["id"] for e in snap.endpoints}
        for w in snap.workers:
            state = w["state"]
            holds = ops.busy(w["id"]) or state in _LIVE_STATES
            gpu_type = w["gpu_type"]  # set whenever devices are (placement gives both)
            if holds and w["gpu_devices"] and gpu_type is not None:
                used.update((w["host"], gpu_type, d) for d in w["gpu_devices"].split(","))
            if holds:
                key = (w["endpoint_id"], w["host"])
                load[key] = load.get(key, 0) + 1
            if ops.busy(w["id"]):
                continue
            if w["endpoint_id"] not in live_endpoints:
                continue
            spec = snap.specs[w["endpoint_id"]]
            if state == _S.THROTTLED.value or (state == _S.UNHEALTHY.value and _due(w, snap.now)):
                if state == _S.UNHEALTHY.value and backoff.give_up(w["first_failure_at"], snap.now):
                    await ops.finish_stop(w, "gave up: unhealthy for 7 days")
                    await self.store.run(
                        self.store.endpoints.set_status,
                        w["endpoint_id"],
                        f"worker {w['id']} kept failing for 7 days: {w['reason']}",
                    )
                    continue
                ep_row = next(e for e in snap.endpoints if e["id"] == w["endpoint_id"])
                if not await model_ready(self.store, self.preparer, ep_row, spec):
                    continue
                rows[w["id"]] = w
                pending.append(
                    Pending(
                        w["id"],
                        w["endpoint_id"],
                        tuple(spec.gpu_type_ids),
                        spec.gpu_count,
                        w["state_since"],
                        w["backend"],
                        # A network volume and the model cache are this machine's directories.
                        LOCAL if spec.network_volume_id or spec.model_name else None,
                    )
                )
        if not pending:
            return
        result = place(pending, ops.fleet.hosts(), used, load)
        for a in result.assigned:
            w = rows[a.worker_id]
            await self._launch(w, snap.specs[w["endpoint_id"]], a, snap.now)
        for wid in result.throttled:
            w = rows[wid]
            if w["state"] == _S.UNHEALTHY.value:
                await self.store.run(
                    self.store.workers.transition,
                    w["id"],
                    _S.THROTTLED,
                    snap.now,
                    "restart waits for a free GPU",
                )

    async def _launch(
        self,
        w: WorkerRow,
        spec: EndpointSpec,
        where: Assignment,
        now: float,
    ) -> None:
        """INITIALIZING on its host and devices with a fresh worker key, then the launch in the
        background, by this machine's backend or the host's agent (a launch that fails fails the
        worker)."""
        ops = self.ops
        ops.acted += 1
        s = self.store
        key = "wk_" + secrets.token_hex(20)
        gpu_type, devices, on_host = where.gpu_type, where.device_ids, where.host_id != LOCAL
        # A local start whose python is known prepares nothing: it is starting its handler already.
        local = w["backend"] != "docker" and not on_host and known_python(self.launch_cfg, spec)
        prev = await s.run(
            lambda: s.workers.transition(
                w["id"],
                _S.INITIALIZING,
                now,
                STARTING_HANDLER if local else "starting",
                gpu_type=gpu_type,
                gpu_devices=",".join(devices),
                host=where.host_id,
                launched_at=now,
                last_seen_at=None,
                idle_since=None,
                recycle=False,
            )
        )
        if prev is None:
            return
        log.info(
            "worker_transition worker=%s from=%s to=INITIALIZING host=%s gpu=%s devices=%s",
            w["id"],
            prev,
            where.host_id,
            gpu_type,
            ",".join(devices),
            extra=ids(w),
        )
        await ops.drop_keys(w["id"])  # the worker's earlier key
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
        backend = ops.fleet.for_worker(row)

        async def go() -> None:
            try:
                if backend is None:
                    raise EmberError(f"the {w['backend']} backend is not enabled on this server")
                ls = await launch_spec(
                    self.launch_cfg, worker=row, spec=spec, key=key, backend=w["backend"], on_host=on_host
                )
                await backend.launch(ls)
                if on_host:
                    ops.fleet.launched(w["id"])
            except EmberError as exc:
                await ops.fail(row, f"worker {w['id']} could not start: {exc.message}", ops.clock.now())
                ops.signals.reconcile.set()

        # A launch that ends with nothing else having happened wakes no tick: the tick that placed it
        # has done the rest (on a cold start, another tick now would run beside the worker's start).
        ops.spawn(w["id"], go(), quiet=True)


def _due(w: WorkerRow, now: float) -> bool:
    """Whether an UNHEALTHY worker's backoff is over."""
    return w["next_attempt_at"] is None or w["next_attempt_at"] <= now
