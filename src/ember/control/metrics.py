"""Prometheus metrics of one control plane, in its own `CollectorRegistry` (never the process-global one:
a process may hold several apps). Two kinds:

- `Instruments`: counters and histograms of events as this process sees them (a job finished, a model
  downloaded). Called on the job path, so a job's observation is only queued there (`Deferred`) and
  counted when the metrics are read: no I/O, no logging, no lock.
- `StoreCollector`: what the database says when Prometheus scrapes (queue depth, workers by state and type,
  the scaler's desired count, billed usage), so that any replica serving `/metrics` tells the same.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, NamedTuple, TypeVarTuple

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ember.control.clock import Clock
from ember.core.workers import TERMINAL, WorkerState, WorkerType
from ember.store.facade import Store
from ember.store.metrics import MetricsQueries, Usage

# Jobs wait seconds to minutes (a cold start) and run milliseconds to hours.
DELAY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
EXECUTION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# A ledger row younger than this may still commit below a higher id already read (see `store.metrics`).
LEDGER_SETTLE_S = 60.0
_STATES = [s.value for s in WorkerState if s not in TERMINAL]
_TYPES = [t.value for t in WorkerType]
Observation = TypeVarTuple("Observation")  # the arguments of one `Deferred.add`


class Deferred(Collector, Generic[*Observation]):
    """Observations queued where they happen (a deque append, no lock) and applied to their instruments
    by `apply` when the registry is collected, or once `limit` are waiting. Registered in the registry
    before the instruments it feeds, so a scrape (which collects in registration order) sees them all."""

    def __init__(
        self, registry: CollectorRegistry, apply: Callable[[*Observation], None], limit: int = 10_000
    ) -> None:
        self._queue: deque[tuple[*Observation]] = deque()
        self._apply = apply
        self._limit = limit
        registry.register(self)

    def add(self, *observation: *Observation) -> None:
        self._queue.append(observation)
        if len(self._queue) > self._limit:
            self.flush()

    def flush(self) -> None:
        """Apply what is waiting (safe beside `add` on another thread: each item is taken once)."""
        queue = self._queue
        while True:
            try:
                observation = queue.popleft()
            except IndexError:
                return
            self._apply(*observation)

    def collect(self) -> Iterator[Metric]:
        self.flush()
        return iter(())


class Instruments:
    """The process's own counters and histograms. Created with a fresh registry unless given one."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._deferred = Deferred(self.registry, self._job_finished)
        self._finished = Counter(
            "ember_jobs_finished",
            "Jobs that reached a final status, by endpoint and status",
            ["endpoint_id", "status"],
            registry=self.registry,
        )
        self._delay = Histogram(
            "ember_job_delay_seconds",
            "Time from a job's submission to a worker taking it, observed when its worker reports it",
            ["endpoint_id"],
            buckets=DELAY_BUCKETS_S,
            registry=self.registry,
        )
        self._execution = Histogram(
            "ember_job_execution_seconds",
            "Time from a worker taking a job to its result, observed when its worker reports it",
            ["endpoint_id"],
            buckets=EXECUTION_BUCKETS_S,
            registry=self.registry,
        )
        self._downloads = Counter(
            "ember_model_downloads",
            "Model downloads into the host cache, by result (ok, failed)",
            ["result"],
            registry=self.registry,
        )
        self._download_bytes = Counter(
            "ember_model_download_bytes",
            "Bytes of models downloaded into the host cache",
            registry=self.registry,
        )
        # Label children by their values: `labels()` validates and locks on every call.
        self._finished_by: dict[tuple[str, str], Counter] = {}
        self._timings_by: dict[str, tuple[Histogram, Histogram]] = {}

    def job_finished(
        self, endpoint_id: str, status: str, delay_s: float | None = None, execution_s: float | None = None
    ) -> None:
        """One job of `endpoint_id` ended in `status`; its delay and execution times when known (counted
        when the metrics are next read: `Deferred`)."""
        self._deferred.add(endpoint_id, status, delay_s, execution_s)

    def _job_finished(
        self, endpoint_id: str, status: str, delay_s: float | None, execution_s: float | None
    ) -> None:
        counter = self._finished_by.get((endpoint_id, status))
        if counter is None:
            counter = self._finished_by[(endpoint_id, status)] = self._finished.labels(endpoint_id, status)
        counter.inc()
        if delay_s is None and execution_s is None:
            return
        timings = self._timings_by.get(endpoint_id)
        if timings is None:
            timings = self._timings_by[endpoint_id] = (
                self._delay.labels(endpoint_id),
                self._execution.labels(endpoint_id),
            )
        if delay_s is not None:
            timings[0].observe(max(0.0, delay_s))
        if execution_s is not None:
            timings[1].observe(max(0.0, execution_s))

    def jobs_finished(self, endpoint_id: str, status: str, count: int) -> None:
        """`count` jobs of `endpoint_id` ended in `status` at once (cancelled, timed out, failed)."""
        if count > 0:
            self._finished.labels(endpoint_id, status).inc(count)

    def model_downloaded(self, result: str, size_bytes: int) -> None:
        """A model download ended: `result` "ok" or "failed", `size_bytes` fetched."""
        self._downloads.labels(result).inc()
        if size_bytes > 0:
            self._download_bytes.inc(size_bytes)


class StoreCollector(Collector):
    """Gauges read from the database at scrape time: a handful of grouped queries, whatever the number of
    jobs (the ledger's usage is summed incrementally: each scrape reads the rows added since the last)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._queries = MetricsQueries(store.db.engine)
        self._clock = clock
        self._lock = threading.Lock()  # two scrapes at once must not both add the same ledger rows
        self._cursor = 0
        self._billed: dict[str, Usage] = {}

    def describe(self) -> Iterator[Metric]:
        """The families without samples (the registry checks names with these; no query runs)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        queued, in_progress, workers, desired, info, billed_s, billed_usd = self._families()
        live = self._queries.endpoints()
        stats = self._store.sweeps.queue_stats()
        counts = self._queries.workers()
        billed = self._billed_now()
        for ep in live:
            ep_id = ep["id"]
            info.add_metric([ep_id, ep["name"], ep["account_id"]], 1)
            desired.add_metric([ep_id], ep["desired_workers"])
            st = stats.get(ep_id)
            queued.add_metric([ep_id], (st.queued + st.queued_low) if st else 0)
            in_progress.add_metric([ep_id], st.in_progress if st else 0)
            for state in _STATES:
                for kind in _TYPES:
                    workers.add_metric([ep_id, state, kind], counts.pop((ep_id, state, kind), 0))
        for (ep_id, state, kind), n in counts.items():  # workers of deleted endpoints, still stopping
            workers.add_metric([ep_id, state, kind], n)
        for ep_id, usage in sorted(billed.items()):
            billed_s.add_metric([ep_id], usage.seconds)
            billed_usd.add_metric([ep_id], usage.micros / 1_000_000)
        yield from (queued, in_progress, workers, desired, info, billed_s, billed_usd)

    def _billed_now(self) -> dict[str, Usage]:
        """Billed usage by endpoint: the settled totals kept here plus the rows too recent to settle."""
        with self._lock:
            read = self._queries.usage_after(self._cursor, self._clock.now() - LEDGER_SETTLE_S)
            for ep_id, usage in read.settled.items():
                self._billed.setdefault(ep_id, Usage()).add(usage.seconds, usage.micros)
            self._cursor = read.cursor
            out = {ep_id: Usage(u.seconds, u.micros) for ep_id, u in self._billed.items()}
        for ep_id, usage in read.recent.items():
            out.setdefault(ep_id, Usage()).add(usage.seconds, usage.micros)
        return out

    @staticmethod
    def _families() -> _Families:
        ep = ["endpoint_id"]
        return _Families(
            GaugeMetricFamily("ember_jobs_queued", "Jobs waiting in the queue, by endpoint", labels=ep),
            GaugeMetricFamily("ember_jobs_in_progress", "Jobs held by a worker, by endpoint", labels=ep),
            GaugeMetricFamily(
                "ember_workers",
                "Workers not yet stopped, by endpoint, state and type (ACTIVE, FLEX)",
                labels=["endpoint_id", "state", "type"],
            ),
            GaugeMetricFamily("ember_workers_desired", "The scaler's target worker count", labels=ep),
            GaugeMetricFamily(
                "ember_endpoint_info",
                "Each live endpoint's name and account (always 1)",
                labels=["endpoint_id", "name", "account_id"],
            ),
            CounterMetricFamily("ember_billed_seconds", "Worker seconds billed, by endpoint", labels=ep),
            CounterMetricFamily("ember_billed_dollars", "Dollars billed, by endpoint", labels=ep),
        )


class _Families(NamedTuple):
    queued: GaugeMetricFamily
    in_progress: GaugeMetricFamily
    workers: GaugeMetricFamily
    desired: GaugeMetricFamily
    info: GaugeMetricFamily
    billed_s: CounterMetricFamily
    billed_usd: CounterMetricFamily
