"""The lifecycle loop's tick: takes the snapshot, then runs health, scaling and placement in that
order (each sees what the one before changed) and sweeps the backends' warm runtimes."""

from __future__ import annotations

import logging

from ember.backends.base import WarmParking
from ember.control.clock import Clock
from ember.control.fleet import Fleet
from ember.control.forecast import ForecastInputs
from ember.control.launcher import LaunchConfig
from ember.control.lifecycle import snapshot
from ember.control.lifecycle.autoscaling import Autoscaling
from ember.control.lifecycle.config import LifecycleConfig
from ember.control.lifecycle.health import Health
from ember.control.lifecycle.ops import WorkerOps
from ember.control.lifecycle.placement import Placement
from ember.control.lifecycle.snapshot import Snapshot
from ember.control.model_preparer import ModelPreparer
from ember.control.signals import Signals
from ember.core.errors import EmberError
from ember.store.facade import Store

log = logging.getLogger("ember.lifecycle")


class Lifecycle:
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        clock: Clock,
        signals: Signals,
        cfg: LifecycleConfig,
        launch: LaunchConfig,
        preparer: ModelPreparer | None = None,  # gates launches on the endpoint's model
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.clock = clock
        self.signals = signals
        self.cfg = cfg
        self.launch_cfg = launch
        self.ops = WorkerOps(store, fleet, clock, signals, cfg)
        self.health = Health(self.ops)
        self.autoscaling = Autoscaling(self.ops, ForecastInputs(store), preparer)
        self.placement = Placement(self.ops, launch, preparer)

    async def tick(self) -> None:
        """Health, then scaling and planning, then placement; each step sees what the previous one
        changed (the snapshot is taken again only when a step acted; placement reads only what it
        uses again: endpoints and workers)."""
        ops = self.ops
        ops.ticks += 1
        if self.health.started_at is None:
            self.health.started_at = self.clock.now()
        snap = await self._snapshot()
        acted = ops.acted
        await self.health.check(snap)
        if ops.acted != acted:
            snap, acted = await self._snapshot(), ops.acted
        await self.autoscaling.step(snap)
        if ops.acted != acted:
            snap = await self._snapshot(keep=snap)
        await self.placement.place(snap)
        await self._sweep_warm(snap)

    async def _snapshot(self, keep: Snapshot | None = None) -> Snapshot:
        now = self.clock.now()
        return await snapshot.take(self.store, self.fleet, self.signals, now, self.ops.in_flight(), keep)

    async def _sweep_warm(self, snap: Snapshot) -> None:
        """Warm runtimes past their time, of a deleted endpoint or of a release no longer served go."""
        releases = {e["id"]: int(e["release"]) for e in snap.endpoints}
        for name, backend in self.fleet.local.items():
            if isinstance(backend, WarmParking):
                try:
                    await backend.sweep_warm(releases)
                except EmberError as exc:
                    log.warning("warm_sweep_failed backend=%s error=%s", name, exc)

    async def drain(self) -> None:
        """Wait for launches and stops in flight (used at shutdown and by tests)."""
        await self.ops.drain()
