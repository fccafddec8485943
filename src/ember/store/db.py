"""Engine creation (SQLite in WAL with BEGIN IMMEDIATE, or PostgreSQL) and Alembic migrations at start.

SQLite runs its statements on the caller's thread (they take microseconds); PostgreSQL statements are
sent to a thread pool by `Database.run` so the event loop never blocks on the network.

The job path's few statements (submit, claim, finish, a worker's turn between Idle and Running) run as
`Prepared` statements: each is still written once in SQLAlchemy Core, compiled once for the engine's
dialect and then run on the raw driver connection, which costs a tenth of a Core `execute`.
"""

from __future__ import annotations

import functools
import logging
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Generic, ParamSpec, Protocol, TypeVar, cast, get_type_hints

import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import Boolean, Select, Table, create_engine, event, literal_column, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import Executable, GenerativeSelect, ReturnsRows, SelectBase

from ember.core.errors import StoreError
from ember.store import outbox
from ember.store.schema import EnumText

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R", bound=Mapping[str, object])
S = TypeVar("S", bound=GenerativeSelect)

MIGRATIONS = Path(__file__).parent / "migrations"
SAFETY_CHECKPOINT_PAGES = 10_000
log = logging.getLogger("ember.store")


# How long a SQLite statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT_MS = 30_000


def _null(value: None) -> None:
    return value


# sqlite3 binds an exact int, float, str or bytearray as it is, and "adapts" any other value first: it
# looks for a registered adapter, then for `__adapt__` on its protocol and `__conform__` on the value,
# each a failed attribute look-up that formats an AttributeError message (about 1,200 instructions, some
# 18 parameters a job). A registered adapter is found at once: NULLs and booleans (bound as 0 and 1,
# as sqlite3 would) take that path. Process-wide, as sqlite3's registry is.
sqlite3.register_adapter(type(None), _null)
sqlite3.register_adapter(bool, int)


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, NORMAL sync (durable against process crashes) and
    immediate write transactions so that a claim never races another writer."""
    if url.startswith("sqlite"):
        if url not in ("sqlite://", "sqlite:///:memory:"):
            path = url.split("///", 1)[1]
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "isolation_level": None, "timeout": 30},
            poolclass=StaticPool if url in ("sqlite://", "sqlite:///:memory:") else None,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # The reaper checkpoints the log each tick from a thread (`Store.checkpoint`); this is the
            # safety net should it fall behind (about 40 MB of log).
            cur.execute(f"PRAGMA wal_autocheckpoint={SAFETY_CHECKPOINT_PAGES}")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writes take the write lock up front, so a claim never races another writer; plain reads
            # run in autocommit (WAL readers never block and need no transaction of their own).
            if conn.get_execution_options().get("ember_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def writer(engine: Engine) -> Engine:
    """The engine that repositories write through (`begin()`); `connect()` on the plain one reads."""
    return engine.execution_options(ember_write=True)


def constant(value: str) -> ColumnElement[str]:
    """A value written into the SQL text rather than bound: the planner then sees it, so a partial index
    on it is used (SQLite would otherwise re-prepare the statement on every binding)."""
    if not value.replace("_", "").isalnum():
        raise ValueError(f"not a plain constant: {value!r}")
    return literal_column(f"'{value}'")


Params = Mapping[str, object] | tuple[object, ...]


class Cursor(Protocol):
    """The DB-API cursor calls the job path makes (sqlite3's and psycopg's cursors both fit)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Params, /) -> object: ...

    def fetchall(self) -> Sequence[Sequence[object]]: ...


def _picker(positions: Sequence[str]) -> Callable[[Mapping[str, object]], tuple[object, ...]]:
    """The parameter tuple of a positional driver (sqlite3's qmark) out of a dict, in one C call."""
    if not positions:
        return lambda merged: ()
    if len(positions) == 1:
        only = positions[0]
        return lambda merged: (merged[only],)
    return operator.itemgetter(*positions)


class Prepared:
    """One Core statement compiled once for `engine`'s dialect, run on a raw DB-API cursor (`execute`).
    `PreparedRows` is one whose rows the caller reads."""

    def __init__(self, engine: Engine, statement: ReturnsRows) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        if not isinstance(compiled, SQLCompiler):
            raise TypeError(f"not a SQL statement: {statement!r}")
        self.sql = compiled.string
        self._positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        self._pick = _picker(self._positions or ())
        self._fixed: dict[str, object] = dict(compiled.params)
        self.columns = (
            statement.selected_columns if isinstance(statement, SelectBase) else statement.exported_columns
        )

    def params(self, values: Mapping[str, object]) -> Params:
        merged = {**self._fixed, **values}
        if self._positions is None:
            return merged
        return self._pick(merged)

    def execute(self, cur: Cursor, **values: object) -> Cursor:
        cur.execute(self.sql, self.params(values))
        return cur


@functools.cache
def _row_keys(row: type[Mapping[str, object]]) -> frozenset[str]:
    return frozenset(get_type_hints(row))


def check_row(row: type[Mapping[str, object]], keys: Iterable[str], statement: object) -> None:
    """Raise TypeError unless the TypedDict `row` names exactly the columns `keys` of `statement`."""
    if frozenset(keys) != _row_keys(row):
        raise TypeError(f"{row.__name__} does not name the columns {sorted(keys)} of {statement}")


class PreparedRows(Prepared, Generic[R]):
    """A `Prepared` statement that returns rows, each as an `R` (a TypedDict whose keys are the
    statement's column names, checked once here): plain dicts, booleans as bool, like Core's mappings.
    Only for statements whose types need no conversion beyond that (strings, numbers, booleans, and the
    state columns' `EnumText`)."""

    def __init__(self, engine: Engine, statement: ReturnsRows, row: type[R]) -> None:
        super().__init__(engine, statement)
        self.keys = tuple(self.columns.keys())
        check_row(row, self.keys, self.sql)
        self._bools = tuple(i for i, c in enumerate(self.columns) if isinstance(c.type, Boolean))
        # State columns come back as their enum members, as Core's own result processing gives them.
        self._enums = tuple(
            (self.keys[i], c.type.enum) for i, c in enumerate(self.columns) if isinstance(c.type, EnumText)
        )
        # The driver's rows are untyped: `row`'s keys are the statement's columns (checked above).
        self._decode = cast("Callable[[Sequence[object]], R]", self._row)

    def rows(self, cur: Cursor, **values: object) -> list[R]:
        decode = self._decode
        return [decode(r) for r in self.execute(cur, **values).fetchall()]

    def first(self, cur: Cursor, **values: object) -> R | None:
        rows = self.execute(cur, **values).fetchall()  # fetch all: a pending statement blocks COMMIT
        return self._decode(rows[0]) if rows else None

    def _row(self, raw: Sequence[object]) -> dict[str, object]:
        row = dict(zip(self.keys, raw, strict=True))
        for i in self._bools:
            value = raw[i]
            if value is not None:
                row[self.keys[i]] = bool(value)
        for key, enum in self._enums:
            value = row[key]
            if value is not None:
                row[key] = enum(value)
        return row


class RawAccess:
    """Transactions and reads on the raw driver connection, for `Prepared` statements.

    SQLite: one connection of its own, used under a lock (store calls run inline on the event loop's
    thread, so the lock is uncontended there); writes take `BEGIN IMMEDIATE`. PostgreSQL: a pooled
    connection per call. Driver errors surface as `StoreError`.

    SQLite also takes deferred writes (`defer`): each runs first in the next write transaction on this
    connection (a read, `flush`, or any connection the engine hands out makes one), and is committed
    with it. So every reader in the process sees them; only a crash can lose them.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._errors = (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)
        self._lock = threading.RLock()
        self._conn: PoolProxiedConnection | None = None
        self._driver: sqlite3.Connection | None = None
        self._deferred: list[tuple[str | None, Callable[[Cursor], object]]] = []
        self._keys: set[str] = set()  # the keys of the deferred writes
        # When the oldest deferred write was deferred (`time.monotonic()`); meaningless when none waits.
        self.deferred_since = 0.0
        self._watching = False  # the engine's checkouts flush the deferred writes

    def _sqlite(self) -> sqlite3.Connection:
        if self._driver is None:
            conn = self.engine.raw_connection()
            driver = conn.driver_connection
            if not isinstance(driver, sqlite3.Connection):
                conn.close()
                raise StoreError(f"not a sqlite3 connection: {driver!r}")
            # The job path's commits never checkpoint: that work is done off the event loop.
            driver.execute("PRAGMA wal_autocheckpoint=0")
            self._conn, self._driver = conn, driver
        return self._driver

    @contextmanager
    def write(self, cur: Cursor | None = None) -> Iterator[Cursor]:
        """A write transaction (or the caller's `cur`, already inside one); commits on success."""
        if cur is not None:
            yield cur
            return
        try:
            if self.is_sqlite:
                with self._lock:
                    dbapi = self._sqlite()
                    lite = dbapi.cursor()
                    lite.execute("BEGIN IMMEDIATE")
                    since = self.deferred_since
                    deferred = self._run_deferred(lite) if self._deferred else ()
                    try:
                        yield lite
                        dbapi.commit()
                    except BaseException:
                        dbapi.rollback()
                        if deferred:  # for the next transaction, as old as they were
                            self._deferred[0:0] = deferred
                            self._keys.update(key for key, _ in deferred if key is not None)
                            self.deferred_since = since
                        raise
                return
            with self.engine.raw_connection() as pooled:
                pg = pooled.cursor()
                try:
                    yield pg
                    outbox.flush(pg)  # the other processes hear of it at this commit
                except BaseException:
                    pooled.rollback()
                    raise
                pooled.commit()
        except self._errors as exc:
            raise StoreError(f"database error: {exc}") from exc

    @contextmanager
    def read(self, *, deferred: bool = True) -> Iterator[Cursor]:
        """A read. SQLite: after the deferred writes are committed, unless the caller says that they
        cannot change what it reads (`deferred=False`)."""
        try:
            if self.is_sqlite:
                with self._lock:
                    if deferred and self._deferred:
                        self.flush()
                    yield self._sqlite().cursor()
                return
            with self.engine.raw_connection() as pooled:
                try:
                    yield pooled.cursor()
                finally:
                    pooled.rollback()
        except self._errors as exc:
            raise StoreError(f"database error: {exc}") from exc

    def defer(self, write: Callable[[Cursor], object], key: str | None = None) -> None:
        """SQLite: run `write(cursor)` in the next write transaction on this connection instead of one
        of its own; `key` names it for `waiting` until then. The caller arranges a `flush` soon, which
        bounds how long it waits (`deferred_since`; a process that dies before it loses the write)."""
        if not self.is_sqlite:
            raise TypeError("only SQLite's connection defers writes")
        with self._lock:
            self._sqlite()  # opened now: a flush never has to check a connection out
            if not self._watching:
                event.listen(self.engine, "checkout", self._flush_for_reader)
                self._watching = True
            if not self._deferred:
                self.deferred_since = time.monotonic()
            self._deferred.append((key, write))
            if key is not None:
                self._keys.add(key)

    def waiting(self, key: str) -> bool:
        """Whether the deferred write named `key` is still to run."""
        return key in self._keys

    @property
    def deferred(self) -> int:
        """How many deferred writes wait for a transaction."""
        return len(self._deferred)

    def flush(self) -> None:
        """Commit the deferred writes now (nothing when none is waiting)."""
        with self._lock:
            if self._deferred:
                with self.write():
                    pass

    def _flush_for_reader(self, *_: object) -> None:
        """A connection checked out of the engine's pool (the repositories' own statements) sees the
        deferred writes: they are committed first. Never waits: when this connection is in use on another
        thread, or another connection holds the database's write lock (perhaps the caller's own open
        transaction), the reader goes on without them, as a reader in another process would."""
        if not self._deferred or not self._lock.acquire(blocking=False):
            return
        try:
            driver = self._driver
            if driver is None or not self._deferred:
                return
            driver.execute("PRAGMA busy_timeout=0")
            try:
                self.flush()
            except StoreError as exc:
                log.debug("deferred writes left for the next transaction: %s", exc)
            finally:
                driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        finally:
            self._lock.release()

    def _run_deferred(self, cur: Cursor) -> list[tuple[str | None, Callable[[Cursor], object]]]:
        """Take the deferred writes into the transaction `cur` has begun, and return them (waiting again
        should it roll back). One that fails is logged and dropped (SQLite has undone just it)."""
        batch, self._deferred = self._deferred, []
        self._keys = set()
        done = []
        for key, write in batch:
            try:
                write(cur)
            except sqlite3.Error:
                log.exception("a deferred write failed and is dropped")
                continue
            done.append((key, write))
        return done

    def close(self) -> None:
        """Commit the deferred writes (a shutdown loses none), then close the connection."""
        with self._lock:
            try:
                self.flush()
            finally:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = self._driver = None


class Repository:
    """Base of the store's repositories: writes go through `self.engine.begin()` (the writer), reads
    through `_rows` / `_first` (typed rows) or `_all` / `_one` on the plain engine; the hot statements
    through `self.raw`."""

    def __init__(self, engine: Engine, raw: RawAccess | None = None) -> None:
        self.engine = writer(engine)
        self.reader = engine
        self.raw = raw or RawAccess(engine)
        self.pg = engine.dialect.name == "postgresql"

    def _all(self, query: Executable, params: Mapping[str, object] | None = None) -> Sequence[RowMapping]:
        with self.reader.connect() as conn:
            return conn.execute(query, params).mappings().all()

    def _one(self, query: Executable, params: Mapping[str, object] | None = None) -> RowMapping | None:
        with self.reader.connect() as conn:
            return conn.execute(query, params).mappings().first()

    def _rows(
        self, row: type[R], query: Select[*tuple[object, ...]], conn: Connection | None = None
    ) -> list[R]:
        """`query`'s rows as plain dicts typed `row` (a TypedDict naming exactly the query's columns:
        checked here), read in the caller's transaction `conn` or on the plain engine."""
        check_row(row, query.selected_columns.keys(), query)
        # Core's rows are typed loosely: `row`'s keys are the query's columns (checked above).
        decode = cast("Callable[[RowMapping], R]", dict)
        if conn is not None:
            return [decode(r) for r in conn.execute(query).mappings()]
        with self.reader.connect() as reading:
            return [decode(r) for r in reading.execute(query).mappings()]

    def _first(
        self, row: type[R], query: Select[*tuple[object, ...]], conn: Connection | None = None
    ) -> R | None:
        """The first of `_rows`, or None when the query finds none."""
        found = self._rows(row, query, conn)
        return found[0] if found else None

    def _lock(self, query: S) -> S:
        """`query` locking the rows it reads until the transaction ends (PostgreSQL; SQLite's write
        transactions already run one at a time)."""
        return query.with_for_update() if self.pg else query


class Sealing(Protocol):
    """What seals a secret with the server's key (`ember.build.registry.Sealer`)."""

    def seal(self, secret: str) -> str: ...


# Keys of the PostgreSQL advisory locks that serialise start-up work across processes.
LOCK_MIGRATE = 0x454D4201
LOCK_BOOTSTRAP = 0x454D4202


def insert_unless_present(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT of `table` for `dialect` that can take `.on_conflict_do_nothing()` and
    `.on_conflict_do_update(...)` (both SQLite and PostgreSQL spell it ON CONFLICT)."""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def serialize(conn: Connection, key: int) -> None:
    """Make the rest of `conn`'s write transaction run alone among every process on the database: a
    PostgreSQL transaction-scoped advisory lock on `key` (released at commit or rollback). SQLite's write
    transactions (BEGIN IMMEDIATE) already run one at a time."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def migrate(engine: Engine, sealer: Sealing | None = None) -> None:
    """Bring the schema to the newest revision (idempotent, and safe from several processes at once:
    the second waits for the first and then finds nothing to do). `sealer` seals secrets that an older
    database holds in plain text (migration 0006); without one, such a database is an error."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["sealer"] = sealer
    try:
        with writer(engine).begin() as conn:
            serialize(conn, LOCK_MIGRATE)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"database migration failed: {exc}") from exc


def transaction(engine: Engine, conn: Connection | None) -> AbstractContextManager[Connection]:
    """The caller's transaction when it passes one (so that several repositories write atomically),
    else a new one."""
    return nullcontext(conn) if conn is not None else engine.begin()


class Database:
    """The engine plus how to call blocking store code from async code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        if not self.is_sqlite and not event.contains(engine, "commit", _notify_at_commit):
            event.listen(engine, "commit", _notify_at_commit)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.is_sqlite:
            return fn(*args, **kwargs)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    def dispose(self) -> None:
        self.engine.dispose()


def _notify_at_commit(conn: Connection) -> None:
    """Every transaction committed through SQLAlchemy also sends the caller's pending events
    (`store.outbox`), in that transaction."""
    if outbox.active():
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            outbox.flush(cursor)
        finally:
            cursor.close()
