"""The audited unit of work every entry point uses, on SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import pytest
import sqlalchemy as sa

from scalemule.core import audit, bootstrap, identity, unit_of_work
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import FailedPrecondition, Internal
from scalemule.core.ids import utcnow
from scalemule.core.unit_of_work import UnitOfWork
from scalemule.db.engine import Connection
from scalemule.db.tables import audit_rollups
from scalemule.runtime import Runtime
from tests.conftest import POSTGRES_ADMIN_URL, StoreProbe, World

pytestmark = pytest.mark.anyio


@dataclass
class _Trace:
    tallied: bool = False
    operation: str = "probe_call"
    source: str = "tests"

    def event(self, outcome: audit.Outcome, error_code: str | None) -> AuditEvent:
        return AuditEvent(
            at=utcnow(),
            operation=self.operation,
            outcome=outcome,
            transport="cli",
            duration_ms=0.0,
            args={},
            error_code=error_code,
        )


async def test_a_successful_call_is_appended_with_its_changes_in_one_transaction(
    runtime: Runtime, probe: StoreProbe
) -> None:
    work = UnitOfWork(runtime.db, _Trace())

    async def body(conn: Connection) -> str:
        return "done"

    assert await work.run(body) == "done"
    assert (await probe.event(work.event_id))["outcome"] == "ok"


async def test_a_read_hands_back_its_result_only_once_its_event_is_committed(
    runtime: Runtime, probe: StoreProbe
) -> None:
    # On PostgreSQL a read runs in autocommit: the first event finds the chain's head under lock, the
    # next ones are each one statement of their own after the head this process knows.
    seqs = []
    for n in range(3):
        work = UnitOfWork(runtime.db, _Trace(operation=f"probe_read_{n}"))

        async def body(conn: Connection) -> int:
            return int((await conn.execute(sa.select(sa.literal(7)))).scalar_one())

        assert await work.read(body) == 7
        event = await probe.event(work.event_id)
        assert (event["operation"], event["outcome"]) == (f"probe_read_{n}", "ok")
        seqs.append(event["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + 3))


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_concurrent_reads_of_one_chain_take_turns_each_appending_after_the_head_the_last_left(
    runtime: Runtime, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Racing with one guess, all but one would miss the head, wait on its row, then lock it and retry.
    locked = 0
    original = audit._lock_head

    async def counted(conn: Connection, chain: str) -> Any:
        nonlocal locked
        locked += 1
        return await original(conn, chain)

    async def read(n: int) -> None:
        async def body(conn: Connection) -> None:
            await conn.execute(sa.select(sa.literal(n)))

        await UnitOfWork(runtime.db, _Trace(operation=f"probe_read_{n}")).read(body)

    await read(0)  # the first append of the process reads the head under lock
    monkeypatch.setattr(audit, "_lock_head", counted)
    async with anyio.create_task_group() as group:
        for n in range(1, 17):
            group.start_soon(read, n)
    assert locked == 0
    events = [e for e in await probe.audit_events() if e["operation"].startswith("probe_read_")]
    seqs = sorted(e["seq"] for e in events)
    assert seqs == list(range(seqs[0], seqs[0] + 17))


async def test_a_call_whose_trace_asks_for_it_is_tallied_instead_of_appended(
    runtime: Runtime, probe: StoreProbe
) -> None:
    before = await probe.audit_count()
    for _ in range(5):
        work = UnitOfWork(runtime.db, _Trace(tallied=True))

        async def body(conn: Connection) -> None:
            return None

        await work.run(body)
        assert work.event_id is None
    async with runtime.db.transaction() as conn:
        counts = [row.count for row in await conn.execute(sa.select(audit_rollups.c.count))]
    assert sum(counts) == 5 and await probe.audit_count() <= before + 1


async def test_an_unexpected_exception_rolls_back_and_becomes_internal_naming_its_event(
    runtime: Runtime, probe: StoreProbe
) -> None:
    work = UnitOfWork(runtime.db, _Trace())
    before = await probe.rows()

    async def body(conn: Connection) -> Any:
        await identity.create_principal(conn, kind="user", name="x@example.com", email="x@example.com")
        raise RuntimeError("a bug")

    with pytest.raises(Internal) as raised:
        await work.run(body)
    assert work.event_id is not None and work.event_id in (raised.value.hint or "")
    event = await probe.event(work.event_id)
    assert (event["outcome"], event["error_code"]) == ("error", "internal")
    assert await probe.rows() == before


async def test_an_operator_command_that_fails_is_recorded_as_the_operators(runtime: Runtime, probe: StoreProbe) -> None:
    await bootstrap.initialize(runtime.db, slug="acme", owner_email="alice@example.com")
    with pytest.raises(FailedPrecondition):
        await bootstrap.initialize(runtime.db, slug="again", owner_email="bob@example.com")
    events = [e for e in await probe.audit_events() if e["operation"] == "init"]
    assert [(e["outcome"], e["actor_kind"], e["chain"] == "-") for e in events] == [
        ("error", "operator", True),
        ("ok", "operator", False),
    ]  # ordered by chain: the global chain '-' sorts first


async def test_an_operator_one_liner_records_what_its_body_learns(runtime: Runtime, probe: StoreProbe) -> None:
    work, trace = unit_of_work.operator(runtime.db, "keys_probe", {"key_id": "key_1"}, target="key_1")

    async def body(conn: Connection) -> None:
        trace.args["found"] = False

    await work.run(body)
    event = await probe.event(work.event_id)
    assert (event["operation"], event["args"], event["actor_kind"]) == (
        "keys_probe",
        {"key_id": "key_1", "found": False},
        "operator",
    )


async def _backend_pids(runtime: Runtime, count: int) -> set[int]:
    # Holds ``count`` pooled connections at once, so that each is a different one, then returns them.
    async with AsyncExitStack() as stack:
        pids = set()
        for _ in range(count):
            conn = await stack.enter_async_context(runtime.db.transaction())
            pids.add(int((await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()))
        return pids


async def test_pooled_connections_the_database_dropped_are_replaced_without_failing_a_call(
    runtime: Runtime, world: World
) -> None:
    if runtime.db.dialect != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    pids = await _backend_pids(runtime, 3)
    # What a database restart does to idle pooled connections.
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", sorted(pids))
    finally:
        await admin.close()
    for _ in range(4):
        await world.ok("whoami", world.agent)
        await world.ok("config_set", world.agent, env="dev", key="after-restart", value=1)
    assert not pids & await _backend_pids(runtime, 3)
