"""Leases: which of the processes on one database runs the once-only loops.

One lease, `loops`, covers the lifecycle, the reaper (time-outs, purges, webhooks), the meter and the
builder. They act on the same workers and jobs and read each other's results (the lifecycle's
transitions are what the meter bills; the reaper re-queues what the lifecycle finds lost), so one holder
keeps them in order, and a per-loop lease would only let two processes split them. The job path needs no
lease: claims are single statements (SKIP LOCKED on PostgreSQL), and the meter's cursor moves by
compare-and-set besides.

PostgreSQL: a session advisory lock on a connection the holder keeps open. When the holder dies its
connection closes and the server releases the lock at once; another process takes it at its next try
(each loop tries every tick). SQLite: an exclusive POSIX record lock (`lockf`) on a file beside the
database, released by the kernel when the holder exits (and, unlike `flock`, never inherited by a child
the holder forks). An in-memory database has one process by definition."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("ember.leases")


def lock_key(name: str) -> int:
    """A stable 63-bit advisory-lock key for a lease name."""
    return int.from_bytes(hashlib.sha256(f"ember-lease:{name}".encode()).digest()[:8], "big") >> 1


class Lease:
    """Held by at most one process among those on `engine`'s database; `held()` takes it when free."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._lock = threading.Lock()
        self._conn: Connection | None = None  # PostgreSQL: the connection that holds the advisory lock
        self._fd: int | None = None  # SQLite: the locked file
        database = engine.url.database
        self._path = f"{database}.lease-{name}" if database and database != ":memory:" else None

    def held(self) -> bool:
        """Whether this process holds the lease now, taking it if no one does (blocking, quick)."""
        with self._lock:
            if self.engine.dialect.name == "postgresql":
                return self._held_pg()
            return self._held_file()

    def _held_pg(self) -> bool:
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))  # still connected, so still holding
                return True
            conn = self.engine.connect()
            try:
                key = {"k": lock_key(self.name)}
                got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar())
                conn.commit()
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._conn = conn
            log.info("lease_taken lease=%s", self.name)
            return True
        except SQLAlchemyError as exc:
            self._drop_pg()
            log.warning("lease_lost lease=%s error=%s", self.name, exc)
            return False

    def _drop_pg(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: its session may still hold the lock
            except SQLAlchemyError:
                pass

    def _held_file(self) -> bool:
        if self._path is None or self._fd is not None:
            return True
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: another process holds it
            os.close(fd)
            return False
        self._fd = fd
        log.info("lease_taken lease=%s", self.name)
        return True

    def release(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(self.name)})
                    self._conn.commit()
                except SQLAlchemyError:
                    pass
                self._drop_pg()
            if self._fd is not None:
                os.close(self._fd)  # closing the file releases its lock
                self._fd = None
