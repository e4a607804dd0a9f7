"""Reading connections are kept open between reads (read-only ones on SQLite, autocommit ones on
PostgreSQL): each read still sees the last committed state, never a snapshot an earlier read left
behind, reads that overlap get connections of their own, no more than ``IDLE_READERS`` stay open once
they are done, one a read failed on is not kept, and on PostgreSQL a kept one the server dropped is
replaced by the next read without failing it, in autocommit like the one it replaces."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa

from scalemule.db.engine import IDLE_READERS, Database
from tests.conftest import POSTGRES_ADMIN_URL, postgres_admin

pytestmark = pytest.mark.anyio

counter = sa.table("counter", sa.column("n", sa.Integer))
_backend_pid = sa.select(sa.func.pg_backend_pid())  # one statement object: from its second run, on the driver


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> AsyncIterator[Database]:
    schema = None
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'readers.db'}")
    elif postgres_url is None:
        pytest.skip(os.environ.get("SCALEMULE_TEST_POSTGRES_SKIP", "PostgreSQL is unreachable"))
    else:
        schema = f"sm_readers_{os.getpid()}_{secrets.token_hex(4)}"
        await postgres_admin(f'CREATE SCHEMA "{schema}"')
        database = Database(f"{POSTGRES_ADMIN_URL}?search_path={schema}")
    try:
        async with database.transaction() as conn:
            await conn.execute(sa.text("CREATE TABLE counter (n INTEGER NOT NULL)"))
            await conn.execute(sa.text("INSERT INTO counter (n) VALUES (0)"))
        yield database
    finally:
        await database.dispose()
        if schema is not None:
            await postgres_admin(f'DROP SCHEMA "{schema}" CASCADE')


def _idle(db: Database) -> list[Any]:
    return db._idle_readers if db.dialect == "sqlite" else db._idle_pg_readers  # type: ignore[return-value]


def _connection(conn: Any) -> Any:
    """What a reader hands out wraps: SQLite's synchronous connection, PostgreSQL's async one."""
    return getattr(conn, "sync_connection", None) or conn.async_connection


async def _read(db: Database) -> int:
    async with db.reader() as conn:
        return int((await conn.execute(sa.select(counter.c.n))).scalar_one())


async def test_a_kept_reader_sees_each_commit_made_since_its_last_read(db: Database) -> None:
    for n in range(1, 6):
        async with db.transaction() as conn:
            await conn.execute(counter.update().values(n=n))
        assert await _read(db) == n
    assert len(_idle(db)) == 1  # one connection served every read


async def test_overlapping_reads_use_their_own_connections_and_few_stay_open(db: Database) -> None:
    async with db.reader() as first, db.reader() as second:
        assert _connection(first) is not _connection(second)
    readers = [db.reader() for _ in range(IDLE_READERS + 4)]
    for reader in readers:
        await reader.__aenter__()
    for reader in readers:
        await reader.__aexit__(None, None, None)
    assert len(_idle(db)) == IDLE_READERS


async def test_a_reader_a_read_failed_on_is_not_kept(db: Database) -> None:
    await _read(db)
    kept = list(_idle(db))
    with pytest.raises(sa.exc.DBAPIError):
        async with db.reader() as conn:
            await conn.execute(sa.text("SELECT n FROM no_such_table"))
    assert _idle(db) == [] and kept[0].closed
    assert await _read(db) == 0


async def test_a_kept_reader_the_server_dropped_is_replaced_by_the_next_read(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    for _ in range(2):
        async with db.reader() as conn:
            pid = int((await conn.execute(_backend_pid)).scalar_one())
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    assert len(_idle(db)) == 1
    async with db.reader() as conn:
        assert int((await conn.execute(_backend_pid)).scalar_one()) != pid  # met the dead one on the driver
        # Still in autocommit on the new connection: a statement written through a reader commits on
        # its own (as an audit append does), seen at once from another connection.
        await conn.execute(counter.update().values(n=7))
        async with db.transaction() as other:
            assert int((await other.execute(sa.select(counter.c.n))).scalar_one()) == 7
