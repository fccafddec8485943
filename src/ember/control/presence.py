"""What workers say of themselves between the lifecycle loop's looks, and what that loop last counted:
each worker's latest ping (`core.workers.Ping`), a failed start-up check a worker reported before it
exits, and how many live workers each endpoint had. The worker API writes it, the lifecycle reads it;
all of it is in this process's memory (a lost ping only delays a judgement: workers ping every few
seconds, and the store's `last_seen_at` stands in until one comes). Where several processes share a
PostgreSQL database, pings are also recorded in it (`store.pings`) and the process that runs the
lifecycle merges them in (`merge`): a worker pings whichever process its address reaches. So are failed
start-up checks (`merge_failed_checks`)."""

from __future__ import annotations

from collections.abc import Mapping

from ember.core.workers import Ping


class Presence:
    def __init__(self) -> None:
        self._pings: dict[str, Ping] = {}
        self._failed_checks: dict[str, str] = {}
        self._live: dict[str, int] = {}

    # ---- pings -----------------------------------------------------------------------------------
    def pinged(self, worker_id: str, at: float, held: frozenset[str]) -> None:
        self._pings[worker_id] = Ping(at, held)

    def last_ping(self, worker_id: str, since: float = 0.0) -> Ping | None:
        """The worker's latest ping, unless it came before `since` (from an earlier run of the worker)."""
        ping = self._pings.get(worker_id)
        return None if ping is None or ping.at < since else ping

    def merge(self, pings: Mapping[str, Ping]) -> None:
        """Pings that other processes recorded: each replaces this process's own when it is newer."""
        for worker_id, ping in pings.items():
            mine = self._pings.get(worker_id)
            if mine is None or mine.at < ping.at:
                self._pings[worker_id] = ping

    def forget(self, worker_id: str) -> None:
        """The worker stopped: drop what it said."""
        self._pings.pop(worker_id, None)
        self._failed_checks.pop(worker_id, None)

    # ---- start-up checks -------------------------------------------------------------------------
    def failed_check(self, worker_id: str, reason: str) -> None:
        """The worker reported a failed start-up (fitness) check; it exits next."""
        self._failed_checks[worker_id] = reason

    def merge_failed_checks(self, checks: Mapping[str, str]) -> None:
        """Failed start-up checks that other processes recorded (this process's own stay)."""
        for worker_id, reason in checks.items():
            self._failed_checks.setdefault(worker_id, reason)

    def take_failed_check(self, worker_id: str) -> str | None:
        """The failed check the worker reported, once (the lifecycle records it as the failure's reason)."""
        return self._failed_checks.pop(worker_id, None)

    # ---- live workers per endpoint ---------------------------------------------------------------
    def counted(self, live_by_endpoint: Mapping[str, int]) -> None:
        """The lifecycle's latest count of each endpoint's non-stopped workers."""
        self._live = dict(live_by_endpoint)

    def has_live(self, endpoint_id: str) -> bool:
        """Whether the endpoint had a live worker at the last count (a job for one without wakes the
        scaler at once; otherwise the next tick handles the backlog)."""
        return bool(self._live.get(endpoint_id))
