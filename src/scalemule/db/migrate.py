"""Apply Alembic migrations to the configured database: ``scalemule migrate`` and tests call this.

Alembic is imported only to migrate: checking that a store is current, which every server and command
does at startup, reads the revision table and compares it with ``HEAD``, without loading Alembic and
its migration scripts (about a tenth of a second of startup).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.ext.asyncio import AsyncEngine

    from scalemule.db.engine import Database

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration's revision. A test checks that it is Alembic's head, so a new migration that
# does not move it fails the suite.
HEAD = "0014"
# Where Alembic records a database's revision.
VERSION_TABLE = "alembic_version"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, optionally bound to a connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest)."""

    from alembic import command

    def run(connection: sa.Connection) -> None:
        command.upgrade(alembic_config(connection), revision)
        if connection.dialect.name == "sqlite":
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"migration left {len(broken)} rows with dangling foreign keys: {broken[:5]}")

    # All migrations run in one transaction (SQLite and PostgreSQL both have transactional DDL).
    async with engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            await conn.run_sync(_sqlite_foreign_keys, False)
        try:
            await conn.run_sync(run)
            await conn.commit()
        finally:
            if sqlite:
                await conn.rollback()
                await conn.run_sync(_sqlite_foreign_keys, True)


def _sqlite_foreign_keys(connection: sa.Connection, enabled: bool) -> None:
    # Alembic changes a SQLite table by rebuilding it, which drops the old one; with foreign keys on,
    # that drop deletes every referencing row through ON DELETE CASCADE (tenants are referenced by
    # almost every table). The pragma is ignored inside a transaction, so it is set on the driver
    # connection before one begins, and checked with foreign_key_check before the commit.
    assert connection.connection.dbapi_connection is not None
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    cursor.close()


async def pending(db: Database) -> bool:
    """True when the database is not at the newest migration (``HEAD``): missing, empty or behind."""

    def check(connection: sa.Connection) -> bool:
        if not sa.inspect(connection).has_table(VERSION_TABLE):
            return True
        current = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        return current != [HEAD]

    return await db.inspect(check)
