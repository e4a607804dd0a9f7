"""Shared fixtures: one ``store`` parametrised over SQLite and PostgreSQL, a runtime and a dispatcher.

PostgreSQL runs in a schema of its own per test session (``?search_path=``), so parallel runs never
collide; tables are emptied between tests. Where PostgreSQL is unreachable its tests skip with the
reason, unless ``SCALEMULE_REQUIRE_POSTGRES=1`` (CI), which turns that into a failure.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import jsonschema
import pytest
import sqlalchemy as sa

from scalemule.core import audit_rollups, bootstrap, crypto
from scalemule.core.audit import AuditEvent
from scalemule.db import migrate
from scalemule.db.engine import create_engine
from scalemule.db.tables import metadata
from scalemule.dispatch import Dispatcher, Exposure, Invocation, Outcome
from scalemule.operations import REGISTRY
from scalemule.runtime import Runtime
from scalemule.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("SCALEMULE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("SCALEMULE_REQUIRE_POSTGRES") == "1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def postgres_admin(sql: str) -> None:
    """Run ``sql`` at ``POSTGRES_ADMIN_URL`` on a short connection of its own (schemas made, dropped)."""
    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


async def _postgres_schema() -> str:
    schema = f"sm_test_{os.getpid()}_{secrets.token_hex(4)}"
    await postgres_admin(f'CREATE SCHEMA "{schema}"')
    url = f"{POSTGRES_ADMIN_URL}?search_path={schema}"
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return schema


async def _drop_schema(schema: str) -> None:
    await postgres_admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A migrated PostgreSQL schema for this session, or None (with the reason) when unreachable."""
    try:
        schema = anyio.run(_postgres_schema)
    except (OSError, sa.exc.DBAPIError) as exc:
        reason = f"PostgreSQL at {POSTGRES_ADMIN_URL} is unreachable: {type(exc).__name__}: {exc}"
        if REQUIRE_POSTGRES:
            pytest.fail(reason + " (SCALEMULE_REQUIRE_POSTGRES=1)")
        yield None
        os.environ["SCALEMULE_TEST_POSTGRES_SKIP"] = reason
        return
    yield f"{POSTGRES_ADMIN_URL}?search_path={schema}"
    anyio.run(_drop_schema, schema)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once keeps the suite fast).

    ``SCALEMULE_TEST_SQLITE_TEMPLATE`` names a file where it is built once and then reused by every
    later session: the mutation run starts a session per mutant (mutation/mutmut_pytest_compat.py).
    """
    shared = os.environ.get("SCALEMULE_TEST_SQLITE_TEMPLATE")
    if shared and Path(shared).is_file():
        return Path(shared)
    path = tmp_path_factory.mktemp("template") / "scalemule.db"

    async def build() -> None:
        engine = create_engine(f"sqlite:///{path}")
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    anyio.run(build)
    if shared:
        # Copied, then renamed into place: a session reading it never sees half a file.
        partial = Path(f"{shared}.{os.getpid()}")
        shutil.copy(path, partial)
        os.replace(partial, shared)
    return path


# Emptying every table before each PostgreSQL test, in one round trip on one short connection:
# DELETE on tables this small takes milliseconds where TRUNCATE rewrites each table's files.
_EMPTY_ALL = "; ".join(f'DELETE FROM "{table.name}"' for table in reversed(metadata.sorted_tables))


async def _empty(url: str) -> None:
    parsed = sa.engine.make_url(url)
    schema = str(parsed.query["search_path"])
    dsn = parsed.difference_update_query(["search_path"]).render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(_EMPTY_ALL)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Settings:
    """Settings for an empty, migrated store: SQLite in tmp_path, or this session's PostgreSQL schema."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if request.param == "sqlite":
        shutil.copy(sqlite_template, data_dir / "scalemule.db")
        return Settings(data_dir=data_dir)
    url = request.getfixturevalue("postgres_url")
    if url is None:
        pytest.skip(os.environ.get("SCALEMULE_TEST_POSTGRES_SKIP", "PostgreSQL unreachable"))
    anyio.run(_empty, url)
    return Settings(data_dir=data_dir, database_url=url)


@pytest.fixture
async def runtime(store: Settings) -> AsyncIterator[Runtime]:
    """An open runtime over ``store``."""
    rt = Runtime.open(store)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def dispatcher(runtime: Runtime) -> Dispatcher:
    """A dispatcher exposing every toolset."""
    return Dispatcher(runtime, Exposure(toolsets=None))


@functools.cache
def _output_validator(operation: str) -> jsonschema.protocols.Validator:
    """A validator of the operation's published outputSchema, its schema checked once (not per call)."""
    schema = REGISTRY[operation].output_schema
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    return validator(schema)


@dataclass
class World:
    """A bootstrapped store: tenant 'acme' with an owner and a developer agent, plus a caller helper."""

    dispatcher: Dispatcher
    made: bootstrap.Bootstrap

    @property
    def owner(self) -> str:
        return self.made.owner_token

    @property
    def agent(self) -> str:
        return self.made.agent_token

    async def call(self, operation: str, token: str | None, /, **arguments: Any) -> Outcome:
        """Run ``operation`` as the holder of ``token`` over the CLI transport."""
        return await self.dispatcher.call(Invocation(operation, arguments, token, "cli", client_name="tests"))

    async def ok(self, operation: str, token: str | None, /, **arguments: Any) -> dict[str, Any]:
        """Like ``call``, but the call must succeed; returns its result."""
        outcome = await self.call(operation, token, **arguments)
        assert outcome.error is None, outcome.error
        assert outcome.result is not None
        # What MCP clients do with structuredContent: it must conform to the published outputSchema.
        _output_validator(operation).validate(outcome.result)
        return outcome.result

    async def code(self, operation: str, token: str | None, /, **arguments: Any) -> str:
        """Like ``call``, but the call must fail; returns its error code."""
        outcome = await self.call(operation, token, **arguments)
        assert outcome.error is not None, f"{operation} unexpectedly succeeded: {outcome.result}"
        return outcome.error.code


@pytest.fixture
async def world(dispatcher: Dispatcher) -> World:
    """Tenant 'acme' with owner alice@example.com and agent 'acme-agent' (developer)."""
    made = await bootstrap.initialize(dispatcher.runtime.db, slug="acme", owner_email="alice@example.com")
    crypto.create_key_file(dispatcher.runtime.settings.data_dir)
    return World(dispatcher, made)


# --- Whole-store probes: what a call changed, and the audit log as stored ------------------------

# The audit log's own tables: every call appends to them, so "nothing changed" means "nothing else".
AUDIT_TABLES = frozenset({"audit_events", "audit_heads", "audit_rollups", "audit_checkpoints"})


@dataclass
class StoreProbe:
    """Reads a store's tables directly, beside the dispatch path, to check what calls did to them."""

    runtime: Runtime

    async def rows(self) -> dict[str, list[str]]:
        """Every row of every table but the audit log's, in a stable order, for before/after comparison."""
        out: dict[str, list[str]] = {}
        async with self.runtime.db.transaction() as conn:
            for table in metadata.sorted_tables:
                if table.name not in AUDIT_TABLES:
                    out[table.name] = sorted(repr(tuple(row)) for row in await conn.execute(sa.select(table)))
        return out

    async def audit_count(self) -> int:
        """How many audit events the store holds, across every chain."""
        events = metadata.tables["audit_events"]
        async with self.runtime.db.transaction() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(events))).scalar_one())

    async def audit_events(self) -> list[dict[str, Any]]:
        """Every stored audit event as a dict of its fields and chain, ordered by chain and sequence number."""
        events = metadata.tables["audit_events"]
        async with self.runtime.db.transaction() as conn:
            rows = await conn.execute(sa.select(events).order_by(events.c.chain, events.c.seq))
            return [stored_event(row) for row in rows]

    async def tallied(self, error_code: str = "unauthenticated") -> int:
        """How many calls with ``error_code`` were tallied, once every open bucket is folded into the log."""
        async with self.runtime.db.transaction() as conn:
            await audit_rollups.flush(conn)
        events = await self.audit_events()
        return sum(int(e["args"]["count"]) for e in events if e["error_code"] == error_code and "count" in e["args"])

    async def event(self, event_id: str | None) -> dict[str, Any]:
        """One stored audit event by id."""
        events = metadata.tables["audit_events"]
        async with self.runtime.db.transaction() as conn:
            row = (await conn.execute(sa.select(events).where(events.c.id == event_id))).one()
            return stored_event(row)


def edited_body(row: Any, **changes: Any) -> str:
    """The body of the stored event ``row`` with ``changes`` made to its fields, as an edit of the
    database would write it (its hash left as it was)."""
    event = replace(AuditEvent.from_row(row), **changes)
    return str(event.row()["body"])


def stored_event(row: Any) -> dict[str, Any]:
    """An ``audit_events`` row as the event's fields (from its body) and its chain."""
    return {**asdict(AuditEvent.from_row(row)), "chain": row.chain}


@pytest.fixture
def probe(runtime: Runtime) -> StoreProbe:
    """Direct reads of the store behind ``runtime``."""
    return StoreProbe(runtime)
