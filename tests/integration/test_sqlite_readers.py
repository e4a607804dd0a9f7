"""SQLite's read-only connections are kept open between reads: each read still sees the last committed
state, never a snapshot an earlier read left behind, reads that overlap get connections of their own,
and no more than a pool's worth stay open once they are done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from scalemule.db.engine import SQLITE_IDLE_READERS, Database

pytestmark = pytest.mark.anyio

counter = sa.table("counter", sa.column("n", sa.Integer))


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'readers.db'}")
    async with database.transaction() as conn:
        await conn.execute(sa.text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        await conn.execute(sa.text("INSERT INTO counter (n) VALUES (0)"))
    yield database
    await database.dispose()


async def _read(db: Database) -> int:
    async with db.reader() as conn:
        return int((await conn.execute(sa.select(counter.c.n))).scalar_one())


async def test_a_kept_reader_sees_each_commit_made_since_its_last_read(db: Database) -> None:
    for n in range(1, 6):
        async with db.transaction() as conn:
            await conn.execute(counter.update().values(n=n))
        assert await _read(db) == n
    assert len(db._idle_readers) == 1  # one connection served every read


async def test_overlapping_reads_use_their_own_connections_and_few_stay_open(db: Database) -> None:
    async with db.reader() as first, db.reader() as second:
        assert first.sync_connection is not second.sync_connection  # type: ignore[attr-defined]
    readers = [db.reader() for _ in range(SQLITE_IDLE_READERS + 4)]
    for reader in readers:
        await reader.__aenter__()
    for reader in readers:
        await reader.__aexit__(None, None, None)
    assert len(db._idle_readers) == SQLITE_IDLE_READERS


async def test_a_reader_a_read_failed_on_is_not_kept(db: Database) -> None:
    await _read(db)
    kept = list(db._idle_readers)
    with pytest.raises(sa.exc.OperationalError):
        async with db.reader() as conn:
            await conn.execute(counter.update().values(n=9))  # a write: refused on a read-only connection
    assert db._idle_readers == [] and kept[0].closed
    assert await _read(db) == 0
