"""Apply Alembic migrations to the configured database: ``scalemule migrate`` and tests call this."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations, optionally bound to a connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (default: the newest)."""

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


async def pending(engine: AsyncEngine) -> bool:
    """True when the database is behind the newest migration."""

    def check(connection: sa.Connection) -> bool:
        current = MigrationContext.configure(connection).get_current_revision()
        return current != ScriptDirectory.from_config(alembic_config()).get_current_head()

    async with engine.connect() as conn:
        return await conn.run_sync(check)
