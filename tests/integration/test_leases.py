"""The loops' lease among processes on one database (PostgreSQL advisory lock; a lock file beside a
SQLite database): one holder at a time, and another process takes it once the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from ember.store.leases import Lease
from tests.conftest import need
from tests.integration.store_fixtures import PG_URL, pg_available

HOLDER = """
import sys, time
from sqlalchemy import create_engine
from ember.store.leases import Lease
lease = Lease(create_engine(sys.argv[1]), sys.argv[2])
print("held" if lease.held() else "refused", flush=True)
time.sleep(600)
"""


def _url(db: str, tmp_path: Path) -> str:
    if db == "postgres":
        ok, why = pg_available()
        need("postgres", ok, why)
        return PG_URL
    return f"sqlite:///{tmp_path / 'ember.db'}"


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_one_process_holds_the_lease_and_another_takes_it_when_the_holder_dies(
    db: str, tmp_path: Path
) -> None:
    url = _url(db, tmp_path)
    name = f"test-{uuid.uuid4().hex[:8]}"  # not "loops": a server elsewhere on the database may hold that
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, name], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        engine = create_engine(url)
        mine = Lease(engine, name)
        assert not mine.held() and not mine.held()  # refused while the holder lives
        other = Lease(engine, name + "-other")
        assert other.held()  # another lease name is another lock
        other.release()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not mine.held():
            assert time.monotonic() < deadline, "the lease was not freed by the holder's death"
            time.sleep(0.05)
        assert mine.held()  # and kept
        mine.release()
        again = subprocess.run(
            [sys.executable, "-c", HOLDER.replace("time.sleep(600)", ""), url, name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.stdout.strip() == "held", again.stderr  # released: the next process takes it
        engine.dispose()
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()
