"""Several processes starting at once on one fresh database (replicas, or a restart beside a CLI run):
the migrations run once, the others wait and find nothing to do, and one admin account is made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, pg_available, reset_pg

PROCESSES = 4

STARTER = """
import json, os, sys, time
from pathlib import Path
from ember.app import ensure_admin
from ember.control.clock import SystemClock
from ember.settings import Settings
from ember.store.facade import Store
go = Path(sys.argv[2])
while not go.exists():  # every process is up and waiting: they all start now
    time.sleep(0.001)
store = Store.open(sys.argv[1])
key = ensure_admin(store, Settings(home=Path(os.environ["EMBER_HOME"])), SystemClock())
print(json.dumps({"made_admin": key is not None}))
store.close()
"""


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_processes_starting_at_once_migrate_once_and_make_one_admin(db: str, tmp_path: Path) -> None:
    if db == "postgres":
        ok, why = pg_available()
        need("postgres", ok, why)
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'shared' / 'ember.db'}"
    if db == "postgres":
        reset_pg(url)
    go = tmp_path / "go"
    procs = []
    for i in range(PROCESSES):
        env = {**os.environ, "EMBER_HOME": str(tmp_path / f"home{i}")}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", STARTER, url, str(go)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    time.sleep(1.0)  # let every interpreter import and reach its wait
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["made_admin"] for r in results) == 1, results
    engine = create_engine(url)
    with engine.connect() as conn:
        admins = conn.execute(text("SELECT count(*) FROM accounts WHERE is_admin")).scalar_one()
        keys = conn.execute(text("SELECT count(*) FROM api_keys WHERE kind = 'admin'")).scalar_one()
        versions = conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one()
    engine.dispose()
    assert (admins, keys, versions) == (1, 1, 1)
