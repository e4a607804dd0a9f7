"""Turn integrity violations into the name of the constraint that was violated, on any dialect."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from scalemule.core.errors import ScaleMuleError
from scalemule.db.tables import metadata

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (.+)")
_SQLITE_CHECK = re.compile(r"CHECK constraint failed: (\w+)")


def _sqlite_unique_name(columns: str) -> str | None:
    pairs = [c.strip().split(".", 1) for c in columns.split(",")]
    table_name = pairs[0][0]
    wanted = {column for _, column in pairs}
    table = metadata.tables.get(table_name)
    if table is None:
        return None
    for constraint in table.constraints:
        unique = isinstance(constraint, sa.UniqueConstraint | sa.PrimaryKeyConstraint)
        if unique and {c.name for c in constraint.columns} == wanted:  # type: ignore[attr-defined]
            return str(constraint.name)
    return None


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint behind ``exc``, or None when the driver does not say."""
    cause = exc.orig.__cause__ if exc.orig is not None else None
    name = getattr(cause, "constraint_name", None)  # asyncpg
    if name:
        return str(name)
    text = str(exc.orig)
    if match := _SQLITE_UNIQUE.search(text):
        return _sqlite_unique_name(match.group(1))
    if match := _SQLITE_CHECK.search(text):
        return match.group(1)
    return None


@asynccontextmanager
async def constraint_errors(
    mapping: Mapping[str, Callable[[], ScaleMuleError]],
) -> AsyncIterator[None]:
    """Raise the domain error mapped to the violated constraint; re-raise anything unmapped.

    Example:
        ``async with constraint_errors({"uq_tenants_slug": lambda: AlreadyExists(...)}): ...``
    """
    try:
        yield
    except IntegrityError as exc:
        factory = mapping.get(violated_constraint(exc) or "")
        if factory is None:
            raise
        raise factory() from None
