from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from scalemule.db.engine import create_engine
from scalemule.db.tables import metadata
from scalemule.settings import Settings

pytestmark = pytest.mark.anyio


async def test_migrations_build_exactly_the_declared_tables(store: Settings) -> None:
    engine = create_engine(store.url)

    def diff(connection: sa.Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()
