"""`ember migrate`: the schema brought to this version as a separate step (servers migrate at start
too), on the embedded SQLite and on PostgreSQL, twice without harm; three at once on a fresh
PostgreSQL database all succeed (the migration runs under an advisory lock); a database that cannot
be reached is one clear line and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, pg_available, reset_pg


def migrate(home: Path, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMBER_HOME": str(home), "COLUMNS": "200"}
    env.pop("EMBER_DATABASE_URL", None)
    if database_url:
        env["EMBER_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "ember.cli.main", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_brings_sqlite_to_the_newest_revision_and_again_is_harmless(tmp_path: Path) -> None:
    for _ in range(2):
        done = migrate(tmp_path / "home")
        assert done.returncode == 0, done.stderr
        assert "schema revision" in done.stdout
    assert (tmp_path / "home" / "ember.db").exists()


def test_three_migrations_at_once_on_a_fresh_postgresql_database_all_succeed(tmp_path: Path) -> None:
    ok, why = pg_available()
    need("postgres", ok, why)
    reset_pg()
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda i: migrate(tmp_path / f"h{i}", PG_URL), range(3)))
    for done in runs:
        assert done.returncode == 0, done.stderr
    assert len({done.stdout.strip() for done in runs}) == 1  # one revision for all


def test_an_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    done = migrate(tmp_path / "home", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert done.returncode == 1
    assert "database migration failed" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
