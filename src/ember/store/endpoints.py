"""Endpoints (spec, status message, scaling verdict), the scaler's decisions (`scale_events`) and
releases."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.engine import Connection

from ember.core.json_body import Json
from ember.store.db import Repository, transaction
from ember.store.rows import EndpointRow, ReleaseRow, ScaleEventRow
from ember.store.schema import endpoints, releases, scale_events

E = endpoints.c
R = releases.c


@dataclass(frozen=True)
class ScaleEvent:
    """What the scaler saw when it changed its decision (kept beside the new target and reason)."""

    at: float
    queued: int
    workers: int


class EndpointStore(Repository):
    # ---- endpoints ---------------------------------------------------------------------------------
    def create(
        self,
        *,
        id: str,
        account_id: str,
        name: str,
        spec_json: str,
        release_key: str,
        now: float,
        release_status: str = "READY",
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(endpoints).values(
                    id=id,
                    account_id=account_id,
                    name=name,
                    spec=spec_json,
                    release=1 if release_status == "READY" else 0,
                    release_key=release_key,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                insert(releases).values(
                    endpoint_id=id, number=1, spec=spec_json, status=release_status, created_at=now
                )
            )

    def update_spec(
        self,
        endpoint_id: str,
        *,
        name: str,
        spec_json: str,
        release_key: str,
        new_release: bool,
        now: float,
        release_status: str = "READY",
    ) -> int:
        """Store a new spec; when `new_release`, add a release (READY: it serves at once). Returns the
        number of the release that was added, or the serving one."""
        with self.engine.begin() as conn:
            current = conn.execute(select(E.release).where(E.id == endpoint_id)).scalar_one()
            values: dict[str, object] = dict(name=name, spec=spec_json, updated_at=now)
            number = current
            if new_release:
                number = self.add_release(endpoint_id, spec_json, release_status, now, conn=conn)
                values["release_key"] = release_key
                if release_status == "READY":
                    values["release"] = number
            conn.execute(update(endpoints).where(E.id == endpoint_id).values(**values))
            return int(number)

    def set_release(
        self, endpoint_id: str, number: int, spec_json: str, release_key: str, now: float
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(endpoints)
                .where(E.id == endpoint_id)
                .values(release=number, spec=spec_json, release_key=release_key, updated_at=now)
            )

    def finish_release(
        self,
        endpoint_id: str,
        number: int,
        *,
        status: str,
        log: str,
        image: str | None = None,
        commit: str | None = None,
        spec_json: str | None = None,
    ) -> None:
        """Record a build's outcome; `spec_json` replaces the release's spec (a built image's name)."""
        values: dict[str, object] = dict(status=status, log=log, image=image, commit=commit)
        if spec_json is not None:
            values["spec"] = spec_json
        with self.engine.begin() as conn:
            conn.execute(
                update(releases).where(R.endpoint_id == endpoint_id, R.number == number).values(**values)
            )

    def set_release_log(self, endpoint_id: str, number: int, log: str) -> None:
        """The build log so far of a release still building."""
        with self.engine.begin() as conn:
            conn.execute(
                update(releases)
                .where(R.endpoint_id == endpoint_id, R.number == number, R.status == "BUILDING")
                .values(log=log)
            )

    def building(self) -> Sequence[ReleaseRow]:
        """Releases waiting to be built (of endpoints not deleted), oldest first."""
        q = (
            select(releases)
            .join(endpoints, E.id == R.endpoint_id)
            .where(R.status == "BUILDING", E.deleted_at.is_(None))
            .order_by(R.created_at, R.number)
        )
        return self._rows(ReleaseRow, q)

    def set_scaling(
        self,
        endpoint_id: str,
        desired: int,
        reason: str,
        memory: Mapping[str, Json],
        status_message: str | None = None,
        decision: ScaleEvent | None = None,
    ) -> None:
        """Persist the scaler's target, reason and memory; `decision`, when the target or the reason
        changed, is kept in `scale_events` (the console's list of the scaler's decisions)."""
        values: dict[str, object] = dict(
            desired_workers=desired, scale_reason=reason, scale_memory=json.dumps(memory)
        )
        if status_message is not None:
            values["status_message"] = status_message
        with self.engine.begin() as conn:
            conn.execute(update(endpoints).where(E.id == endpoint_id).values(**values))
            if decision is not None:
                conn.execute(
                    insert(scale_events).values(
                        endpoint_id=endpoint_id,
                        at=decision.at,
                        desired=desired,
                        reason=reason,
                        queued=decision.queued,
                        workers=decision.workers,
                    )
                )

    def scale_events(self, endpoint_id: str, since: float, limit: int = 200) -> Sequence[ScaleEventRow]:
        """The scaler's decisions for an endpoint since `since`, newest first."""
        S = scale_events.c
        query = select(scale_events).where(S.endpoint_id == endpoint_id, S.at >= since)
        return self._rows(ScaleEventRow, query.order_by(S.at.desc(), S.id.desc()).limit(limit))

    def set_status(self, endpoint_id: str, message: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(endpoints).where(E.id == endpoint_id).values(status_message=message))

    def get(
        self, ref: str, account_id: str | None = None, include_deleted: bool = False
    ) -> EndpointRow | None:
        """By id, or by name within `account_id`."""
        q = select(endpoints)
        q = q.where(or_(E.id == ref, E.name == ref)) if account_id is not None else q.where(E.id == ref)
        if account_id is not None:
            q = q.where(E.account_id == account_id)
        if not include_deleted:
            q = q.where(E.deleted_at.is_(None))
        rows = self._rows(EndpointRow, q)
        for row in rows:  # an id match wins over a name match
            if row["id"] == ref:
                return row
        return rows[0] if rows else None

    def list(self, account_id: str | None = None) -> Sequence[EndpointRow]:
        q = select(endpoints).where(E.deleted_at.is_(None))
        if account_id is not None:
            q = q.where(E.account_id == account_id)
        return self._rows(EndpointRow, q.order_by(E.created_at))

    def delete(self, endpoint_id: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(endpoints).where(E.id == endpoint_id).values(deleted_at=now, updated_at=now))

    # ---- releases ----------------------------------------------------------------------------------
    def releases(self, endpoint_id: str) -> Sequence[ReleaseRow]:
        return self._rows(ReleaseRow, select(releases).where(R.endpoint_id == endpoint_id).order_by(R.number))

    def release(self, endpoint_id: str, number: int) -> ReleaseRow | None:
        return self._first(
            ReleaseRow, select(releases).where(R.endpoint_id == endpoint_id, R.number == number)
        )

    def add_release(
        self, endpoint_id: str, spec_json: str, status: str, now: float, conn: Connection | None = None
    ) -> int:
        """Add the endpoint's next release (numbered 1, 2, 3…) and return its number."""
        with transaction(self.engine, conn) as tx:
            last = tx.execute(
                select(func.coalesce(func.max(R.number), 0)).where(R.endpoint_id == endpoint_id)
            ).scalar_one()
            number = int(last) + 1
            tx.execute(
                insert(releases).values(
                    endpoint_id=endpoint_id, number=number, spec=spec_json, status=status, created_at=now
                )
            )
            return number
