"""SQL whose form depends on the database in use, built from that database's dialect alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite


def insert_for(dialect: str) -> Callable[[Any], postgresql.Insert | sqlite.Insert]:
    """The INSERT of ``dialect`` (``postgresql`` or ``sqlite``), which takes ``ON CONFLICT`` clauses.

    Imported when first asked for: a process loads the dialect of its own database only (the
    PostgreSQL dialect costs a SQLite server a few hundredths of a second at startup).
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert
