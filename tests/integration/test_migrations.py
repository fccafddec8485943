"""The Alembic migrations build exactly the schema the code declares, on each real database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from ember.store.facade import Store
from ember.store.schema import metadata


def test_migrations_match_the_declared_schema(store: Store) -> None:
    with store.db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrating_again_is_a_no_op(store: Store) -> None:
    from ember.store.db import migrate

    migrate(store.db.engine)
    with store.db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
