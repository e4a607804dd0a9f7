"""Engine setup: SQLite (WAL, foreign keys, busy timeout, immediate write transactions) or PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from scalemule.db import wal
from scalemule.db.direct import Plan, Plans

if TYPE_CHECKING:
    # Imported where an async engine is made: on SQLite, serving never needs one, and the asyncio
    # extension brings SQLAlchemy's ORM with it (a large share of a server's start-up).
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Reading connections kept open between reads (more are opened while more reads overlap): read-only
# ones on SQLite, autocommit ones on PostgreSQL.
IDLE_READERS = 8
T = TypeVar("T")

log = logging.getLogger("scalemule")


def normalize_url(url: str) -> tuple[sa.URL, dict[str, Any]]:
    """Pick the async driver and lift our own URL options into connect arguments.

    ``postgresql://`` becomes ``postgresql+asyncpg://``; ``sqlite://`` becomes ``sqlite+aiosqlite://``.
    A ``search_path`` query parameter on a PostgreSQL URL selects the schema (one database can host
    several isolated deployments or test runs); ``application_name`` names the connections.
    """
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        # Session settings given as URL parameters: the schema, and a name that tells processes apart
        # in pg_stat_activity.
        settings = {
            name: str(parsed.query[name]) for name in ("search_path", "application_name") if name in parsed.query
        }
        if settings:
            parsed = parsed.difference_update_query(list(settings))
            connect_args["server_settings"] = settings
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:// or postgresql://")
    return parsed, connect_args


def create_engine(url: str) -> AsyncEngine:
    """Create the async engine for ``url`` with the per-dialect setup ScaleMule relies on."""
    from sqlalchemy.ext.asyncio import create_async_engine

    parsed, connect_args = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        _sqlite_file(parsed)
        # Off the hot path (migrations, maintenance, tests): units of work use Database's inline connection.
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per transaction. A connection the server dropped (a restart)
    # fails its first statement instead, which PooledConnection retries once on a fresh connection.
    return create_async_engine(parsed, connect_args=connect_args, pool_size=10, max_overflow=20)


def driver_target(url: str) -> dict[str, Any]:
    """What a process of its own needs to reach the store through the driver alone, without SQLAlchemy:
    ``{"sqlite": PATH}`` or ``{"postgresql": DSN, "server_settings": {...}}``. The DSN holds the
    password: pass it on a pipe, never on a command line."""
    parsed, connect_args = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"sqlite": str(Path(parsed.database or ""))}
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return {"postgresql": dsn, "server_settings": connect_args.get("server_settings", {})}


def _sqlite_file(url: sa.URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise ValueError("ScaleMule's SQLite store needs a file path, e.g. sqlite:////var/lib/scalemule/db")
    path = Path(url.database)
    _create_private(path)
    return path


def _create_private(path: Path) -> None:
    # SQLite creates a missing database file 0644 under the usual umask, and gives its -wal and -shm
    # files the database file's mode: creating it 0600 first keeps all three the owner's alone.
    if path.parent.is_dir():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _configure_sqlite(engine: AsyncEngine | sa.Engine) -> None:
    sync_engine = engine if isinstance(engine, sa.Engine) else engine.sync_engine

    @sa.event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver: SQLAlchemy decides when transactions start (_on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints are the Checkpointer thread's (db/wal.py); a commit makes one only as a backstop.
        cursor.execute(f"PRAGMA wal_autocheckpoint={wal.BACKSTOP_PAGES}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # Every unit of work may write (at least its audit event). Taking the write lock up front
        # avoids the read-then-upgrade deadlock that a deferred transaction hits under concurrency.
        driver = conn.connection.driver_connection
        if isinstance(driver, sqlite3.Connection):
            driver.execute("BEGIN IMMEDIATE")  # the hot path: a fixed statement, no result to process
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


class Connection(Protocol):
    """What domain code uses of a unit of work's connection: ``PooledConnection`` on PostgreSQL,
    ``InlineConnection`` on SQLite."""

    @property
    def dialect(self) -> sa.Dialect: ...

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]: ...


async def plain_rows(conn: Connection, statement: Any) -> list[Sequence[Any]]:
    """The rows of ``statement`` as the driver returns them (tuples, or records on PostgreSQL), for bulk
    reads of columns that need no conversion: SQLAlchemy builds no row object per row, which costs as
    much as reading it."""
    result = await conn.execute(statement)
    try:
        return list(result.cursor.fetchall())
    finally:
        result.close()


class InlineConnection:
    """A synchronous SQLAlchemy connection behind the awaitable ``execute`` domain code calls.

    SQLite statements on a local file take microseconds, while SQLAlchemy's asyncio bridge (a
    greenlet and several switches per statement) cost many times that on every call. Units of work on
    SQLite are serialised by ``Database.transaction``, so running them inline cannot interleave.
    """

    def __init__(self, connection: sa.Connection, plans: Plans) -> None:
        self.sync_connection = connection
        self.plans = plans

    @property
    def dialect(self) -> sa.Dialect:
        """The connection's dialect."""
        return self.sync_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        """Execute ``statement`` now (a reused one straight on the driver: ``db.direct``); the result is
        fully usable after the call."""
        result: sa.CursorResult[Any] = self.plans.execute(self.sync_connection, statement, parameters)
        return result


class PooledConnection:
    """A pooled PostgreSQL connection whose first statement also checks that the connection is alive.

    A connection the server dropped while it sat in the pool (a database restart, a failover) fails
    its first statement with a disconnect error. Nothing has happened on it yet, so that statement is
    run again, once, on a fresh connection: what a ping before every transaction would have done, at
    no cost on the common path. SQLAlchemy invalidates the rest of the pool on that error, so the
    other stale connections are replaced as they are checked out. A connection lost after its first
    statement fails the unit of work, which is rolled back.

    Reused statements run on the driver (``db.direct``), inside the transaction SQLAlchemy began on
    the connection, which ``commit`` ends; on a connection in autocommit (``transactional=False``)
    there is none to begin.
    """

    def __init__(self, connection: AsyncConnection, plans: Plans, *, transactional: bool) -> None:
        self.async_connection = connection
        self.plans = plans
        self._transactional = transactional
        self._fresh = True

    @property
    def dialect(self) -> sa.Dialect:
        """The connection's dialect."""
        return self.async_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> sa.CursorResult[Any]:
        """Execute ``statement`` (a reused one straight on the driver: ``db.direct``); the first one is
        retried once when the connection turns out dead."""
        plan = self.plans.plan(statement, parameters)
        if not self._fresh:
            return await self._execute(plan, statement, parameters)
        self._fresh = False
        try:
            if plan is not None and self._transactional:
                # SQLAlchemy's transaction, which commit() ends; the adapter sends BEGIN before the statement.
                await self.async_connection.begin()
            return await self._execute(plan, statement, parameters)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("a pooled database connection was dead (%s); retrying on a fresh one", type(exc.orig).__name__)
            await self.async_connection.rollback()  # ends the invalidated transaction; the next one reconnects
            if not self._transactional:
                # The new connection has none of the old one's settings: autocommit again, or a statement
                # meant to commit on its own (an audit append) would wait for a COMMIT that never comes.
                await self.async_connection.execution_options(isolation_level="AUTOCOMMIT")
            result: sa.CursorResult[Any] = await self.async_connection.execute(statement, parameters)
            return result

    async def _execute(self, plan: Plan | None, statement: Any, parameters: Any) -> sa.CursorResult[Any]:
        if plan is not None:
            return await plan.run_async(self.async_connection, parameters)  # type: ignore[return-value]
        result: sa.CursorResult[Any] = await self.async_connection.execute(statement, parameters)
        return result


@asynccontextmanager
async def _pooled(engine: AsyncEngine, plans: Plans) -> AsyncIterator[PooledConnection]:
    # The transaction begins with the first statement; leaving without commit (an exception) rolls it
    # back when the connection goes back to the pool.
    async with engine.connect() as connection:
        yield PooledConnection(connection, plans, transactional=True)
        await connection.commit()


def _sqlite_reader_engine(url: sa.URL) -> sa.Engine:
    # A pool of connections that only read: several reads run at once, none takes the write lock,
    # and a write through one of them fails (query_only) instead of queueing behind writers.
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=IDLE_READERS,
        max_overflow=56,
    )

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        for pragma in ("query_only=ON", f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    # No BEGIN: each statement reads the last committed state on its own, as PostgreSQL's default
    # (read committed) does, so a read never holds a snapshot that a write it waits for cannot join.
    return engine


def _sqlite_sync_engine(url: sa.URL) -> sa.Engine:
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        poolclass=StaticPool,
        pool_reset_on_return=None,
    )
    _configure_sqlite(engine)
    return engine


@dataclass
class TransactionScope:
    """What code inside a transaction reaches besides its connection: the services the runtime attached
    to the database (the audit notary), and work to run once the transaction has committed.

    Domain code that only gets a connection (``audit.append``) finds it with ``current_scope``.
    """

    services: dict[str, Any]
    after_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Inside a snapshot (a read's unit of work): the writes it must still make, held for the
    # transaction that records its event (``write``). None in a transaction, which writes at once.
    deferred: list[Any] | None = None

    async def committed(self) -> None:
        """Run the after-commit work, oldest first. Each piece is best effort: the transaction is
        committed whatever happens here, so a failure is logged, never raised to the caller."""
        for work in self.after_commit:
            try:
                await work()
            except Exception:
                log.exception("work after commit failed")


_scope: ContextVar[TransactionScope | None] = ContextVar("scalemule_transaction_scope", default=None)


def current_scope() -> TransactionScope | None:
    """The scope of the transaction the current task runs in, if it was opened by ``Database``."""
    return _scope.get()


def in_snapshot() -> bool:
    """Whether the current task runs in ``Database.snapshot``, where nothing may be written directly."""
    scope = _scope.get()
    return scope is not None and scope.deferred is not None


async def write(conn: Connection, statement: Any) -> None:
    """Execute a write that may wait for the end of a read: inside ``Database.snapshot`` it is held for
    the transaction that records the read's event (``deferred``); anywhere else it runs now.

    For bookkeeping a read makes (a key's ``last_used_at``), never for a change the caller asked for.
    """
    scope = _scope.get()
    if scope is not None and scope.deferred is not None:
        scope.deferred.append(statement)
        return
    await conn.execute(statement)


class Database:
    """The engine plus the one way to open a unit of work on it.

    Attributes:
        services: what the runtime attaches for code running inside transactions (see
            ``TransactionScope``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.services: dict[str, Any] = {}
        parsed, _ = normalize_url(url)
        self._engine: AsyncEngine | None = None
        self._sqlite: sa.Engine | None = None
        self._writer: anyio.Lock | None = None
        self._checkpointer: wal.Checkpointer | None = None
        self._plans: Plans | None = None
        if parsed.get_backend_name() == "sqlite":
            self._checkpointer = wal.Checkpointer(_sqlite_file(parsed), SQLITE_BUSY_TIMEOUT_MS)
            self._sqlite = _sqlite_sync_engine(parsed)
            self._plans = Plans(self._sqlite.dialect)
            # SQLite has one writer at a time and every unit of work writes (its audit event at least):
            # queueing writers here keeps waiting on the event loop instead of inside the driver.
            self._writer = anyio.Lock()
        self._sqlite_conn: sa.Connection | None = None
        self._sqlite_reader: sa.Engine | None = None
        self._idle_readers: list[sa.Connection] = []
        self._idle_pg_readers: list[AsyncConnection] = []
        self._autocommit_engine: AsyncEngine | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The async engine: every unit of work on PostgreSQL; on SQLite, only migrations and
        maintenance, so it is made on first use there (serving runs on synchronous connections)."""
        if self._engine is None:
            self._engine = create_engine(self.url)
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "sqlite" if self._sqlite is not None else "postgresql"

    async def inspect(self, check: Callable[[sa.Connection], T]) -> T:
        """Run ``check`` (reads only: the schema, a version row) on a connection outside any unit of
        work: a read-only one on SQLite, a pooled one on PostgreSQL."""
        if self._sqlite is None:
            async with self.engine.connect() as conn:
                return await conn.run_sync(check)
        with self._readers().connect() as sync_conn:
            return check(sync_conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A transaction committed on success and rolled back on any exception.

        Never nest: code running inside one uses the connection it was given. Work registered on
        the scope's ``after_commit`` runs once it has committed (after SQLite's writer lock is
        released, so it never holds up other writers).
        """
        scope = TransactionScope(self.services)
        token = _scope.set(scope)
        try:
            if self._writer is None:
                async with _pooled(self.engine, self._pg_plans()) as conn:
                    yield conn
            else:
                assert self._sqlite is not None and self._plans is not None
                async with self._writer:
                    # SQLite: the writer lock admits one unit of work at a time, so one connection,
                    # kept open, serves them all (no checkout, no reconnect per call).
                    if self._sqlite_conn is None or self._sqlite_conn.closed:
                        self._sqlite_conn = self._sqlite.connect()
                    with self._sqlite_conn.begin():
                        yield InlineConnection(self._sqlite_conn, self._plans)
                assert self._checkpointer is not None
                self._checkpointer.wrote()
        finally:
            _scope.reset(token)
        if scope.after_commit:
            await scope.committed()

    @asynccontextmanager
    async def snapshot(self, deferred: list[Any]) -> AsyncIterator[Connection]:
        """Where a read runs without taking or waiting for a write lock, every statement seeing the last
        committed state (read committed): on SQLite a pooled read-only connection, on PostgreSQL a pooled
        connection in autocommit, so no BEGIN or COMMIT costs a round trip and a single statement written
        through it commits on its own. Writes made through ``write`` inside it are appended to
        ``deferred`` for the caller to make afterwards.
        """
        scope = TransactionScope(self.services, deferred=deferred)
        token = _scope.set(scope)
        try:
            async with self.reader() as conn:
                yield conn
        finally:
            _scope.reset(token)

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[Connection]:
        """A connection for reads that must not queue behind writers (e.g. a worker's probe for due jobs),
        each statement reading the last committed state: on SQLite a read-only connection (WAL readers),
        on PostgreSQL one in autocommit, either kept open between reads. Never write through it, but for
        one statement that must commit on its own (``audit.append_one``).
        """
        if self._writer is None:
            async with self._pg_reader() as conn:
                yield conn
            return
        assert self._plans is not None
        # Read-only connections in autocommit hold nothing between statements, so one that served a
        # read serves the next as it is, without a round through the pool (up to IDLE_READERS kept
        # idle); one a read failed on goes back through the pool instead.
        idle = self._idle_readers
        sync_conn = idle.pop() if idle else self._readers().connect()
        try:
            yield InlineConnection(sync_conn, self._plans)
        except BaseException:
            sync_conn.close()
            raise
        if len(idle) < IDLE_READERS:
            idle.append(sync_conn)
        else:
            sync_conn.close()

    @asynccontextmanager
    async def _pg_reader(self) -> AsyncIterator[PooledConnection]:
        # As SQLite's readers: a connection in autocommit holds no transaction between statements, so
        # the one a read finished with serves the next as it is, without a checkout from the pool and
        # a reset on its return (two trips through SQLAlchemy's greenlet bridge per read). Its first
        # statement in each read is still the one retried should the server have dropped it meanwhile.
        idle = self._idle_pg_readers
        connection = idle.pop() if idle else await self._autocommit().connect()
        try:
            yield PooledConnection(connection, self._pg_plans(), transactional=False)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await connection.close()
            raise
        if len(idle) < IDLE_READERS:
            idle.append(connection)
        else:
            await connection.close()

    def _pg_plans(self) -> Plans:
        if self._plans is None:
            self._plans = Plans(self.engine.dialect)
        return self._plans

    def _autocommit(self) -> AsyncEngine:
        if self._autocommit_engine is None:
            self._autocommit_engine = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        return self._autocommit_engine

    def _readers(self) -> sa.Engine:
        if self._sqlite_reader is None:
            assert self._sqlite is not None
            self._sqlite_reader = _sqlite_reader_engine(self._sqlite.url)
        return self._sqlite_reader

    async def dispose(self) -> None:
        """Close the kept connection and pooled ones."""
        if self._checkpointer is not None:
            self._checkpointer.close()
        while self._idle_readers:
            self._idle_readers.pop().close()
        while self._idle_pg_readers:
            await self._idle_pg_readers.pop().close()
        if self._sqlite_reader is not None:
            self._sqlite_reader.dispose()
        if self._sqlite_conn is not None:
            self._sqlite_conn.close()
            self._sqlite_conn = None
        if self._sqlite is not None:
            self._sqlite.dispose()
        if self._engine is not None:
            await self._engine.dispose()
