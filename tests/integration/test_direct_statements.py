"""Reused statements run straight on the driver (``db.direct``: sqlite3, or asyncpg through its
SQLAlchemy adapter) and read exactly as through SQLAlchemy: the same values of every type, the same
result methods, the same errors. On SQLite and PostgreSQL alike.

Which path a run took is seen from SQLAlchemy's ``before_cursor_execute`` event, which only its own
executions fire.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scalemule.db import direct
from scalemule.db.engine import Database
from scalemule.db.types import UTCDateTime
from tests.conftest import POSTGRES_ADMIN_URL, postgres_admin

pytestmark = pytest.mark.anyio

metadata = sa.MetaData()
things = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("at", UTCDateTime(), nullable=True),
    sa.Column("doc", sa.JSON(), nullable=True),
    sa.Column("flag", sa.Boolean(), nullable=False),
    sa.Column("digest", sa.LargeBinary(32), nullable=True, unique=True),
    sa.Column("n", sa.Integer(), nullable=False, default=0),
)
AT = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)

_insert = things.insert()
_by_id = sa.select(things, things.c.n.label("count")).where(things.c.id == sa.bindparam("id"))
_bump = things.update().where(things.c.flag.is_(True)).values(n=things.c.n + sa.bindparam("by"))
_bump_returning = _bump.returning(things.c.id, things.c.n)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'direct.db'}")
        with database._readers().connect() as conn:  # the schema, outside any unit of work
            conn.connection.driver_connection.execute("PRAGMA query_only=OFF")  # type: ignore[union-attr]
            metadata.create_all(conn)
            conn.commit()
        yield database
        await database.dispose()
        return
    if postgres_url is None:
        pytest.skip(os.environ.get("SCALEMULE_TEST_POSTGRES_SKIP", "PostgreSQL is unreachable"))
    schema = f"sm_direct_{os.getpid()}_{secrets.token_hex(4)}"
    await postgres_admin(f'CREATE SCHEMA "{schema}"')
    database = Database(f"{POSTGRES_ADMIN_URL}?search_path={schema}")
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield database
    finally:
        await database.dispose()
        await postgres_admin(f'DROP SCHEMA "{schema}" CASCADE')


class _Executions:
    """Counts the statements SQLAlchemy itself executes on the database's connections."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        engines = [db.engine.sync_engine] if db._sqlite is None else [db._sqlite, db._readers()]
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


def _row(n: int, **fields: Any) -> dict[str, Any]:
    return {"id": f"t{n}", "at": AT, "doc": {"n": n, "list": [1, "two", None]}, "flag": n % 2 == 0, "n": 0} | fields


async def test_a_statement_run_again_goes_to_the_driver_and_reads_the_same_values(db: Database) -> None:
    executions = _Executions(db)
    async with db.transaction() as conn:
        for n in range(3):
            await conn.execute(_insert, _row(n, digest=bytes([n]) * 32))
    assert executions.count == 1  # the first insert; the next two ran on the driver
    async with db.reader() as conn:
        rows = [(await conn.execute(_by_id, {"id": f"t{n}"})).one() for n in range(3)]
    assert executions.count == 2
    for n, row in enumerate(rows):
        assert row.id == f"t{n}" and row.at == AT and row.at.tzinfo is UTC
        assert row.doc == {"n": n, "list": [1, "two", None]}
        assert row.flag is (n % 2 == 0) and row.digest == bytes([n]) * 32
        assert row.n == row.count == 0
        assert dict(row._mapping) == {
            "id": f"t{n}",
            "at": AT,
            "doc": row.doc,
            "flag": n % 2 == 0,
            "digest": bytes([n]) * 32,
            "n": 0,
            "count": 0,
        }
    assert rows[2][0] == "t2" and rows[2][-1] == 0  # by position too


async def test_results_answer_the_methods_callers_use_and_updates_count_their_rows(db: Database) -> None:
    async with db.transaction() as conn:
        for n in range(4):
            await conn.execute(_insert, _row(n))
        counts = [(await conn.execute(_bump, {"by": 5})).rowcount for _ in range(3)]
        returned = [sorted((await conn.execute(_bump_returning, {"by": 1})).all()) for _ in range(2)]
    assert counts == [2, 2, 2]  # t0 and t2 have the flag
    assert returned == [[("t0", 16), ("t2", 16)], [("t0", 17), ("t2", 17)]]
    async with db.reader() as conn:
        assert [(await conn.execute(_by_id, {"id": "t2"})).scalar_one() for _ in range(2)] == ["t2", "t2"]
        assert (await conn.execute(_by_id, {"id": "absent"})).first() is None
        assert (await conn.execute(_by_id, {"id": "absent"})).first() is None
        mapped = [(await conn.execute(_by_id, {"id": "t0"})).mappings().one()["n"] for _ in range(2)]
    assert mapped == [17, 17]


async def test_a_constraint_broken_on_the_driver_raises_sqlalchemys_error_and_rolls_back(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(_insert, _row(1, digest=b"x" * 32))
    with pytest.raises(sa.exc.IntegrityError):
        async with db.transaction() as conn:
            await conn.execute(_insert, _row(2))
            await conn.execute(_insert, _row(3, digest=b"x" * 32))  # the second run: on the driver
    async with db.reader() as conn:
        ids = (await conn.execute(sa.select(things.c.id))).scalars().all()
    assert ids == ["t1"]


async def test_statements_with_work_at_run_time_keep_going_through_sqlalchemy(db: Database) -> None:
    executions = _Executions(db)
    expanding = sa.select(things.c.id).where(things.c.id.in_(sa.bindparam("ids"))).order_by(things.c.id)
    with_options = sa.select(things.c.id).execution_options(stream_results=False)
    text = sa.text("SELECT count(*) FROM things")
    defaults = {k: v for k, v in _row(0).items() if k != "n"}  # n from the column's default, in Python
    async with db.transaction() as conn:
        await conn.execute(_insert, [_row(1), _row(2)])  # several parameter sets
        await conn.execute(_insert, [_row(3), _row(4)])
        await conn.execute(_insert, defaults | {"id": "t5"})
        await conn.execute(_insert, defaults | {"id": "t6"})
        found = [(await conn.execute(expanding, {"ids": ["t1", "t3"]})).scalars().all() for _ in range(2)]
        for _ in range(2):
            await conn.execute(with_options)
            await conn.execute(text)
    assert found == [["t1", "t3"], ["t1", "t3"]]
    assert executions.count == 10


async def test_statements_built_per_call_with_their_own_values_read_their_own_rows(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(_insert, [_row(n) for n in range(direct.KEPT + 50)])
    async with db.reader() as conn:
        for n in range(direct.KEPT + 50):
            query = sa.select(things.c.id).where(things.c.id == f"t{n}")  # a value, not a parameter
            assert [(await conn.execute(query)).scalar_one() for _ in range(3)] == [f"t{n}"] * 3
        plans = db._plans
        assert plans is not None and len(plans._entries) <= direct.KEPT
        # A statement in steady use stays planned while the others pass through.
        assert [(await conn.execute(_by_id, {"id": "t7"})).one().id for _ in range(3)] == ["t7"] * 3
