"""Integration fixtures: a fresh store on each real database (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.store.facade import Store
from tests.conftest import need
from tests.integration.store_fixtures import fresh_pg, pg_available


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = Store.open(f"sqlite:///{tmp_path / 'ember.db'}")
    else:
        ok, why = pg_available()
        need("postgres", ok, why)
        s = fresh_pg()
    yield s
    s.close()
