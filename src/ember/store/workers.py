"""Worker records and their state history. A transition is one guarded UPDATE derived from
`core.workers.ALLOWED` plus an event row, in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import ReturnsRows
from sqlalchemy.sql.selectable import ScalarSelect
from typing_extensions import ReadOnly

from ember.core.workers import ALLOWED, TAKES_JOBS, WorkerState, sources
from ember.store.db import Cursor, Prepared, PreparedRows, RawAccess, Repository, constant, transaction
from ember.store.rows import TakingWorker, WorkerEvent, WorkerOwner, WorkerPlace, WorkerRow
from ember.store.schema import jobs, meter_cursors, worker_events, workers
from ember.store.transitions import guard

W = workers.c


SETTLED = "finished its jobs"


class _Current(WorkerPlace):
    """What a transition reads first (locking the worker's row): its state, whose it is, and where it
    may be stamped (`_stamp`)."""

    state_since: ReadOnly[float]
    metered_until: ReadOnly[float | None]


def _settle_statement() -> ReturnsRows:
    """RUNNING -> IDLE for worker :p_id at :p_now, only while it holds no IN_PROGRESS job."""
    held = (
        select(func.count())
        .select_from(jobs)
        .where(jobs.c.worker_id == bindparam("p_id"), jobs.c.state == constant("IN_PROGRESS"))
        .scalar_subquery()
    )
    return (
        update(workers)
        .where(
            W.id == bindparam("p_id"),
            guard(W.state, ALLOWED, WorkerState.IDLE, [WorkerState.RUNNING]),
            held == 0,
        )
        .values(
            state=WorkerState.IDLE.value,
            state_since=bindparam("p_now"),
            idle_since=bindparam("p_now"),
            reason=SETTLED,
        )
        .returning(W.endpoint_id, W.account_id)
    )


def _event_statement() -> Insert:
    return insert(worker_events).values(
        worker_id=bindparam("p_worker"),
        endpoint_id=bindparam("p_endpoint"),
        account_id=bindparam("p_account"),
        from_state=bindparam("p_from"),
        to_state=bindparam("p_to"),
        at=bindparam("p_now"),
        reason=bindparam("p_reason"),
    )


def _run_statement() -> Update:
    """:p_from -> RUNNING for worker :p_id at :p_now (it took a job)."""
    return (
        update(workers)
        .where(W.id == bindparam("p_id"), W.state == bindparam("p_from"))
        .values(
            state=WorkerState.RUNNING.value,
            state_since=bindparam("p_now"),
            reason=bindparam("p_reason"),
            idle_since=None,
            last_seen_at=bindparam("p_now"),
        )
    )


TO_RUNNING = frozenset(s.value for s in sources(WorkerState.RUNNING))
TAKING = frozenset(s.value for s in TAKES_JOBS)


def takes_jobs(worker_id: ColumnElement[str]) -> ScalarSelect[int]:
    """SQL for what `WorkerStore.taking` checks: 1 when worker `worker_id` may be handed new jobs (a state
    that takes jobs, not recycled), else 0. A statement about a job can ask it in passing (the result
    of a job and whether its worker may take the next are one statement)."""
    return (
        select(func.count())
        .select_from(workers)
        .where(
            W.id == worker_id, or_(*(W.state == constant(s) for s in sorted(TAKING))), W.recycle.is_(False)
        )
        .scalar_subquery()
    )


def _stamp(now: float, state_since: float | None, metered_until: float | None) -> float:
    """When a transition happening `now` is recorded: never before the worker's last transition, nor
    inside a span the meter has billed. Processes take `now` before their transaction and commit in any
    order (a replica's job-take, the lifecycle on another); so each worker's transitions stay in order,
    and billing from them, recomputed at any time, is what the meter charged."""
    return max(now, state_since or 0.0, metered_until or 0.0)


class WorkerStore(Repository):
    def __init__(self, engine: Engine, raw: RawAccess | None = None) -> None:
        super().__init__(engine, raw)
        # Hot statements, compiled once and run on the raw connection (see `Prepared`).
        self._get = PreparedRows(engine, select(workers).where(W.id == bindparam("p_id")), WorkerRow)
        self._event = insert(worker_events)
        self._event_raw = Prepared(engine, _event_statement())
        self._settle = PreparedRows(engine, _settle_statement(), WorkerOwner)
        # What a transition reads first: the worker's state and owner, and where the transition may be
        # stamped, not before its last one nor before what the meter has billed (`_stamp`; the row stays
        # locked to the transaction on PostgreSQL).
        self._current = (
            select(W.state, W.endpoint_id, W.account_id, W.state_since, meter_cursors.c.metered_until)
            .select_from(workers.outerjoin(meter_cursors, meter_cursors.c.worker_id == W.id))
            .where(W.id == bindparam("p_id"))
            .with_for_update(of=workers)
        )
        self._current_raw = PreparedRows(engine, self._current, _Current)
        self._run = Prepared(engine, _run_statement())
        self._taking = PreparedRows(
            engine,
            select(W.state, W.recycle, W.endpoint_id, W.account_id).where(W.id == bindparam("p_id")),
            TakingWorker,
        )
        self._seen = Prepared(
            engine, update(workers).where(W.id == bindparam("p_id")).values(last_seen_at=bindparam("p_now"))
        )
        self._recycle = Prepared(
            engine, update(workers).where(W.id == bindparam("p_id")).values(recycle=True)
        )

    def create(
        self,
        *,
        id: str,
        endpoint_id: str,
        account_id: str,
        release: int,
        type: str,
        state: WorkerState,
        now: float,
        reason: str,
        gpu_type: str | None,
        gpu_count: int,
        gpu_devices: str,
        backend: str,
        launched: bool,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(workers).values(
                    id=id,
                    endpoint_id=endpoint_id,
                    account_id=account_id,
                    release=release,
                    type=type,
                    state=state.value,
                    state_since=now,
                    reason=reason,
                    gpu_type=gpu_type,
                    gpu_count=gpu_count,
                    gpu_devices=gpu_devices,
                    backend=backend,
                    launched_at=now if launched else None,
                    created_at=now,
                )
            )
            conn.execute(
                insert(worker_events).values(
                    worker_id=id,
                    endpoint_id=endpoint_id,
                    account_id=account_id,
                    from_state=None,
                    to_state=state.value,
                    at=now,
                    reason=reason,
                )
            )

    def transition(
        self,
        worker_id: str,
        to: WorkerState,
        now: float,
        reason: str = "",
        only_from: Sequence[WorkerState] | None = None,
        conn: Connection | None = None,
        **values: object,
    ) -> str | None:
        """Move a worker to `to` if its current state allows it. Returns the previous state, or None
        when the transition was not legal (or the worker is unknown); nothing changes then."""
        allowed = [s.value for s in (only_from if only_from is not None else sources(to)) if s in sources(to)]
        with transaction(self.engine, conn) as tx:
            row = tx.execute(self._current, {"p_id": worker_id}).first()  # locks the row first
            if row is None or row.state not in allowed:
                return None
            now = _stamp(now, row.state_since, row.metered_until)
            res = tx.execute(
                update(workers)
                .where(W.id == worker_id, W.state == row.state)
                .values(state=to.value, state_since=now, reason=reason, **values)
            )
            if not res.rowcount:
                return None
            tx.execute(
                self._event,
                dict(
                    worker_id=worker_id,
                    endpoint_id=row.endpoint_id,
                    account_id=row.account_id,
                    from_state=row.state,
                    to_state=to.value,
                    at=now,
                    reason=reason,
                ),
            )
            return str(row.state)

    def taking(self, worker_id: str, cur: Cursor | None = None) -> TakingWorker | None:
        """The worker's state, endpoint and account when it may be handed new jobs now, else None
        (unknown, retiring, recycled)."""
        with self.raw.read() if cur is None else self.raw.write(cur) as tx:
            row = self._taking.first(tx, p_id=worker_id)
        if row is None or row["state"] not in TAKING or row["recycle"]:
            return None
        return row

    def start_running(
        self,
        worker_id: str,
        now: float,
        reason: str,
        cur: Cursor | None = None,
    ) -> bool:
        """IDLE (or another state that may take a job) -> RUNNING, with its event; False when the worker's
        state doesn't allow it (nothing changes then)."""
        with self.raw.write(cur) as tx:
            row = self._current_raw.first(tx, p_id=worker_id)  # locks the row first
            if row is None or row["state"] not in TO_RUNNING:
                return False
            now = _stamp(now, row["state_since"], row["metered_until"])
            self._run.execute(tx, p_id=worker_id, p_from=row["state"], p_now=now, p_reason=reason)
            if not tx.rowcount:
                return False
            self._log(tx, worker_id, row, row["state"], WorkerState.RUNNING, now, reason)
            return True

    def settle_if_idle(self, worker_id: str, now: float, cur: Cursor | None = None) -> bool:
        """RUNNING -> IDLE when the worker holds no IN_PROGRESS job any more (one transaction)."""
        with self.raw.write(cur) as tx:
            floor = self._current_raw.first(tx, p_id=worker_id)  # locks the row first
            if floor is None:
                return False
            now = _stamp(now, floor["state_since"], floor["metered_until"])
            row = self._settle.first(tx, p_id=worker_id, p_now=now)
            if row is None:
                return False
            self._log(tx, worker_id, row, WorkerState.RUNNING.value, WorkerState.IDLE, now, SETTLED)
            return True

    def settle_late(self, worker_id: str, finished_at: float) -> bool:
        """`settle_if_idle` a moment after the worker's last job finished at `finished_at` (it was held
        RUNNING in case a job came at once): stamped at `finished_at`, or where its last transition or
        its billing already is when later, so that its transitions stay in order and no billed span
        changes (the meter's save checks for a transition stamped inside the span it billed)."""
        return self.settle_if_idle(worker_id, finished_at)

    def _log(
        self, tx: Cursor, worker_id: str, row: WorkerOwner, frm: str, to: WorkerState, now: float, reason: str
    ) -> None:
        """The event row of a transition made on the raw connection (`row` has its endpoint and account)."""
        self._event_raw.execute(
            tx,
            p_worker=worker_id,
            p_endpoint=row["endpoint_id"],
            p_account=row["account_id"],
            p_from=frm,
            p_to=to.value,
            p_now=now,
            p_reason=reason,
        )

    def recycle(self, worker_id: str, cur: Cursor | None = None) -> None:
        """Mark the worker for recycling (stopPod): it is handed no new job, and the lifecycle stops and
        replaces it once it holds none."""
        with self.raw.write(cur) as tx:
            self._recycle.execute(tx, p_id=worker_id)

    def seen(self, worker_id: str, now: float) -> None:
        """Record that the worker was heard from at `now`."""
        with self.raw.write() as tx:
            self._seen.execute(tx, p_id=worker_id, p_now=now)

    def update(self, worker_id: str, **values: object) -> None:
        """Set columns of the worker's record other than its state (a state changes by `transition`,
        guarded by `core.workers.ALLOWED` and recorded as an event)."""
        if {"state", "state_since"} & values.keys():
            raise ValueError("a worker's state changes by transition(), not update()")
        with self.engine.begin() as conn:
            conn.execute(update(workers).where(W.id == worker_id).values(**values))

    def set_starting_reason(self, worker_id: str, reason: str) -> bool:
        """Say what an INITIALIZING worker's start is doing now ("installing requirements"): its reason
        changes, its state, `state_since` and history do not. False (nothing changes) when the worker is
        unknown or no longer INITIALIZING, so a late report never overwrites a later state's reason."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(workers)
                .where(W.id == worker_id, W.state == WorkerState.INITIALIZING.value)
                .values(reason=reason)
            )
            return bool(res.rowcount)

    def get(self, worker_id: str, account_id: str | None = None) -> WorkerRow | None:
        with self.raw.read() as cur:
            row = self._get.first(cur, p_id=worker_id)
        if row is None or (account_id is not None and row["account_id"] != account_id):
            return None
        return row

    def list(
        self, *, endpoint_id: str | None = None, account_id: str | None = None, include_stopped: bool = False
    ) -> Sequence[WorkerRow]:
        q = select(workers)
        if endpoint_id is not None:
            q = q.where(W.endpoint_id == endpoint_id)
        if account_id is not None:
            q = q.where(W.account_id == account_id)
        if not include_stopped:
            q = q.where(W.state != WorkerState.STOPPED.value)
        return self._rows(WorkerRow, q.order_by(W.created_at))

    def count_live_by_account(self) -> dict[str, int]:
        with self.reader.connect() as conn:
            rows = conn.execute(
                select(W.account_id, func.count())
                .where(W.state != WorkerState.STOPPED.value)
                .group_by(W.account_id)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def history(self, worker_id: str) -> Sequence[WorkerEvent]:
        return self._rows(
            WorkerEvent,
            select(worker_events)
            .where(worker_events.c.worker_id == worker_id)
            .order_by(worker_events.c.at, worker_events.c.id),
        )

    def events_from(self, worker_id: str, since_at: float | None) -> Sequence[WorkerEvent]:
        """The worker's transitions in order from the one in force at `since_at` (the last at or before
        it) on; its whole history when `since_at` is None. What billing from a cursor needs."""
        if since_at is None:
            return self.history(worker_id)
        ev = worker_events.c
        in_force = (
            select(ev.at, ev.id)
            .where(ev.worker_id == worker_id, ev.at <= since_at)
            .order_by(ev.at.desc(), ev.id.desc())
            .limit(1)
            .subquery()
        )
        start = select(in_force.c.at).scalar_subquery()
        return self._rows(
            WorkerEvent,
            select(worker_events)
            .where(ev.worker_id == worker_id, ev.at >= func.coalesce(start, since_at))
            .order_by(ev.at, ev.id),
        )
