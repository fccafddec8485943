"""Templates: an account's saved endpoint settings (RunPod's pod templates), kept as a JSON object."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from sqlalchemy import insert, select, update

from ember.core.json_body import Json
from ember.store.db import Repository
from ember.store.rows import TemplateRow
from ember.store.schema import templates

T = templates.c


class TemplateStore(Repository):
    def create(self, *, id: str, account_id: str, name: str, data: Mapping[str, Json], now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(templates).values(
                    id=id, account_id=account_id, name=name, data=json.dumps(data), created_at=now
                )
            )

    def list(self, account_id: str) -> Sequence[TemplateRow]:
        """The account's templates, oldest first."""
        return self._rows(
            TemplateRow, select(templates).where(T.account_id == account_id).order_by(T.created_at)
        )

    def get(self, template_id: str, account_id: str) -> TemplateRow | None:
        """One template of the account (None for another account's)."""
        return self._first(
            TemplateRow, select(templates).where(T.id == template_id, T.account_id == account_id)
        )

    def update(self, template_id: str, name: str, data: Mapping[str, Json]) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(templates).where(T.id == template_id).values(name=name, data=json.dumps(data))
            )

    def delete(self, template_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(templates.delete().where(T.id == template_id))
