"""Query plans as each store reports them, for tests that check which index a statement is served by."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from scalemule.db.engine import Database


class _Explain(Executable, ClauseElement):
    """``EXPLAIN`` (or ``EXPLAIN QUERY PLAN``) of a statement, executed with the statement's parameters."""

    inherit_cache = False

    def __init__(self, statement: Any, prefix: str) -> None:
        self.statement = statement
        self.prefix = prefix


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    return f"{element.prefix} {compiler.process(element.statement, **kw)}"


async def plan(db: Database, statement: Any, params: dict[str, Any]) -> list[str]:
    """The lines of the plan the database picks for ``statement`` run with ``params`` (not run)."""
    async with db.transaction() as conn:
        if db.dialect == "postgresql":
            rows = await conn.execute(_Explain(statement, "EXPLAIN (COSTS OFF)"), params)
            return [str(row[0]) for row in rows]
        rows = await conn.execute(_Explain(statement, "EXPLAIN QUERY PLAN"), params)
        return [str(row[-1]) for row in rows]


def scans(plan: list[str], table: str) -> bool:
    """Whether the plan reads all of ``table``: PostgreSQL's sequential scan, or SQLite's SCAN (of the
    table or a whole index), where SEARCH seeks a range."""
    return any(f"Seq Scan on {table}" in line or line.strip().startswith(f"SCAN {table}") for line in plan)


def sorts(plan: list[str]) -> bool:
    """Whether the plan sorts what it found."""
    return any("Sort" in line or "TEMP B-TREE" in line for line in plan)
