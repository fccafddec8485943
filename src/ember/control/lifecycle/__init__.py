"""The reconciler: each tick it observes the backends and the store, calls the pure decisions
(`core.scaler.decide`, `core.reconcile.plan`, `core.placement.place`, `core.backoff`) and carries them
out: health (exits, lost pings, stuck jobs), scaling, rollouts, restarts with backoff, placement,
launches and stops. Requests never do this; they only wake the loop.

`tick` runs the steps in order over a `snapshot`: `health`, `autoscaling`, `placement`; `ops` holds
what they do to a worker (fail, stop, release its jobs, run its launch or stop in the background)."""

from ember.control.lifecycle.config import LifecycleConfig
from ember.control.lifecycle.tick import Lifecycle

__all__ = ["Lifecycle", "LifecycleConfig"]
