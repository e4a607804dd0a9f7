"""Calls recorded in aggregate: bounded events with counts, folded by the next minute or by a reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from scalemule.core import audit_rollups
from scalemule.core.audit import AuditEvent
from scalemule.db.tables import audit_events
from scalemule.db.tables import audit_rollups as rollups_table
from scalemule.runtime import Runtime
from tests.conftest import World, stored_event

pytestmark = pytest.mark.anyio

MINUTE = datetime(2026, 11, 30, 5, 20, tzinfo=UTC)


def _refused(at: datetime, *, tenant_id: str | None = None, actor_id: str | None = None) -> AuditEvent:
    return AuditEvent(
        at=at,
        operation="http_request",
        outcome="denied",
        transport="http",
        duration_ms=0.1,
        args={"reason": "unknown key"},
        tenant_id=tenant_id,
        actor_id=actor_id,
        error_code="unauthenticated",
    )


async def _events(runtime: Runtime, operation: str = "http_request") -> list[dict[str, object]]:
    async with runtime.db.transaction() as conn:
        query = sa.select(audit_events).where(audit_events.c.operation == operation).order_by(audit_events.c.seq)
        return [stored_event(r) for r in await conn.execute(query)]


async def _pending(runtime: Runtime) -> int:
    async with runtime.db.transaction() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(rollups_table))).scalar_one())


async def test_a_thousand_refusals_in_one_minute_become_one_event_with_their_count(runtime: Runtime) -> None:
    for i in range(1000):
        async with runtime.db.transaction() as conn:
            await audit_rollups.tally(conn, _refused(MINUTE + timedelta(milliseconds=50 * i)), source="10.0.0.1")
    assert await _pending(runtime) == 1
    async with runtime.db.transaction() as conn:
        assert await audit_rollups.flush(conn) == 1
    (event,) = await _events(runtime)
    assert event["outcome"] == "denied" and event["error_code"] == "unauthenticated"
    assert event["args"]["count"] == 1000
    assert event["args"]["source"] == "10.0.0.1"
    assert event["args"]["window"] == MINUTE.isoformat()
    assert event["args"]["first_at"] == MINUTE.isoformat()
    assert event["args"]["last_at"] == (MINUTE + timedelta(milliseconds=50 * 999)).isoformat()
    assert await _pending(runtime) == 0


async def test_the_first_refusal_of_a_new_minute_folds_the_closed_minute(runtime: Runtime) -> None:
    async with runtime.db.transaction() as conn:
        await audit_rollups.tally(conn, _refused(MINUTE), source="a")
        await audit_rollups.tally(conn, _refused(MINUTE + timedelta(seconds=30)), source="a")
    assert await _events(runtime) == []
    async with runtime.db.transaction() as conn:
        await audit_rollups.tally(conn, _refused(MINUTE + timedelta(minutes=1, seconds=1)), source="a")
    (event,) = await _events(runtime)
    assert event["args"]["count"] == 2
    assert await _pending(runtime) == 1  # the new minute's bucket stays open


async def test_sources_actors_and_outcomes_are_counted_apart(runtime: Runtime) -> None:
    async with runtime.db.transaction() as conn:
        await audit_rollups.tally(conn, _refused(MINUTE), source="a")
        await audit_rollups.tally(conn, _refused(MINUTE), source="b")
        await audit_rollups.tally(conn, _refused(MINUTE, actor_id="usr_1"), source="a")
        await audit_rollups.tally(conn, _refused(MINUTE), source="a")
        await audit_rollups.flush(conn)
    counts = sorted((e["args"]["source"], e["actor_id"] or "", e["args"]["count"]) for e in await _events(runtime))
    assert counts == [("a", "", 2), ("a", "usr_1", 1), ("b", "", 1)]


async def test_rotating_sources_cannot_open_more_than_the_bucket_cap_in_a_minute(runtime: Runtime) -> None:
    sources = audit_rollups.MAX_BUCKETS + 40
    async with runtime.db.transaction() as conn:
        for i in range(sources):
            await audit_rollups.tally(conn, _refused(MINUTE), source=f"198.51.100.{i}")
        await audit_rollups.flush(conn)
    events = await _events(runtime)
    assert len(events) == audit_rollups.MAX_BUCKETS + 1
    overflow = [e for e in events if e["args"]["source"] == audit_rollups.OVERFLOW_SOURCE]
    assert [e["args"]["count"] for e in overflow] == [40]
    assert sum(e["args"]["count"] for e in events) == sources


async def test_a_tally_rolled_back_with_its_unit_of_work_counts_nothing(runtime: Runtime) -> None:
    with pytest.raises(RuntimeError):
        async with runtime.db.transaction() as conn:
            await audit_rollups.tally(conn, _refused(MINUTE), source="a")
            raise RuntimeError("the unit of work failed")
    assert await _pending(runtime) == 0


async def test_folded_events_join_the_tenant_chain_in_order(world: World, runtime: Runtime) -> None:
    tenant_id = world.made.tenant.id
    async with runtime.db.transaction() as conn:
        await audit_rollups.tally(conn, _refused(MINUTE, tenant_id=tenant_id), source="a")
    await world.ok("whoami", world.agent)
    page = await world.ok("audit_query", world.made.owner_token, tenant="acme", limit=5, response_format="detailed")
    operations = [item["operation"] for item in page["items"]]
    # A reader folds what is pending, the open minute included: it never misses an attempt.
    assert operations[:2] == ["http_request", "whoami"]
    folded = page["items"][0]
    assert folded["args"]["count"] == 1
    seqs = [item["seq"] for item in page["items"]]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    assert await _pending(runtime) == 0
