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

    # All migrations run in one transaction (SQLite and PostgreSQL both have transactional DDL).
    async with engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


async def pending(engine: AsyncEngine) -> bool:
    """True when the database is behind the newest migration."""

    def check(connection: sa.Connection) -> bool:
        current = MigrationContext.configure(connection).get_current_revision()
        return current != ScriptDirectory.from_config(alembic_config()).get_current_head()

    async with engine.connect() as conn:
        return await conn.run_sync(check)
