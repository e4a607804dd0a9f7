"""Reused statements run straight on the driver, without SQLAlchemy's per-execution work.

A statement takes a few microseconds on a local SQLite file and a few tens on a PostgreSQL connection
(asyncpg, past the round trip), while ``Connection.execute`` spends several times that around it on
every call (an execution context, parameter and result set-up, a cache key; on PostgreSQL also the
greenlet that bridges SQLAlchemy's synchronous core to asyncio): about a fifth of an audited call in
process on SQLite, a quarter of a write on PostgreSQL. Most statements a call runs are built once and
run again and again (authentication, the audit append, claims). ``Plans`` notices a statement object
run a second time, compiles it once for the parameters it is given, and from then on runs it on the
driver with SQLAlchemy's own type processing: the same SQL, the same bound and returned values,
results that read as SQLAlchemy's (``first``, ``scalar_one``, ``mappings``, attribute access,
``rowcount``) and errors raised as SQLAlchemy's (``IntegrityError`` ...). On SQLite that is the
sqlite3 cursor (``Plan.run``); on PostgreSQL the asyncpg adapter's own prepare-and-execute, which
keeps its transaction handling, prepared statement cache and error translation
(``Plan.run_async``). Anything else runs through SQLAlchemy as before: a statement seen once, text,
several parameter sets, execution options, parameters expanded at run time (``IN`` lists) or values
computed in Python at run time (column defaults).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.compiler import SQLCompiler

# Statement objects kept, the least recently run dropped first: those built once stay, those built per
# call pass through. An entry holds its statement, so the id it is found by stays that statement's.
KEPT = 512


class DirectResult(IteratorResult[Any]):
    """The rows of a statement run on the driver, read like SQLAlchemy's ``CursorResult``."""

    def __init__(self, metadata: SimpleResultMetaData, rows: Sequence[Any], rowcount: int) -> None:
        super().__init__(metadata, iter(rows))
        self.rowcount = rowcount


class Plan:
    """A statement compiled once for one set of parameter names: its SQL, the order and conversion of
    its parameters, and the conversion and names of its result columns."""

    __slots__ = ("binds", "columns", "compiled", "dialect", "metadata", "order", "processors", "sql")

    def __init__(self, compiled: SQLCompiler, dialect: sa.Dialect) -> None:
        self.compiled = compiled
        self.dialect = dialect
        self.sql = compiled.string
        self.order = tuple(compiled.positiontup or ())
        self.binds: Mapping[str, Any] = compiled._bind_processors  # callables: no expanding parameters here
        self.columns = compiled._result_columns
        self.metadata = SimpleResultMetaData([column.keyname for column in self.columns])
        # Per result column, what converts the driver's value (dates, JSON, booleans ...), found from the
        # first run's cursor description as SQLAlchemy finds it; only the columns that need one.
        self.processors: list[tuple[int, Any]] | None = None

    def _args(self, parameters: Mapping[str, Any] | None) -> list[Any]:
        values = self.compiled.construct_params(parameters)
        binds = self.binds
        return [binds[name](values[name]) if name in binds else values[name] for name in self.order]

    def _result(self, description: Sequence[Any] | None, rows: list[Any], rowcount: int) -> DirectResult:
        if self.processors is None:
            found = [
                column.type._cached_result_processor(self.dialect, described[1])
                for column, described in zip(self.columns, description or (), strict=False)
            ]
            self.processors = [(i, process) for i, process in enumerate(found) if process is not None]
        if self.processors and rows:
            rows = [self._convert(row) for row in rows]
        return DirectResult(self.metadata, rows, rowcount)

    def run(self, connection: sa.Connection, parameters: Mapping[str, Any] | None) -> DirectResult:
        """Run on the SQLite connection's sqlite3 cursor."""
        args = self._args(parameters)
        dbapi = connection.dialect.loaded_dbapi
        try:
            cursor = connection.connection.driver_connection.execute(self.sql, args)  # type: ignore[union-attr]
            rows = cursor.fetchall() if cursor.description else []
        except dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, args, exc, dbapi.Error, dialect=connection.dialect) from exc
        return self._result(cursor.description, rows, cursor.rowcount)

    async def run_async(self, connection: AsyncConnection, parameters: Mapping[str, Any] | None) -> sa.Result[Any]:
        """Run on the PostgreSQL connection's asyncpg adapter, inside the transaction (or autocommit)
        that SQLAlchemy began on the connection (``engine.PooledConnection``)."""
        args = self._args(parameters)
        dialect = connection.dialect
        adapted: Any = connection.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
        cursor: Any = adapted.cursor()
        cursor._invalidate_schema_cache_asof = dialect._invalidate_schema_cache_asof  # type: ignore[attr-defined]
        try:
            await cursor._prepare_and_execute(self.sql, args)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, adapted, cursor):
                # The connection is gone: run through SQLAlchemy, which meets that again and does what a
                # lost connection takes (invalidating it and the pool's older ones), raising with
                # connection_invalidated.
                statement: Any = self.compiled.statement
                again: sa.Result[Any] = await connection.execute(statement, parameters)
                return again
            raise sa.exc.DBAPIError.instance(self.sql, args, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
        rows: list[Any] = cursor.fetchall() if cursor.description else []
        return self._result(cursor.description, rows, cursor.rowcount)

    def _convert(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for i, process in self.processors or ():
            values[i] = process(values[i])
        return values


_DIRECT = (sa.Select, sa.Insert, sa.Update, sa.Delete)


class Plans:
    """Which statements of one database run on the driver, and how (see the module's text)."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        # (statement id, parameter names) -> (statement, its plan; None while seen once, False when
        # the statement must go through SQLAlchemy)
        self._entries: OrderedDict[tuple[int, tuple[str, ...]], tuple[Any, Plan | bool | None]] = OrderedDict()

    def plan(self, statement: Any, parameters: Any) -> Plan | None:
        """The plan ``statement`` runs on the driver with ``parameters``, or None to run it through
        SQLAlchemy (seen for the first time, or not a statement the driver can take as it is)."""
        if not isinstance(statement, _DIRECT) or not (parameters is None or isinstance(parameters, dict)):
            return None
        key = (id(statement), tuple(sorted(parameters)) if parameters else ())
        entry = self._entries.get(key)
        if entry is None:
            self._keep(key, (statement, None))
            return None
        self._entries.move_to_end(key)
        plan = entry[1]
        if plan is None:
            plan = self._plan(statement, key[1])
            self._entries[key] = (statement, plan)
        return plan if isinstance(plan, Plan) else None

    def execute(self, connection: sa.Connection, statement: Any, parameters: Any) -> Any:
        """Run ``statement`` with ``parameters`` on a SQLite ``connection``, on the driver when it has a
        plan."""
        plan = self.plan(statement, parameters)
        return connection.execute(statement, parameters) if plan is None else plan.run(connection, parameters)

    def _keep(self, key: tuple[int, tuple[str, ...]], entry: tuple[Any, None]) -> None:
        self._entries[key] = entry
        if len(self._entries) > KEPT:
            self._entries.popitem(last=False)

    def _plan(self, statement: Any, names: tuple[str, ...]) -> Plan | bool:
        if statement.get_execution_options():
            return False
        compiled = statement.compile(dialect=self.dialect, column_keys=list(names))
        assert isinstance(compiled, SQLCompiler)
        runtime_work = (
            compiled.post_compile_params
            or compiled.literal_execute_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
        )
        return False if runtime_work else Plan(compiled, self.dialect)
