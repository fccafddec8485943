"""Restart backoff for unhealthy workers: 10 s doubling to at most an hour, giving up after 7 days.

Pure: the lifecycle loop keeps a `Backoff` per worker in the store and passes `now` in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

BASE_DELAY_S = 10.0
MAX_DELAY_S = 3600.0
GIVE_UP_AFTER_S = 7 * 24 * 3600.0


def delay_s(failures: int, *, base_s: float = BASE_DELAY_S, max_s: float = MAX_DELAY_S) -> float:
    """Wait before the next attempt after `failures` consecutive failures: 0 for none, then
    10, 20, 40, … seconds, capped at `max_s`."""
    if failures <= 0:
        return 0.0
    # Cap the exponent too, so that a huge failure count cannot overflow.
    return min(max_s, base_s * 2.0 ** min(failures - 1, 62))


def give_up(first_failure_at: float | None, now: float, *, after_s: float = GIVE_UP_AFTER_S) -> bool:
    """True once the failures have lasted `after_s` (7 days): stop restarting and stop the worker."""
    return first_failure_at is not None and now - first_failure_at >= after_s


def next_attempt_at(last_failure_at: float, failures: int) -> float:
    """When the next attempt is due after the latest of `failures` consecutive failures."""
    return last_failure_at + delay_s(failures)


@dataclass(frozen=True)
class Backoff:
    """The restart state of one worker. Every change returns a new value; store it as is.

    `due(now)` allows exactly one attempt per backoff step: after `record_attempt`, nothing more is
    due until the attempt fails (`record_failure`) or succeeds (`record_success` clears the state).
    """

    failures: int = 0
    first_failure_at: float | None = None
    last_failure_at: float | None = None
    attempted_at: float | None = None  # set by an attempt, cleared by the next failure

    def record_failure(self, now: float) -> Backoff:
        first = self.first_failure_at if self.first_failure_at is not None else now
        return Backoff(self.failures + 1, first, now, None)

    def record_attempt(self, now: float) -> Backoff:
        return replace(self, attempted_at=now)

    def record_success(self) -> Backoff:
        return Backoff()

    def next_attempt_at(self) -> float | None:
        """When the next attempt is due, or None when there is nothing to retry."""
        if self.last_failure_at is None:
            return None
        return next_attempt_at(self.last_failure_at, self.failures)

    def due(self, now: float) -> bool:
        """True when a restart should happen now: a failure is pending, its delay has passed, no
        attempt has been made for it yet, and the 7-day limit has not been reached."""
        at = self.next_attempt_at()
        if at is None or self.attempted_at is not None or self.exhausted(now):
            return False
        return now >= at

    def exhausted(self, now: float) -> bool:
        return give_up(self.first_failure_at, now)
