"""The lifecycle's health step: judges each live worker from what its backend observes and what its
pings say. A worker that exited or went silent is failed (UNHEALTHY, restarted after a backoff); one
that asked to be recycled is stopped once idle; one that keeps running a cancelled job is stopped;
jobs it never received are released; runtimes with no live record (orphans) are stopped."""

from __future__ import annotations

import logging

from ember.control.lifecycle.ops import WorkerOps, ids
from ember.control.lifecycle.snapshot import Snapshot
from ember.core.jobs import dropped_jobs
from ember.core.workers import LIVE, Ping, WorkerState, is_lost
from ember.store.rows import WorkerRow

log = logging.getLogger("ember.lifecycle")
_S = WorkerState
_LIVE_STATES = frozenset(s.value for s in LIVE)
# A restarted worker that stays up this long is healthy again: its backoff starts over.
HEALTHY_RESET_S = 120.0
RECYCLED = "recycled after its job (refresh_worker / stopPod)"


class Health:
    def __init__(self, ops: WorkerOps) -> None:
        self.ops = ops
        self.store = ops.store
        self.cfg = ops.cfg
        self._stuck_since: dict[str, float] = {}
        # When this control plane's first tick ran: workers cannot ping a control plane that is down, so
        # their silence counts from here at the earliest (a restart adopts them instead of failing them).
        self.started_at: float | None = None

    async def check(self, snap: Snapshot) -> None:
        """Judge every live worker of the snapshot, then stop the orphans."""
        ops = self.ops
        for w in snap.workers:
            wid = w["id"]
            if ops.busy(wid) or wid in snap.ops_in_flight:
                continue
            if w["state"] not in _LIVE_STATES:
                continue
            lost_host = snap.seen.lost.get(w["host"])
            if lost_host is not None:
                await ops.fail(w, f"worker {wid} was on host {lost_host}, which stopped answering", snap.now)
                continue
            obs = snap.seen.observed.get(wid)
            if obs is None or not obs.running:
                code = None if obs is None else obs.exit_code
                if w["recycle"] and (code == 0 or code is None):
                    await ops.finish_stop(w, RECYCLED)
                    continue
                detail = (
                    f"exited unexpectedly (exit code {code})" if obs is not None else "is no longer running"
                )
                fitness = ops.signals.presence.take_failed_check(wid)
                await ops.fail(w, f"worker {wid} {fitness or detail}", snap.now)
                continue
            # A ping from before its launch is from this worker id's previous run: it was restarted since.
            ping = ops.signals.presence.last_ping(wid, since=w["launched_at"] or 0.0)
            why = self._lost(w, ping, snap.now)
            if why:
                await ops.fail(w, f"worker {wid} {why}", snap.now, kill=True)
                continue
            if w["recycle"] and not snap.held.get(wid):
                # It asked to be replaced (stopPod) and has finished its jobs; SDKs only say so and keep
                # polling, so stop it now (SIGTERM, then SIGKILL after the grace period).
                await ops.stop(w, RECYCLED)
                continue
            await self._check_stuck(w, ping, snap.now)
            await self._check_dropped(w, ping, snap)
            if (
                w["failures"]
                and w["state"] in (_S.IDLE.value, _S.RUNNING.value)
                and snap.now - (w["launched_at"] or snap.now) > HEALTHY_RESET_S
            ):
                await self.store.run(
                    self.store.workers.update,
                    w["id"],
                    failures=0,
                    first_failure_at=None,
                    next_attempt_at=None,
                )
        # Orphans: runtime workers with no live record (e.g. a stop interrupted by a crash, or workers a
        # lost host still ran when it came back), and runtimes found where their record does not put them.
        live_ids = {w["id"] for w in snap.workers if w["state"] in _LIVE_STATES}
        orphans = [(wid, b) for wid, b in snap.seen.places.items() if wid not in live_ids] + snap.seen.strays
        for wid, backend in orphans:
            if not ops.busy(wid):
                log.info("orphan_stop worker=%s backend=%s", wid, backend.name, extra={"worker_id": wid})
                ops.spawn(wid, backend.stop(wid, self.cfg.stop_grace_s))

    def _lost(self, w: WorkerRow, ping: Ping | None, now: float) -> str | None:
        """Why the running worker counts as lost (silent too long, or never ready), or None."""
        last_seen = w["last_seen_at"]
        if ping is not None and (last_seen is None or ping.at > last_seen):
            last_seen = ping.at
        if last_seen is not None and self.started_at is not None:
            last_seen = max(last_seen, self.started_at)
        return is_lost(
            last_seen_at=last_seen,
            launched_at=w["launched_at"] or w["state_since"],
            now=now,
            ping_timeout_s=self.cfg.ping_timeout_s,
            init_timeout_s=self.cfg.init_timeout_s,
            state=_S(w["state"]),
        )

    async def _check_stuck(self, w: WorkerRow, ping: Ping | None, now: float) -> None:
        """A worker still holding a job that was cancelled or timed out (a sync handler ignoring job-stop)
        is stopped after a grace period, so the platform enforces the execution timeout."""
        if ping is None or not ping.held:
            self._stuck_since.pop(w["id"], None)
            return
        finals = 0
        for job_id in ping.held:
            row = await self.store.run(self.store.jobs.get, job_id)
            if row is not None and row["worker_id"] == w["id"] and row["state"] in ("CANCELLED", "TIMED_OUT"):
                finals += 1
        if not finals:
            self._stuck_since.pop(w["id"], None)
            return
        since = self._stuck_since.setdefault(w["id"], now)
        if now - since >= self.cfg.stuck_grace_s:
            self._stuck_since.pop(w["id"], None)
            log.info("stuck_worker_stop worker=%s", w["id"], extra=ids(w))
            await self.ops.stop(w, "stopped: it kept running a job that was cancelled or timed out")

    async def _check_dropped(self, w: WorkerRow, ping: Ping | None, snap: Snapshot) -> None:
        """Jobs recorded as held by a live worker that its pings keep leaving out were never received
        (say, a job handed over in an answer a crash cut off): re-queued, or failed after their re-queue."""
        ops = self.ops
        dropped, ops.missing_since[w["id"]] = dropped_jobs(
            snap.held.get(w["id"], {}), ping, ops.missing_since.get(w["id"], {}), self.cfg.dropped_grace_s
        )
        if dropped:
            ops.acted += 1
            log.info("jobs_dropped worker=%s jobs=%s", w["id"], ",".join(dropped), extra=ids(w))
            reason = f"worker {w['id']} never reported holding the job (it was handed over but not received)"
            await ops.release_jobs(w["id"], reason, snap.now, only=dropped)
