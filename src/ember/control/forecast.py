"""PREDICTIVE scaling's inputs, for the lifecycle loop: an endpoint's recent arrivals and execution time
(one query a tick, for PREDICTIVE endpoints only) and its typical cold start, the median of its last
starts as its workers' transitions record them (read again at most once a minute)."""

from __future__ import annotations

from dataclasses import replace

from ember.core.scaler import EXECUTION_WINDOW_S, PREDICTIVE, RATE_WINDOW_S, Observation
from ember.core.specs import ScalingSpec
from ember.core.traces import cold_starts, median
from ember.store.facade import Store

COLD_START_TTL_S = 60.0
COLD_START_LOOKBACK_S = 7 * 24 * 3600.0
COLD_START_EVENTS = 2000  # the newest transitions read for them
COLD_START_SAMPLE = 50  # the newest starts the median is taken over


class ForecastInputs:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cold: dict[str, tuple[float, float | None]] = {}  # endpoint id -> (read at, median)

    async def observe(self, obs: Observation, endpoint_id: str, scaling: ScalingSpec) -> Observation:
        """`obs` with PREDICTIVE's inputs filled in (see `core.scaler.Observation`); unchanged for the
        other scaler types, which do not read them."""
        if scaling.scaler_type != PREDICTIVE:
            return obs
        s = self.store
        now = obs.now
        arrived, execution_s = await s.run(
            s.insights.recent_load, endpoint_id, now - RATE_WINDOW_S, now - EXECUTION_WINDOW_S
        )
        cold_s = await self.cold_start_s(endpoint_id, now)
        return replace(obs, arrived=arrived, execution_s=execution_s, cold_start_s=cold_s)

    async def cold_start_s(self, endpoint_id: str, now: float) -> float | None:
        """The endpoint's median cold start (launch to ready) over its newest starts; None without any."""
        hit = self._cold.get(endpoint_id)
        if hit is not None and 0 <= now - hit[0] < COLD_START_TTL_S:
            return hit[1]
        s = self.store
        events = await s.run(
            s.insights.state_events, endpoint_id, now - COLD_START_LOOKBACK_S, COLD_START_EVENTS
        )
        value = median(cold_starts(events)[-COLD_START_SAMPLE:])
        if len(self._cold) > 10_000:
            self._cold.clear()
        self._cold[endpoint_id] = (now, value)
        return value
