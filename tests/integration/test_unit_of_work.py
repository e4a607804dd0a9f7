"""The audited unit of work every entry point uses, on SQLite and PostgreSQL."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest
import sqlalchemy as sa

from scalemule.core import audit, bootstrap, identity, unit_of_work
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import FailedPrecondition, Internal
from scalemule.core.ids import utcnow
from scalemule.core.unit_of_work import ReadEvents, UnitOfWork
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


async def _read(runtime: Runtime, n: int) -> str | None:
    """A read through a unit of work; returns its event id."""

    async def body(conn: Connection) -> None:
        await conn.execute(sa.select(sa.literal(n)))

    work = UnitOfWork(runtime.db, _Trace(operation=f"probe_read_{n}"))
    await work.read(body)
    return work.event_id


async def _reads_at_once(runtime: Runtime, count: int) -> list[str | BaseException | None]:
    outcomes: list[str | BaseException | None] = [None] * count

    async def one(n: int) -> None:
        try:
            outcomes[n] = await _read(runtime, n)
        except Exception as exc:
            outcomes[n] = exc

    async with anyio.create_task_group() as group:
        for n in range(count):
            group.start_soon(one, n)
    return outcomes


async def _probe_reads(probe: StoreProbe) -> list[int]:
    return sorted(e["seq"] for e in await probe.audit_events() if e["operation"].startswith("probe_read_"))


async def test_reads_finishing_together_are_appended_together_after_the_head_the_last_turn_left(
    runtime: Runtime, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One at a time with one guess of the head, all but one would miss it, wait on its row, then lock
    # it and append the longer way.
    await _read(runtime, 99)  # the process's first append reads the head under lock
    batches, locked = [], 0
    write, free, lock_head = ReadEvents._write, ReadEvents.append_free, audit._lock_head

    async def counted_write(self: ReadEvents, events: list[AuditEvent]) -> list[AuditEvent]:
        batches.append(len(events))
        return await write(self, events)

    async def counted_free(self: ReadEvents, conn: Connection, event: AuditEvent) -> AuditEvent | None:
        sealed = await free(self, conn, event)
        batches.extend([1] if sealed is not None else [])
        return sealed

    async def counted_lock(conn: Connection, chain: str) -> Any:
        nonlocal locked
        locked += 1
        return await lock_head(conn, chain)

    monkeypatch.setattr(ReadEvents, "_write", counted_write)
    monkeypatch.setattr(ReadEvents, "append_free", counted_free)
    monkeypatch.setattr(audit, "_lock_head", counted_lock)
    outcomes = await _reads_at_once(runtime, 16)
    assert all(isinstance(o, str) for o in outcomes) and len(set(outcomes)) == 16
    assert sum(batches) == 16 and len(batches) < 16 and locked == 0
    seqs = await _probe_reads(probe)
    assert seqs == list(range(seqs[0], seqs[0] + 17))


async def test_when_a_turn_fails_the_reads_it_carried_are_appended_by_the_next(
    runtime: Runtime, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed: list[int] = []
    write = ReadEvents._write

    async def flaky(self: ReadEvents, events: list[AuditEvent]) -> list[AuditEvent]:
        if not failed and len(events) > 1:
            failed.append(len(events))
            raise OSError("the store went away")
        return await write(self, events)

    monkeypatch.setattr(ReadEvents, "_write", flaky)
    outcomes = await _reads_at_once(runtime, 16)
    assert failed and failed[0] > 1
    # The read whose turn failed fails (recorded as such); the others it carried were appended after.
    assert [type(o) for o in outcomes if not isinstance(o, str)] == [Internal]
    events = [e for e in await probe.audit_events() if e["operation"].startswith("probe_read_")]
    assert sorted(e["outcome"] for e in events) == ["error"] + ["ok"] * 15
    seqs = sorted(e["seq"] for e in events)
    assert seqs == list(range(seqs[0], seqs[0] + 16))


async def test_a_read_cancelled_while_its_event_waits_for_a_turn_is_recorded_as_cancelled_only(
    runtime: Runtime, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, release = anyio.Event(), anyio.Event()
    write = ReadEvents._write

    async def held(self: ReadEvents, events: list[AuditEvent]) -> list[AuditEvent]:
        writing.set()
        await release.wait()
        return await write(self, events)

    async def busy(self: ReadEvents, conn: Connection, event: AuditEvent) -> None:
        return None  # every read's event goes through the queue

    monkeypatch.setattr(ReadEvents, "_write", held)
    monkeypatch.setattr(ReadEvents, "append_free", busy)
    waiting = ReadEvents.of(runtime.db)._waiting
    second = anyio.CancelScope()

    async def cancelled_read() -> None:
        with second:
            await _read(runtime, 2)

    async with anyio.create_task_group() as group:
        group.start_soon(_read, runtime, 1)
        await writing.wait()  # the first read's turn is writing
        group.start_soon(cancelled_read)
        # Nothing signals that the second read's event has queued: look between turns of the loop.
        while not any(waiting.values()):
            await anyio.lowlevel.checkpoint()
        second.cancel()
        release.set()
    await _read(runtime, 3)  # the next turn carries no event of the cancelled read
    events = [(e["operation"], e["outcome"]) for e in await probe.audit_events()]
    assert sorted(e for e in events if e[0].startswith("probe_read_")) == [
        ("probe_read_1", "ok"),
        ("probe_read_2", "cancelled"),
        ("probe_read_3", "ok"),
    ]


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


@pytest.mark.parametrize("reused", [False, True], ids=["through-sqlalchemy", "on-the-driver"])
async def test_pooled_connections_the_database_dropped_are_replaced_without_failing_a_call(
    runtime: Runtime, world: World, reused: bool
) -> None:
    if runtime.db.dialect != "postgresql":
        pytest.skip("SQLite has no server to drop connections")
    for _ in range(2 if reused else 0):
        # Run twice, whoami's statements run on the driver from now on (db.direct): the first one meets
        # the dead connection there.
        await world.ok("whoami", world.agent)
    pids = await _backend_pids(runtime, 3)
    # What a database restart does to idle pooled connections.
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", sorted(pids))
    finally:
        await admin.close()
    reads = [await world.call("whoami", world.agent) for _ in range(4)]
    for _ in range(4):
        await world.ok("config_set", world.agent, env="dev", key="after-restart", value=1)
    assert not pids & await _backend_pids(runtime, 3)
    # A read retried on a fresh connection is in autocommit there too: its event, appended on that
    # connection to commit on its own, was committed before the read answered.
    probe = StoreProbe(runtime)
    assert [(await probe.event(read.event_id))["operation"] for read in reads] == ["whoami"] * 4
