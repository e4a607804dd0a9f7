from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from scalemule.core import audit, audit_filters, audit_verify
from scalemule.core.access import PROTECTED_WRITE, ROLES
from scalemule.core.audit import AuditEvent
from scalemule.core.audit_filters import EventFilter
from scalemule.core.ids import utcnow
from scalemule.db import migrate
from scalemule.db.engine import Database, create_engine
from scalemule.db.tables import api_keys, audit_events, audit_heads, metadata, principals
from scalemule.db.types import UTCDateTime
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


@asynccontextmanager
async def _empty_database(store: Settings) -> AsyncIterator[str]:
    """The URL of an empty database of the store's kind, dropped afterwards."""
    if store.database_url is None:
        yield f"sqlite:///{store.data_dir / 'empty.db'}"
        return
    schema = f"sm_mig_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL)
    try:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        yield f"{POSTGRES_ADMIN_URL}?search_path={schema}"
    finally:
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()


def test_the_head_a_store_is_checked_against_is_the_newest_migration() -> None:
    assert ScriptDirectory.from_config(migrate.alembic_config()).get_current_head() == migrate.HEAD


async def test_a_store_is_pending_until_it_is_migrated_to_the_head(store: Settings) -> None:
    async with _empty_database(store) as url:
        db = Database(url)
        try:
            empty = await migrate.pending(db)
            await migrate.upgrade(db.engine, "0003")
            behind = await migrate.pending(db)
            await migrate.upgrade(db.engine)
            current = await migrate.pending(db)
        finally:
            await db.dispose()
    assert (empty, behind, current) == (True, True, False)


_ROWS_AT_0003 = [
    "INSERT INTO tenants (id, slug, name, created_at) VALUES ('ten_1', 'acme', 'Acme', :at)",
    "INSERT INTO principals (id, kind, name, email, created_at) VALUES ('usr_1', 'user', 'a', 'a@x', :at)",
    "INSERT INTO principals (id, kind, name, tenant_id, created_at) VALUES ('agt_1', 'agent', 'b', 'ten_1', :at)",
    "INSERT INTO memberships (tenant_id, principal_id, role, created_at) VALUES ('ten_1', 'usr_1', 'owner', :at)",
    "INSERT INTO memberships (tenant_id, principal_id, role, created_at) VALUES ('ten_1', 'agt_1', 'worker', :at)",
]


async def test_upgrading_a_store_that_holds_tenants_keeps_every_row_and_names_memberships(store: Settings) -> None:
    # Rebuilding the tenants table on SQLite must not cascade into the rows that reference it.
    async with _empty_database(store) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine, "0003")
            async with engine.begin() as conn:
                for statement in _ROWS_AT_0003:
                    await conn.execute(sa.text(statement), {"at": utcnow()})
            await migrate.upgrade(engine)
            async with engine.connect() as conn:
                rows = await conn.execute(sa.text("SELECT principal_id, slug FROM memberships ORDER BY principal_id"))
                assert [tuple(r) for r in rows] == [("agt_1", "acme"), ("usr_1", "acme")]
                count = await conn.execute(sa.text("SELECT count(*) FROM principals"))
                assert count.scalar_one() == 2
        finally:
            await engine.dispose()


async def test_keys_minted_before_new_permissions_keep_the_reach_they_had(store: Settings) -> None:
    admin_scopes = sorted(ROLES["admin"] - {PROTECTED_WRITE})
    developer_scopes = sorted(ROLES["developer"])
    async with _empty_database(store) as url:
        engine = create_engine(url)
        try:
            await migrate.upgrade(engine, "0008-1")  # just before the permission existed
            async with engine.begin() as conn:
                await conn.execute(
                    principals.insert().values(
                        id="usr_1", kind="user", name="a", email="a@example.com", created_at=utcnow()
                    )
                )
                personal = ["tenants:create", "config:read"]
                shapes = (
                    ("key_admin", admin_scopes),
                    ("key_dev", developer_scopes),
                    ("key_all", None),
                    ("key_me", personal),
                )
                for key_id, scopes in shapes:
                    await conn.execute(
                        api_keys.insert().values(
                            id=key_id,
                            principal_id="usr_1",
                            name=key_id,
                            prefix=key_id,
                            token_sha256=key_id.encode().ljust(32, b"\0"),
                            scopes=scopes,
                            created_at=utcnow(),
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
    assert stored["key_me"] == ["config:read", "tenants:create", "tenants:join"]


def _old_events(chain: str) -> list[AuditEvent]:
    """Events as the store held them before 0013, chained: a NUL and other scripts in the arguments, a
    time with no microseconds (ISO 8601 then leaves out the fraction)."""
    at = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    events = [
        AuditEvent(
            at=at + timedelta(microseconds=i * 250_001),
            operation=("whoami", "config_set", "storage_put_object")[i % 3],
            outcome="ok" if i % 2 else "denied",
            transport="stdio",
            duration_ms=i / 7,
            args={"key": f"k{i}", "value": "caf\u00e9 \u4e00\x00 end", "n": i},
            tenant_id=chain,
            actor_id="agt_1",
            actor_name="bot",
            target=f"t{i}",
        )
        for i in range(5)
    ]
    sealed, _ = audit._seal(events, 0, audit.GENESIS_HASH)
    return sealed


async def test_upgrading_a_store_with_audit_events_keeps_them_readable_and_verifiable(store: Settings) -> None:
    chain = "ten_1"
    events = _old_events(chain)
    async with _empty_database(store) as url:
        db = Database(url)
        try:
            await migrate.upgrade(db.engine, "0012")
            async with db.engine.begin() as conn:
                old = await conn.run_sync(lambda c: sa.Table("audit_events", sa.MetaData(), autoload_with=c))
                old.c.at.type = UTCDateTime()
                old.c.args.type = sa.JSON()
                rows = [{f.name: getattr(e, f.name) for f in dataclasses.fields(e)} | {"chain": chain} for e in events]
                await conn.execute(old.insert(), rows)
                head = {"chain": chain, "seq": events[-1].seq, "hash": events[-1].hash}
                await conn.execute(audit_heads.insert(), head)
            await migrate.upgrade(db.engine)
            report = await audit_verify.verify_chain(audit_verify.reader(db), None, {}, chain)
            async with db.reader() as conn:
                stored = [AuditEvent.from_row(r) for r in await conn.execute(sa.select(audit_events))]
                found = await audit_filters.query(conn, tenant_id=chain, where=EventFilter(target="t3"))
                since = EventFilter(since=events[2].at)
                recent = await audit_filters.query(conn, tenant_id=chain, where=since)
        finally:
            await db.dispose()
    assert report.ok and report.events == len(events), report
    assert sorted(stored, key=lambda e: e.seq) == events
    assert [e.seq for e in found] == [4] and [e.seq for e in recent] == [5, 4, 3]
