"""Reused statements run straight on the SQLite driver, without SQLAlchemy's per-execution work.

On SQLite a statement on a local file takes a few microseconds, while ``Connection.execute`` spends
several times that around it on every call (an execution context, parameter and result set-up, a
cache key): about a fifth of an audited call in process. Most statements a call runs are built
once and run again and again (authentication, the audit append, claims). ``Plans`` notices a
statement object run a second time, compiles it once for the parameters it is given, and from then
on runs it on the driver's cursor with SQLAlchemy's own type processing: the same SQL, the same
bound and returned values, results that read as SQLAlchemy's (``first``, ``scalar_one``,
``mappings``, attribute access, ``rowcount``) and errors raised as SQLAlchemy's (``IntegrityError``
...). Anything else runs through SQLAlchemy as before: a statement seen once, text, several
parameter sets, execution options, parameters expanded at run time (``IN`` lists) or values computed
in Python at run time (column defaults).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql.compiler import SQLCompiler

# Statement objects kept, the least recently run dropped first: those built once stay, those built per
# call pass through. An entry holds its statement, so the id it is found by stays that statement's.
KEPT = 512


class DirectResult(IteratorResult[Any]):
    """The rows of a statement run on the driver, read like SQLAlchemy's ``CursorResult``."""

    def __init__(self, metadata: SimpleResultMetaData, rows: Sequence[Any], rowcount: int) -> None:
        super().__init__(metadata, iter(rows))
        self.rowcount = rowcount


class _Plan:
    """A statement compiled once for one set of parameter names: its SQL, the order and conversion of
    its parameters, and the conversion and names of its result columns."""

    __slots__ = ("binds", "compiled", "metadata", "order", "processors", "sql")

    def __init__(self, compiled: SQLCompiler, dialect: sa.Dialect) -> None:
        self.compiled = compiled
        self.sql = compiled.string
        self.order = tuple(compiled.positiontup or ())
        self.binds: Mapping[str, Any] = compiled._bind_processors  # callables: no expanding parameters here
        columns = compiled._result_columns
        processors = [column.type._cached_result_processor(dialect, None) for column in columns]
        # Only the columns whose type converts what the driver returns (dates, JSON, booleans ...).
        self.processors = [(i, process) for i, process in enumerate(processors) if process is not None]
        self.metadata = SimpleResultMetaData([column.keyname for column in columns])

    def run(self, connection: sa.Connection, parameters: Mapping[str, Any] | None) -> DirectResult:
        values = self.compiled.construct_params(parameters)
        binds = self.binds
        args = [binds[name](values[name]) if name in binds else values[name] for name in self.order]
        dbapi = connection.dialect.loaded_dbapi
        try:
            cursor = connection.connection.driver_connection.execute(self.sql, args)  # type: ignore[union-attr]
            rows = cursor.fetchall() if cursor.description else []
        except dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(self.sql, args, exc, dbapi.Error, dialect=connection.dialect) from exc
        if self.processors and rows:
            rows = [self._convert(row) for row in rows]
        return DirectResult(self.metadata, rows, cursor.rowcount)

    def _convert(self, row: Sequence[Any]) -> list[Any]:
        values = list(row)
        for i, process in self.processors:
            values[i] = process(values[i])
        return values


_DIRECT = (sa.Select, sa.Insert, sa.Update, sa.Delete)


class Plans:
    """Which statements of one SQLite database run on the driver, and how (see the module's text)."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self.dialect = dialect
        # (statement id, parameter names) -> (statement, its plan; None while seen once, False when
        # the statement must go through SQLAlchemy)
        self._entries: OrderedDict[tuple[int, tuple[str, ...]], tuple[Any, _Plan | bool | None]] = OrderedDict()

    def execute(self, connection: sa.Connection, statement: Any, parameters: Any) -> Any:
        """Run ``statement`` with ``parameters`` on ``connection``, on the driver when it has a plan."""
        if not isinstance(statement, _DIRECT) or not (parameters is None or isinstance(parameters, dict)):
            return connection.execute(statement, parameters)
        key = (id(statement), tuple(sorted(parameters)) if parameters else ())
        entry = self._entries.get(key)
        if entry is None:
            self._keep(key, (statement, None))
            return connection.execute(statement, parameters)
        self._entries.move_to_end(key)
        plan = entry[1]
        if plan is None:
            plan = self._plan(statement, key[1])
            self._entries[key] = (statement, plan)
        if plan is False:
            return connection.execute(statement, parameters)
        assert isinstance(plan, _Plan)
        return plan.run(connection, parameters)

    def _keep(self, key: tuple[int, tuple[str, ...]], entry: tuple[Any, None]) -> None:
        self._entries[key] = entry
        if len(self._entries) > KEPT:
            self._entries.popitem(last=False)

    def _plan(self, statement: Any, names: tuple[str, ...]) -> _Plan | bool:
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
        return False if runtime_work else _Plan(compiled, self.dialect)
