"""Worker-state timelines: each worker's transitions turned into a lane of state segments clipped to a
time window (the console draws them). Pure: the caller reads the rows and passes the window's ends."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STOPPED = "STOPPED"


@dataclass(frozen=True)
class Transition:
    """One worker_events row: `from_state` is None for the worker's first state."""

    worker_id: str
    from_state: str | None
    to_state: str
    at: float
    reason: str = ""


@dataclass(frozen=True)
class WorkerNow:
    """A worker's record as it is now: its state since `since` and why."""

    worker_id: str
    state: str
    since: float
    reason: str = ""
    type: str = ""


@dataclass(frozen=True)
class Segment:
    """The worker was in `state` from `start` to `end` (both inside the window). `open`: it still is
    (the segment ends at the window's end because the window ends, not because the state did)."""

    state: str
    start: float
    end: float
    reason: str
    open: bool = False

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Lane:
    worker_id: str
    type: str
    segments: tuple[Segment, ...]


def lanes(workers: Sequence[WorkerNow], events: Iterable[Transition], start: float, end: float) -> list[Lane]:
    """One lane per worker that was in some state inside [start, end], ordered by when its first
    segment begins (then by id). Events may come in any order and may include ones outside the window:
    one before `start` says the state at `start`; one after `end` is ignored. Without an event before
    the window, the first event inside it names the state held until then (its `from_state`; None: the
    worker did not exist yet). A worker with no event at all held its current state since `since`.
    The last segment's reason is the worker's current one when the state is the same (a starting worker
    says what it is doing now). STOPPED is terminal: its segment runs to `end` but is not open."""
    if end < start:
        raise ValueError(f"the window ends ({end}) before it starts ({start})")
    by_worker: dict[str, list[tuple[float, int, Transition]]] = {}
    for order, ev in enumerate(events):
        by_worker.setdefault(ev.worker_id, []).append((ev.at, order, ev))
    out = []
    for worker in workers:
        evs = [ev for _, _, ev in sorted(by_worker.get(worker.worker_id, ()))]
        segments = _segments(worker, evs, start, end)
        if segments:
            out.append(Lane(worker.worker_id, worker.type, tuple(segments)))
    out.sort(key=lambda lane: (lane.segments[0].start, lane.worker_id))
    return out


def _changes(
    worker: WorkerNow, evs: Sequence[Transition], start: float, end: float
) -> list[tuple[float, str, str]]:
    """(when, state, reason) at which the worker's state changed inside the window, the first being
    its state at `start` when it had one."""
    before = [ev for ev in evs if ev.at <= start]
    inside = [ev for ev in evs if start < ev.at <= end]
    changes: list[tuple[float, str, str]] = []
    if before:
        last = before[-1]
        changes.append((start, last.to_state, last.reason))
    elif inside:
        if inside[0].from_state is not None:
            changes.append((start, inside[0].from_state, ""))
    elif worker.since <= end:
        changes.append((max(start, worker.since), worker.state, worker.reason))
    changes.extend((ev.at, ev.to_state, ev.reason) for ev in inside)
    return changes


def _segments(worker: WorkerNow, evs: Sequence[Transition], start: float, end: float) -> list[Segment]:
    changes = _changes(worker, evs, start, end)
    if not changes or (len(changes) == 1 and changes[0][1] == STOPPED and changes[0][0] == start):
        return []  # no state in the window, or stopped all along
    segments = []
    for i, (at, state, reason) in enumerate(changes):
        last = i == len(changes) - 1
        if last and state == worker.state and worker.reason:
            reason = worker.reason
        until = end if last else changes[i + 1][0]
        segments.append(Segment(state, at, until, reason, open=last and state != STOPPED))
    return segments


def fraction(at: float, start: float, end: float) -> float:
    """Where `at` falls in [start, end], from 0 to 1 (clamped); 0 for an empty window."""
    if end <= start:
        return 0.0
    return min(1.0, max(0.0, (at - start) / (end - start)))
