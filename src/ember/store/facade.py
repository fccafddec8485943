"""`Store`: one object holding the repositories over one engine, built by the composition root."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, ParamSpec, TypeVar

import anyio.to_thread
from sqlalchemy.engine import Engine

from ember.core.jobs import JobState
from ember.core.wire import final_text
from ember.core.workers import WorkerState
from ember.store import outbox
from ember.store.accounts import AccountStore
from ember.store.activity import ActivityStore
from ember.store.db import Cursor, Database, RawAccess, Sealing, make_engine, migrate
from ember.store.endpoints import EndpointStore
from ember.store.hosts import HostStore
from ember.store.idempotency import IdempotencyStore
from ember.store.insights import InsightStore
from ember.store.jobs import Claimed, Finished, JobStore, NewJob, queued_key
from ember.store.metering import MeterStore
from ember.store.pings import PingStore
from ember.store.registry_auths import RegistryAuthStore
from ember.store.secrets import SecretStore
from ember.store.sessions import SessionStore
from ember.store.streams import StreamStore
from ember.store.sweeps import SweepStore
from ember.store.templates import TemplateStore
from ember.store.volumes import VolumeStore
from ember.store.workers import WorkerStore

T = TypeVar("T")
P = ParamSpec("P")

TOOK_A_JOB = "took a job"
log = logging.getLogger("ember.store")


class Report(NamedTuple):
    """What recording a job's result did: `outcome` ("done", "final", "not_held", "unknown"), the
    finished job's facts and final record (JSON text) when done, and the next jobs the worker was handed
    in the same transaction."""

    outcome: str
    finished: Finished | None = None
    next_jobs: Sequence[Claimed] = ()
    may_take: bool = False  # a take was asked for and the worker may be handed jobs (left RUNNING)
    record: str | None = None


def final_record(
    job_id: str,
    state: JobState,
    finished: Finished,
    now: float,
    worker_id: str,
    output_json: str | None,
    error: str | None,
) -> str:
    """The JSON text of a job's final record as a client reads it (`core.wire.final_text`)."""
    return final_text(
        job_id,
        state.value,
        finished.created_at,
        finished.started_at,
        now,
        worker_id,
        output_json,
        error,
        finished.retried,
    )


class Store:
    def __init__(self, engine: Engine) -> None:
        self.db = Database(engine)
        self.raw = RawAccess(engine)
        # The jobs `hand_over_later` deferred: (job, worker, when); `RawAccess.waiting` says which still are.
        self._later: dict[str, tuple[NewJob, str, float]] = {}
        self.jobs = JobStore(engine, self.raw)
        self.streams = StreamStore(engine, self.raw)
        self.sweeps = SweepStore(engine, self.raw)
        self.idempotency = IdempotencyStore(engine, self.jobs, self.raw)
        self.workers = WorkerStore(engine, self.raw)
        self.metering = MeterStore(engine, self.raw)
        self.accounts = AccountStore(engine)
        self.endpoints = EndpointStore(engine)
        self.templates = TemplateStore(engine)
        self.volumes = VolumeStore(engine)
        self.secrets = SecretStore(engine)
        self.registry_auths = RegistryAuthStore(engine)
        self.sessions = SessionStore(engine)
        self.pings = PingStore(engine)
        self.hosts = HostStore(engine)
        self.insights = InsightStore(engine)
        self.activity = ActivityStore(engine)

    def take(
        self,
        endpoint_id: str,
        worker_id: str,
        limit: int,
        now: float,
        *,
        mark_running: bool,
        queued: bool = False,
    ) -> Sequence[Claimed]:
        """Claim up to `limit` jobs for a worker and, when it got some, make it RUNNING: one transaction.
        An endpoint with nothing queued costs one read and no write lock, unless the caller knows that
        jobs were just `queued` (it was told so): then the claim goes first."""
        if not queued and not self.jobs.any_queued(endpoint_id):
            return []
        with self.raw.write() as cur:
            if self.workers.taking(worker_id, cur) is None:
                return []  # recycled or retired since the caller looked: it gets no new job
            claimed = self.jobs.claim(endpoint_id, worker_id, limit, now, cur=cur)
            if claimed and mark_running:
                self.workers.start_running(worker_id, now, TOOK_A_JOB, cur=cur)
        return claimed

    def hand_over(self, job: NewJob, worker_id: str, now: float, *, delivered: bool = False) -> bool:
        """Record a new job as already taken by `worker_id` (a job-take was waiting for it) and make the
        worker RUNNING; when the worker may no longer take jobs, queue the job instead and return False,
        unless the job was already `delivered` to it: then it is recorded as the worker's whatever its
        state (the worker has it). One transaction, committed when this returns."""
        with self.raw.write() as cur:
            return self._hand_over(job, worker_id, now, delivered, cur)

    def hand_over_later(self, job: NewJob, worker_id: str, now: float) -> None:
        """SQLite: `hand_over` a job already delivered to the worker, in the next write transaction on this
        process's connection instead of one of its own: a job whose result comes within a moment commits
        with it (`finish_later`). The caller is to `flush` soon (see `RawAccess.defer`)."""
        if not self.raw.deferred:
            self._later.clear()  # all written
        self._later[job.id] = (job, worker_id, now)
        write = functools.partial(self._hand_over, job, worker_id, now, True)
        self.raw.defer(write, key=job.id)

    def queue_later(self, job: NewJob, now: float) -> None:
        """SQLite: queue a job in the next write transaction on this process's connection instead of one
        of its own: the claim that takes it (a worker's result asking for more, a take) commits it, so a
        job queued and claimed within the moment costs no commit of its own. For a runsync job, which no
        one knows of before its answer. The caller is to `flush` soon (`RawAccess.defer`)."""

        def write(cur: Cursor) -> None:
            self.jobs.submit(job, now, cur=cur)

        self.raw.defer(write, key=queued_key(job.endpoint_id))

    def finish_later(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        output_json: str | None,
        error: str | None,
        now: float,
        retention_run_s: float,
        retention_sync_s: float,
        *,
        settle: bool,
    ) -> Report | None:
        """SQLite: `report` the result of a job whose `hand_over_later` is still to be written, after it in
        the same deferred transaction, and return what `report` would (None when the hand-over was
        written already, or was to another worker, or the job has a webhook: `report` it then). Nothing
        can come between the two writes, so the job is finished as it was handed over: its facts are
        known without a read. `settle`: the worker asked for no next job: it becomes IDLE with it."""
        later = self._later.get(job_id)
        if later is None or not self.raw.waiting(job_id):
            return None
        job, holder, started = later
        if holder != worker_id or job.webhook is not None:
            return None
        del self._later[job_id]

        def write(cur: Cursor) -> None:
            outcome, _ = self.jobs.finish(
                job_id, worker_id, state, output_json, error, now, retention_run_s, retention_sync_s, cur=cur
            )
            if outcome != "done":
                log.error("the deferred result of job %s was not recorded: %s", job_id, outcome)
            if settle:
                self.workers.settle_if_idle(worker_id, now, cur=cur)

        self.raw.defer(write)
        finished = Finished(started, started, 0, False, worker_takes=not settle)
        record = final_record(job_id, state, finished, now, worker_id, output_json, error)
        return Report("done", finished, (), not settle, record)

    def _hand_over(self, job: NewJob, worker_id: str, now: float, delivered: bool, cur: Cursor) -> bool:
        worker = self.workers.taking(worker_id, cur)
        self.jobs.submit(job, now, worker_id=worker_id if worker or delivered else None, cur=cur)
        if worker is None and not delivered:
            outbox.add("q", job.endpoint_id)
        if worker is not None and worker["state"] != WorkerState.RUNNING.value:
            self.workers.start_running(worker_id, now, TOOK_A_JOB, cur=cur)
        return worker is not None

    def flush_due(self, wait_s: float) -> float:
        """Commit the writes `hand_over_later`, `queue_later` and `finish_later` deferred, when the oldest
        has waited `wait_s`; else return how much longer it is to wait (0.0 when none waits, or they were
        committed now)."""
        raw = self.raw
        if not raw.deferred:
            return 0.0
        left = raw.deferred_since + wait_s - time.monotonic()
        if left > 0:
            return left
        raw.flush()
        return 0.0

    def report(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        output_json: str | None,
        error: str | None,
        now: float,
        retention_run_s: float,
        retention_sync_s: float,
        *,
        take_endpoint: str | None = None,
        take: int = 0,
        recycle: bool = False,
    ) -> Report:
        """Record a job's result; with `take`, also claim up to that many queued jobs of `take_endpoint`
        for the worker. When it then holds nothing, it becomes IDLE, unless it asked for more and may
        take them (`Report.may_take`): it stays RUNNING then, for the caller to hold its request open a
        moment and `WorkerStore.settle_late` it if no job comes. With `recycle` (the result carried
        stopPod), the worker is marked in the same transaction, so no hand-off or claim that commits after
        this one gives it another job. One transaction."""
        with self.raw.write() as cur:
            outcome, finished = self.jobs.finish(
                job_id,
                worker_id,
                state,
                output_json,
                error,
                now,
                retention_run_s,
                retention_sync_s,
                cur=cur,
                endpoint_id=take_endpoint,
            )
            if recycle and outcome in ("done", "final"):
                self.workers.recycle(worker_id, cur)
            if outcome != "done":
                return Report(outcome)
            record = None
            if finished is not None:
                record = final_record(job_id, state, finished, now, worker_id, output_json, error)
                if outbox.active():  # a runsync waiting elsewhere answers with it
                    outbox.add("f", f"{job_id} {record}")
            claimed: Sequence[Claimed] = ()
            may_take = (
                not recycle
                and take > 0
                and take_endpoint is not None
                and finished is not None
                and finished.worker_takes
            )
            if may_take and take_endpoint is not None and finished is not None and finished.queued:
                claimed = self.jobs.claim(take_endpoint, worker_id, take, now, cur=cur)
            if not claimed and not may_take:
                self.workers.settle_if_idle(worker_id, now, cur=cur)
        return Report(outcome, finished, claimed, may_take, record)

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database file (PASSIVE: never waits on writers)."""
        if self.db.is_sqlite:
            with self.db.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @classmethod
    def open(cls, url: str, sealer: Sealing | None = None) -> Store:
        """The store at `url`, migrated; `sealer` seals what an older database kept in plain text."""
        engine = make_engine(url)
        migrate(engine, sealer)
        return cls(engine)

    @property
    def inline(self) -> bool:
        """Store calls run on the caller's event loop (SQLite): nothing else on the loop runs during
        one, and only this process writes the database."""
        return self.db.is_sqlite

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a blocking store method from async code (inline on SQLite, in a thread otherwise)."""
        return await self.db.run(fn, *args, **kwargs)

    async def run_background(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like `run`, but always in a thread: for long background work (billing) that must not hold up
        requests. SQLite serialises its writers with BEGIN IMMEDIATE and a busy timeout."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.raw.close()
        self.db.dispose()
