from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from scalemule.core.access import PROTECTED_WRITE, ROLES
from scalemule.db import migrate
from scalemule.db.engine import create_engine
from scalemule.db.tables import api_keys, metadata, principals
from scalemule.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL

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


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database URL with no tables at all: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    if request.getfixturevalue("postgres_url") is None:
        pytest.skip(os.environ.get("SCALEMULE_TEST_POSTGRES_SKIP", "PostgreSQL unreachable"))
    schema = f"sm_empty_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL)
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield f"{POSTGRES_ADMIN_URL}?search_path={schema}"
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


async def test_keys_minted_by_owners_and_admins_keep_writing_to_protected_environments(empty_url: str) -> None:
    engine = create_engine(empty_url)
    now = datetime.now(UTC)
    admin_scopes = sorted(ROLES["admin"] - {PROTECTED_WRITE})
    developer_scopes = sorted(ROLES["developer"])
    try:
        await migrate.upgrade(engine, "0005")
        async with engine.begin() as conn:
            await conn.execute(
                principals.insert().values(
                    id="usr_1", kind="user", name="a", email="a@example.com", created_at=now, tenant_id=None
                )
            )
            for key_id, scopes in (("key_admin", admin_scopes), ("key_dev", developer_scopes), ("key_all", None)):
                await conn.execute(
                    api_keys.insert().values(
                        id=key_id,
                        principal_id="usr_1",
                        name=key_id,
                        prefix=key_id,
                        token_sha256=key_id.encode().ljust(32, b"\0"),
                        scopes=scopes,
                        created_at=now,
                    )
                )
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            stored = dict((await conn.execute(sa.select(api_keys.c.id, api_keys.c.scopes))).all())
    finally:
        await engine.dispose()
    assert stored["key_admin"] == sorted([*admin_scopes, PROTECTED_WRITE])
    assert stored["key_dev"] == developer_scopes
    assert stored["key_all"] is None
