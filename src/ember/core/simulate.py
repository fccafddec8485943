"""The scaling simulator's engine: replays a trace through the real scaler (`scaler.decide`) and
reconciler (`reconcile.plan`) on a virtual clock, as the lifecycle loop and the worker protocol would,
and bills the workers' state intervals with the meter's rules (`billing.bill`). Pure and deterministic.

What it mirrors (control/lifecycle/, api/worker.py, control/dispatch.py):
- the loop ticks every `tick_s`, and at once when a job arrives at an endpoint with no worker and when
  a started worker reports ready with nothing to do; each tick builds the Observation as
  the lifecycle's autoscaling step does, calls `decide` with the remembered Memory, then `plan`;
- a launched FLEX worker is INITIALIZING for `cold_start_s`, then takes the oldest queued job (RUNNING)
  or waits (IDLE); a finished job is followed by the next queued one, else the worker goes IDLE;
- a job arriving while workers wait goes to the one whose job-take has waited longest (a held take
  ends after `take_hold_s` and is asked again, so it rejoins at the back); queued jobs start FIFO;
- a worker the plan stops takes no new job and is STOPPED `stop_s` later; workersMin ACTIVE workers
  exist, ready, from the start.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ember.core.billing import Interval, PriceTable, bill
from ember.core.reconcile import WorkerView, plan
from ember.core.scaler import (
    DEFAULT_COLD_START_S,
    EXECUTION_WINDOW_S,
    PREDICTIVE,
    RATE_WINDOW_S,
    Memory,
    Observation,
    decide,
)
from ember.core.specs import ScalingSpec
from ember.core.traces import Trace
from ember.core.workers import WorkerState, WorkerType

_S = WorkerState
# Events at the same instant: finished jobs, then ready workers, stops, arrivals, and the tick last.
_DONE, _READY, _STOPPED, _ARRIVAL, _TICK = range(5)


@dataclass(frozen=True)
class SimConfig:
    cold_start_s: float = DEFAULT_COLD_START_S
    tick_s: float = 0.5
    take_hold_s: float = 20.0
    stop_s: float = 0.0
    gpu_type: str | None = None  # priced as billing.PriceTable does; None: a CPU worker
    gpu_count: int = 1
    prices: PriceTable = field(default_factory=PriceTable)
    account_room: int | None = None  # the account's room for this endpoint; None: workersMax
    max_tail_s: float = 3600.0  # after the trace, at most this long to finish jobs and scale down
    # PREDICTIVE's remembered execution time at the start (an endpoint that has run before); None: none.
    known_execution_s: float | None = None


@dataclass(frozen=True)
class SimResult:
    """One replay. `delays_s`: each job's queue delay (arrival to start), sorted. `worker_s`: seconds
    spent by all workers in each state (ACTIVE workers counted up to `window_s`, the end of the trace
    or of its last job, whichever is later; FLEX ones until they stop). `billed_s` and `cost_micros`:
    what the meter would bill for those intervals."""

    scaling: ScalingSpec
    jobs: int
    delays_s: tuple[float, ...]
    worker_s: Mapping[str, float]
    billed_s: int
    cost_micros: int
    cold_starts: int
    peak_workers: int
    reasons: Mapping[str, int]
    window_s: float
    end_s: float

    def delay_p(self, q: float) -> float:
        """The nearest-rank percentile `q` (0..100) of the queue delays; 0 without jobs."""
        if not self.delays_s:
            return 0.0
        rank = max(1, math.ceil(len(self.delays_s) * q / 100))
        return self.delays_s[min(rank, len(self.delays_s)) - 1]

    @property
    def total_worker_s(self) -> float:
        return sum(self.worker_s.values())


@dataclass
class _Worker:
    id: str
    type: WorkerType
    state: WorkerState
    since: float
    idle_since: float | None = None
    job: int | None = None
    stopping: bool = False
    spans: list[tuple[WorkerState, float, float]] = field(default_factory=list)

    def move(self, to: WorkerState, now: float) -> None:
        if to == self.state:
            return
        self.spans.append((self.state, self.since, now))
        self.state, self.since = to, now
        self.idle_since = now if to == _S.IDLE else None


class _Run:
    def __init__(self, spec: ScalingSpec, trace: Trace, cfg: SimConfig) -> None:
        self.spec, self.trace, self.cfg = spec, trace, cfg
        self.jobs = trace.jobs
        self.events: list[tuple[float, int, int, int]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.queue: deque[int] = deque()
        self.workers: dict[str, _Worker] = {}
        self.live: dict[str, _Worker] = {}  # not STOPPED
        self.names = itertools.count(1)
        self.mem = Memory(execution_s=cfg.known_execution_s)
        self.tick_gen = 0
        self.started: list[float] = [math.nan] * len(self.jobs)
        self.completed = 0
        self.last_completion = 0.0
        self.next_arrival = 0
        self.cold_starts = 0
        self.peak = 0
        self.reasons: dict[str, int] = {}
        # For PREDICTIVE's inputs: arrival offsets seen, finished jobs by arrival (heap) and their sums.
        self.finished: list[tuple[float, float]] = []
        self.finished_sum = 0.0
        self.predictive = spec.scaler_type == PREDICTIVE
        self.refs: dict[int, _Worker] = {}

    # ---- events ------------------------------------------------------------------------------------
    def push(self, at: float, kind: int, ref: int) -> None:
        heapq.heappush(self.events, (at, kind, next(self.seq), ref))

    def wake(self) -> None:
        self.tick_gen += 1
        self.push(self.now, _TICK, self.tick_gen)

    def run(self) -> None:
        for _ in range(min(self.spec.workers_min, self.spec.workers_max)):
            self.add_worker(WorkerType.ACTIVE, ready=True)
        if self.jobs:
            self.push(self.jobs[0].arrival_s, _ARRIVAL, 0)
        self.wake()
        refs = self.refs
        while self.events:
            at, kind, _, ref = heapq.heappop(self.events)
            self.now = at
            if kind == _TICK:
                if ref != self.tick_gen:
                    continue  # superseded by a wake-up
                if self.tick():
                    return
                self.tick_gen += 1
                self.push(self.now + self.cfg.tick_s, _TICK, self.tick_gen)
            elif kind == _ARRIVAL:
                self.arrive(ref)
            elif kind == _DONE:
                self.job_done(refs[ref])
            elif kind == _READY:
                self.ready(refs[ref])
            elif kind == _STOPPED:
                self.stopped(refs[ref])

    # ---- jobs --------------------------------------------------------------------------------------
    def arrive(self, j: int) -> None:
        self.next_arrival = j + 1
        if j + 1 < len(self.jobs):
            self.push(self.jobs[j + 1].arrival_s, _ARRIVAL, j + 1)
        taker = self.longest_waiting_taker()
        if taker is not None:
            self.start_job(taker, j)
            return
        self.queue.append(j)
        if not self.live:
            self.wake()  # the API pokes the loop: the first job at an endpoint with no worker

    def longest_waiting_taker(self) -> _Worker | None:
        hold = self.cfg.take_hold_s
        best: tuple[float, float, str] | None = None
        chosen = None
        for w in self.live.values():
            if w.state != _S.IDLE or w.stopping or w.job is not None or w.idle_since is None:
                continue
            waited = self.now - w.idle_since
            poll_start = w.idle_since + (hold * math.floor(waited / hold) if hold > 0 else 0.0)
            key = (poll_start, w.idle_since, w.id)
            if best is None or key < best:
                best, chosen = key, w
        return chosen

    def start_job(self, w: _Worker, j: int) -> None:
        self.started[j] = self.now
        w.job = j
        w.move(_S.RUNNING, self.now)
        self.push(self.now + self.jobs[j].execution_s, _DONE, self.ref(w))

    def job_done(self, w: _Worker) -> None:
        j = w.job
        assert j is not None
        w.job = None
        self.completed += 1
        self.last_completion = self.now
        job = self.jobs[j]
        heapq.heappush(self.finished, (job.arrival_s, job.execution_s))
        self.finished_sum += job.execution_s
        if self.queue and not w.stopping:
            self.start_job(w, self.queue.popleft())
        else:
            w.move(_S.IDLE, self.now)

    def ready(self, w: _Worker) -> None:
        if w.stopping or w.state != _S.INITIALIZING:
            return
        if self.queue:
            self.start_job(w, self.queue.popleft())
        else:
            w.move(_S.IDLE, self.now)
            self.wake()  # first contact with nothing to do wakes the loop

    # ---- workers -----------------------------------------------------------------------------------
    def ref(self, w: _Worker) -> int:
        key = int(w.id[1:])
        self.refs[key] = w
        return key

    def add_worker(self, wtype: WorkerType, *, ready: bool = False) -> None:
        wid = f"w{next(self.names):07d}"
        state = _S.IDLE if ready else _S.INITIALIZING
        w = _Worker(wid, wtype, state, self.now, idle_since=self.now if ready else None)
        self.workers[wid] = self.live[wid] = w
        if not ready:
            self.cold_starts += 1
            self.push(self.now + self.cfg.cold_start_s, _READY, self.ref(w))

    def stop(self, w: _Worker) -> None:
        w.stopping = True
        if self.cfg.stop_s <= 0:
            self.stopped(w)
        else:
            self.push(self.now + self.cfg.stop_s, _STOPPED, self.ref(w))

    def stopped(self, w: _Worker) -> None:
        w.move(_S.STOPPED, self.now)
        self.live.pop(w.id, None)

    # ---- the loop ----------------------------------------------------------------------------------
    def observe(self) -> Observation:
        current = [w for w in self.live.values() if not w.stopping]
        busy = sum(1 for w in current if w.job is not None)
        idle = tuple(w.idle_since for w in current if w.state == _S.IDLE and w.idle_since is not None)
        oldest = self.now - self.jobs[self.queue[0]].arrival_s if self.queue else 0.0
        obs = Observation(
            now=self.now,
            queued=len(self.queue),
            oldest_wait_s=max(0.0, oldest),
            in_progress=busy,
            workers=len(current),
            busy_workers=busy,
            idle_workers=idle,
        )
        if not self.predictive:
            return obs
        cutoff = self.now - EXECUTION_WINDOW_S
        while self.finished and self.finished[0][0] < cutoff:
            self.finished_sum -= heapq.heappop(self.finished)[1]
        arrived = 0
        j = self.next_arrival - 1
        while j >= 0 and self.jobs[j].arrival_s > self.now - RATE_WINDOW_S:
            arrived, j = arrived + 1, j - 1
        mean = self.finished_sum / len(self.finished) if self.finished else None
        return replace(obs, arrived=arrived, execution_s=mean, cold_start_s=self.cfg.cold_start_s)

    def tick(self) -> bool:
        """One lifecycle tick; True when the replay is over."""
        obs = self.observe()
        if self.finished_all(obs):
            return True
        room = self.cfg.account_room if self.cfg.account_room is not None else self.spec.workers_max
        d = decide(self.spec, obs, self.mem, account_room=room)
        self.mem = d.memory
        self.reasons[d.reason] = self.reasons.get(d.reason, 0) + 1
        current = [w for w in self.live.values() if not w.stopping]
        views = [WorkerView(w.id, w.state, w.type, 1, w.job is not None, w.idle_since) for w in current]
        steps = plan(d.target, views, release=1, workers_min=self.spec.workers_min)
        for wid, _why in steps.stop:
            self.stop(self.workers[wid])
        for wtype in steps.launch:
            self.add_worker(wtype)
        self.peak = max(self.peak, sum(1 for w in self.live.values() if not w.stopping))
        return False

    def finished_all(self, obs: Observation) -> bool:
        if self.now > self.trace.duration_s + self.cfg.max_tail_s:
            return True
        if self.next_arrival < len(self.jobs) or self.queue or obs.busy_workers:
            return False
        if self.now < self.trace.duration_s:
            return False
        return not any(w.type == WorkerType.FLEX for w in self.live.values())

    def result(self) -> SimResult:
        window = max(self.trace.duration_s, self.last_completion)
        spent: dict[str, float] = {}
        intervals: list[Interval] = []
        for w in self.workers.values():
            spans = [*w.spans, (w.state, w.since, self.now)]
            for state, start, end in spans:
                if w.type == WorkerType.ACTIVE:
                    end = min(end, window)
                if state == _S.STOPPED or end <= start:
                    continue
                spent[state.value] = spent.get(state.value, 0.0) + (end - start)
                intervals.append(
                    Interval(
                        w.id,
                        "sim",
                        state,
                        w.type,
                        self.cfg.gpu_type,
                        max(1, self.cfg.gpu_count),
                        start,
                        end,
                    )
                )
        charges = bill(intervals, self.cfg.prices).charges
        delays = sorted(
            s - job.arrival_s for s, job in zip(self.started, self.jobs, strict=True) if not math.isnan(s)
        )
        return SimResult(
            scaling=self.spec,
            jobs=len(self.jobs),
            delays_s=tuple(max(0.0, d) for d in delays),
            worker_s=spent,
            billed_s=sum(c.seconds for c in charges),
            cost_micros=sum(c.cost_micros for c in charges),
            cold_starts=self.cold_starts,
            peak_workers=self.peak,
            reasons=dict(self.reasons),
            window_s=window,
            end_s=self.now,
        )


def simulate(spec: ScalingSpec, trace: Trace, cfg: SimConfig | None = None) -> SimResult:
    """Replay `trace` under `spec` (see the module docstring for what is mirrored). Deterministic: the
    same arguments give the same result. Jobs still queued when `max_tail_s` runs out have no delay."""
    run = _Run(spec, trace, cfg or SimConfig())
    run.run()
    return run.result()
