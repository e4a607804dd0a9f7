"""Every audit_query filter is served by an index: the plan the database picks for the statement
``audit_query`` runs never scans the log, and pages newest first without sorting it.

The log holds thousands of events of one busy caller (so a planner with statistics, as PostgreSQL's
after ANALYZE, weighs a real table), and each query asks for a value that is rare or absent there:
the case that used to read the whole chain.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from scalemule.core import audit_filters
from scalemule.core.audit import AuditEvent
from scalemule.core.audit_filters import EventFilter, Statement
from scalemule.core.ids import utcnow
from scalemule.db.tables import audit_events
from tests import plans
from tests.conftest import World

pytestmark = pytest.mark.anyio

EVENTS = 5000
NOW = utcnow()


def _index(column: str) -> str:
    return f"ix_audit_events_chain_{column}_seq"


# Each filter with a value the busy caller never produced, the indexes its plan must use, and whether
# the plan may sort (only what it found: the two branches of an actor, the events of a time window).
FILTERS: dict[str, tuple[EventFilter, list[str], bool]] = {
    "operation": (EventFilter(operation="config_delete"), [_index("operation")], False),
    "outcome": (EventFilter(outcome="error"), [_index("outcome")], False),
    "actor": (EventFilter(actor="nobody"), [_index("actor_id"), _index("actor_name")], True),
    "target": (EventFilter(target="features.rare"), [_index("target")], False),
    "permission": (EventFilter(permission="secrets:reveal"), [_index("permission")], False),
    "client": (EventFilter(client="rare-client"), [_index("client_name")], False),
    "session": (EventFilter(session="ses_rare"), [_index("session_id")], False),
    "key": (EventFilter(key="key_rare"), [_index("key_id")], False),
    "time window": (
        EventFilter(since=NOW - timedelta(days=2), until=NOW - timedelta(days=1)),
        ["ix_audit_events_chain_at_seq"],
        True,
    ),
    # A window holding most of the log is read backwards by sequence number, a page at a time.
    "wide time window": (EventFilter(since=NOW - timedelta(hours=1)), [], False),
}


def _busy_events(chain: str) -> list[dict[str, Any]]:
    """Rows of one caller's calls, all alike but for their ids and sequence numbers."""
    return [
        {
            "id": f"evt_busy_{seq}",
            "chain": chain,
            "seq": seq,
            "at": NOW,
            "tenant_id": chain,
            "actor_id": "agt_busy",
            "actor_kind": "agent",
            "actor_name": "busy",
            "key_id": "key_busy",
            "client_name": "busy-client",
            "transport": "http",
            "session_id": "ses_busy",
            "operation": "config_set",
            "permission": "config:write",
            "target": "features.busy",
            "args": {},
            "outcome": "ok",
            "duration_ms": 1.0,
            "prev_hash": "0" * 64,
            "hash": "0" * 64,
        }
        for seq in range(1_000_000, 1_000_000 + EVENTS)
    ]


async def _plan(world: World, statement: Statement) -> list[str]:
    query, params = statement
    return await plans.plan(world.dispatcher.runtime.db, query, params)


def _stored(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``audit_events`` rows of events given by their fields (and chain)."""
    return [AuditEvent(**{k: v for k, v in e.items() if k != "chain"}).row() for e in events]


async def _plans(world: World, where: EventFilter, before_seq: int | None) -> list[str]:
    """The plans of the statements ``audit_filters.query`` runs for ``where``."""
    db, chain = world.dispatcher.runtime.db, world.made.tenant.id
    if db.dialect == "postgresql":
        return await _plan(world, where.statement(chain, before_seq=before_seq, limit=50))
    async with db.transaction() as conn:
        statement = await where.sqlite_statement(conn, chain, before_seq=before_seq, limit=50)
    plan = await _plan(world, statement)
    if where.window_only:
        plan += await _plan(world, where.window_probe(chain, before_seq=before_seq))
    return plan


@pytest.fixture
async def busy_log(world: World) -> World:
    """``world`` whose tenant's log holds thousands of one busy caller's events, analysed on PostgreSQL."""
    db = world.dispatcher.runtime.db
    async with db.transaction() as conn:
        await conn.execute(audit_events.insert(), _stored(_busy_events(world.made.tenant.id)))
    if db.dialect == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE audit_events"))
            await conn.commit()
    return world


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("before_seq", [None, 1_000_000 + EVENTS // 2], ids=["first page", "next page"])
async def test_each_audit_query_filter_is_served_by_its_index(
    busy_log: World, name: str, before_seq: int | None
) -> None:
    where, indexes, may_sort = FILTERS[name]
    plan = await _plans(busy_log, where, before_seq)
    text = "\n".join(plan)
    assert all(index in text for index in indexes), text
    assert not plans.scans(plan, "audit_events"), text
    if not may_sort:
        # The index holds the matches in sequence order: the page is read from its end, unsorted. A
        # value this rare may instead have its few matches collected through the same index and sorted
        # (PostgreSQL weighs the two as nearly equal, and picks either): never the log.
        assert not plans.sorts(plan) or _sorts_only_matches(plan, indexes), text


def _sorts_only_matches(plan: list[str], indexes: list[str]) -> bool:
    text = "\n".join(plan)
    return "Bitmap Heap Scan on audit_events" in text and all(f"Bitmap Index Scan on {i}" in text for i in indexes)


# The busy caller's own values: thousands of matches, where sorting them for a page would cost what an
# index read backwards spares (the filter's own, or, when nearly every event matches, the chain's).
BUSY: dict[str, EventFilter] = {
    "operation": EventFilter(operation="config_set"),
    "target": EventFilter(target="features.busy"),
    "client": EventFilter(client="busy-client"),
    "session": EventFilter(session="ses_busy"),
    "key": EventFilter(key="key_busy"),
}


@pytest.mark.parametrize("name", list(BUSY))
@pytest.mark.parametrize("before_seq", [None, 1_000_000 + EVENTS // 2], ids=["first page", "next page"])
async def test_a_busy_value_is_paged_from_an_index_read_backwards_unsorted(
    busy_log: World, name: str, before_seq: int | None
) -> None:
    plan = await _plans(busy_log, BUSY[name], before_seq)
    text = "\n".join(plan)
    assert not plans.scans(plan, "audit_events"), text
    assert not plans.sorts(plan), text


async def test_a_busy_actor_pages_newest_first_by_id_or_by_name_through_every_event_once(world: World) -> None:
    for i in range(7):
        await world.ok("config_set", world.agent, env="dev", key=f"k{i}", value=i)
        await world.ok("whoami", world.owner)
    agent = (await world.ok("whoami", world.agent))["principal"]
    for actor in (agent["id"], agent["name"]):
        seen: list[int] = []
        cursor = None
        while True:
            page = await world.ok("audit_query", world.owner, actor=actor, limit=3, cursor=cursor)
            assert all(e["actor"]["id"] == agent["id"] for e in page["items"])
            seen += [e["seq"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 8


async def test_an_actor_matching_one_principals_id_and_anothers_name_finds_both_once(world: World) -> None:
    db, chain = world.dispatcher.runtime.db, world.made.tenant.id
    rows = _busy_events(chain)[:3]
    rows[0] |= {"actor_id": "agt_x", "actor_name": "agt_x"}  # matches both ways: listed once
    rows[1] |= {"actor_id": "agt_x", "actor_name": "x"}
    rows[2] |= {"actor_id": "agt_y", "actor_name": "agt_x"}
    async with db.transaction() as conn:
        await conn.execute(audit_events.insert(), _stored(rows))
        found = await audit_filters.query(conn, tenant_id=chain, where=EventFilter(actor="agt_x"))
    assert [e.seq for e in found] == [r["seq"] for r in reversed(rows)]


async def test_a_long_target_in_any_script_is_recorded_and_found(world: World) -> None:
    # 1,000 characters of CJK are 3,000 bytes of UTF-8: more than PostgreSQL takes in an index entry.
    key = "\u4e00\u4e8c" * 500
    outcome = await world.call("config_get", world.agent, env="dev", key=key)
    assert outcome.error is not None and outcome.error.code == "invalid_argument"
    events = (await world.ok("audit_query", world.owner, operation="config_get", outcome="error"))["items"]
    assert len(events) == 1 and key.startswith(events[0]["target"]) and len(events[0]["target"].encode()) <= 2000
    again = await world.ok("audit_query", world.owner, target=events[0]["target"])
    assert [e["id"] for e in again["items"]] == [events[0]["id"]]


@pytest.mark.parametrize(
    ("since", "until"),
    [(100, 140), (0, 2500), (2900, None), (None, 30), (5000, None)],
    ids=["few", "most", "newest", "oldest", "none"],
)
async def test_a_time_window_pages_through_exactly_its_events_newest_first(
    world: World, since: int | None, until: int | None
) -> None:
    db, chain = world.dispatcher.runtime.db, "ten_window"  # a chain of these events alone
    rows = _busy_events(chain)[:3000]
    for i, row in enumerate(rows):
        # Times follow sequence numbers only roughly, as on a busy chain: every fifth event was timed
        # seven seconds before it joined the chain.
        row["at"] = NOW + timedelta(seconds=i - (7 if i % 5 == 0 else 0))
    async with db.transaction() as conn:
        await conn.execute(audit_events.insert(), _stored(rows))
    where = EventFilter(
        since=None if since is None else NOW + timedelta(seconds=since),
        until=None if until is None else NOW + timedelta(seconds=until),
    )
    expected = [
        r["seq"]
        for r in reversed(rows)
        if (where.since is None or r["at"] >= where.since) and (where.until is None or r["at"] < where.until)
    ]
    found: list[int] = []
    before: int | None = None
    while True:
        async with db.transaction() as conn:
            page = await audit_filters.query(conn, tenant_id=chain, where=where, before_seq=before, limit=200)
        found += [e.seq for e in page]
        if len(page) < 200:
            break
        before = page[-1].seq
    assert found == expected
