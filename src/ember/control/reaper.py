"""Job deadlines and housekeeping: execution timeouts (with job-stop), ttl expiry, result retention,
and webhook delivery (each final job POSTed once, retried on failure).

Webhooks go out through `control.outbound`'s client, so they reach only the addresses
`EMBER_OUTBOUND_ALLOW` leaves open. A refused destination fails the webhook at once (no retries); every
failure's reason is kept on the job (`webhookError` in its status) until a delivery succeeds."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from ember.control.clock import Clock
from ember.control.outbound import guarded_client
from ember.control.signals import Signals
from ember.core.errors import OutboundRefused
from ember.core.jobs import IDEMPOTENCY_WINDOW_S, RETENTION_RUN_S, JobState
from ember.core.outbound import Network
from ember.core.wire import record as job_record
from ember.store.facade import Store
from ember.store.rows import TimedOutJob

log = logging.getLogger("ember.reaper")


def _ids(row: Mapping[str, object]) -> dict[str, object]:
    """A job row's ids, for a log line's `extra`."""
    return {"job_id": row["id"], "worker_id": row.get("worker_id"), "endpoint_id": row.get("endpoint_id")}


@dataclass
class ReaperConfig:
    retention_run_s: float = RETENTION_RUN_S
    ttl_grace_s: float = 5.0
    webhook_retry_s: float = 10.0
    webhook_attempts: int = 3
    webhook_timeout_s: float = 10.0
    outbound_allow: tuple[Network, ...] = ()  # ranges webhooks may reach besides public addresses


class Reaper:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        signals: Signals,
        cfg: ReaperConfig,
        http: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.signals = signals
        self.cfg = cfg
        self._http_factory = http or (lambda: guarded_client(cfg.outbound_allow, cfg.webhook_timeout_s))
        self._http: httpx.AsyncClient | None = None

    def _ended(self, row: TimedOutJob) -> None:
        """A sweep ended the job TIMED_OUT: its waiters here, and its worker told to stop it."""
        if row["worker_id"]:
            self.signals.stop_wanted(row["worker_id"])
        self.signals.job_finished(row["id"])
        self.signals.metrics.job_finished(row["endpoint_id"], JobState.TIMED_OUT.value)

    async def tick(self) -> None:
        s = self.store
        now = self.clock.now()
        with self.signals.in_txn():  # each ended job's "f", and "s" for its worker
            timed_out = await s.run(s.sweeps.time_out_running, now, self.cfg.retention_run_s)
        for row in timed_out:
            log.info("job_timed_out job=%s worker=%s", row["id"], row["worker_id"], extra=_ids(row))
            self._ended(row)
        with self.signals.in_txn():
            expired = await s.run(s.sweeps.expire, now, self.cfg.ttl_grace_s)
        for row in expired:
            log.info("job_expired job=%s state=%s", row["id"], row["state"], extra=_ids(row))
            self._ended(row)
        await s.run(s.sweeps.purge_expired, now)
        await s.run(s.idempotency.forget_before, now - IDEMPOTENCY_WINDOW_S)
        # Copy the write-ahead log back into the database off the event loop, so that no request's
        # commit pays for it (see `store.db`).
        await s.run_background(s.checkpoint)

    async def deliver_webhooks(self) -> int:
        """POST each due final job to its webhook; returns how many were attempted."""
        s = self.store
        due = await s.run(s.sweeps.webhooks_due, self.clock.now())
        if not due:
            return 0
        if self._http is None:
            self._http = self._http_factory()
        for row in due:
            url = row["webhook"]
            if url is None:  # not due: a job is PENDING only with a webhook (webhooks_due asks for one)
                continue
            ok, final, error = False, False, None
            try:
                resp = await self._http.post(
                    url,
                    content=json.dumps(job_record(row)),
                    headers={"Content-Type": "application/json"},
                )
                ok = 200 <= resp.status_code < 300
                if not ok:
                    error = f"webhook not delivered: the receiver answered HTTP {resp.status_code}"
                    log.info("webhook_failed job=%s status=%s", row["id"], resp.status_code, extra=_ids(row))
            except OutboundRefused as exc:
                final, error = True, exc.message
                log.warning(
                    "webhook_refused job=%s account=%s %s",
                    row["id"],
                    row["account_id"],
                    exc.message,
                    extra=_ids(row),
                )
            except httpx.InvalidURL as exc:  # trying again cannot help
                final, error = True, f"webhook not delivered: invalid URL ({exc})"
                log.info("webhook_failed job=%s error=%s", row["id"], exc, extra=_ids(row))
            except httpx.HTTPError as exc:
                error = f"webhook not delivered: {exc or type(exc).__name__}"
                log.info("webhook_failed job=%s error=%s", row["id"], exc, extra=_ids(row))
            await s.run(
                s.sweeps.webhook_result,
                row["id"],
                ok,
                self.clock.now(),
                self.cfg.webhook_retry_s,
                self.cfg.webhook_attempts,
                error=error,
                final=final,
            )
        return len(due)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
