"""audit_verify, audit_get and audit_query's filters, through the dispatch path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from scalemule.core import audit, audit_checkpoints, audit_verify
from scalemule.db.tables import audit_events
from scalemule.dispatch import Invocation
from tests.conftest import World, edited_body

pytestmark = pytest.mark.anyio


async def _activity(world: World) -> None:
    await world.ok("whoami", world.agent)
    await world.ok("config_set", world.agent, env="dev", key="model", value="large")
    await world.call("members_add", world.agent, email="x@example.com", role="viewer")
    await world.ok("config_get", world.agent, env="dev", key="model")


async def test_audit_verify_passes_on_an_untouched_log_and_counts_what_it_checked(world: World) -> None:
    await _activity(world)
    report = await world.ok("audit_verify", world.owner)
    assert report["ok"] and report["problem"] is None
    assert report["from_seq"] == 1 and report["events"] == report["to_seq"] >= 5
    assert report["checkpoints"] >= 1 and report["unsigned"] == report["to_seq"] - report["last_checkpoint"]


async def test_audit_verify_names_the_first_edited_event(world: World) -> None:
    await _activity(world)
    tenant = world.made.tenant.id
    async with world.dispatcher.runtime.db.transaction() as conn:
        where = (audit_events.c.chain == tenant, audit_events.c.seq == 3)
        row = (await conn.execute(sa.select(audit_events).where(*where))).one()
        await conn.execute(audit_events.update().where(*where).values(body=edited_body(row, outcome="denied")))
    report = await world.ok("audit_verify", world.owner)
    assert not report["ok"] and (report["problem"]["seq"], report["problem"]["kind"]) == (3, "edited")


async def test_audit_verify_reports_a_checkpoint_whose_digest_object_is_gone(world: World) -> None:
    runtime = world.dispatcher.runtime
    await _activity(world)
    async with runtime.db.transaction() as conn:
        made = await audit.checkpoint_head(conn, runtime.notary, world.made.tenant.id)
    assert made is not None
    await runtime.blobs.delete(made.digest_ref)
    report = await world.ok("audit_verify", world.owner)
    assert (report["problem"]["seq"], report["problem"]["kind"]) == (made.seq, "digest_missing")


async def test_audit_verify_checks_a_range_through_the_checkpoint_that_covers_it(world: World) -> None:
    runtime = world.dispatcher.runtime
    await _activity(world)
    async with runtime.db.transaction() as conn:
        made = await audit.checkpoint_head(conn, runtime.notary, world.made.tenant.id)
    assert made is not None
    await _activity(world)
    report = await world.ok("audit_verify", world.owner, from_seq=2, to_seq=3)
    assert report["ok"] and (report["from_seq"], report["to_seq"]) == (2, made.seq)
    assert (report["last_checkpoint"], report["unsigned"]) == (made.seq, 0)


async def test_audit_get_returns_the_event_its_position_and_the_checkpoint_covering_it(world: World) -> None:
    runtime = world.dispatcher.runtime
    outcome = await world.call("config_set", world.agent, env="dev", key="k", value=1)
    before = await world.ok("audit_get", world.owner, event_id=outcome.event_id)
    assert before["event"]["id"] == outcome.event_id and before["event"]["args"] == {
        "env": "dev",
        "key": "k",
        "value": 1,
    }
    assert before["checkpoint"] is None and before["head_seq"] >= before["event"]["seq"]
    async with runtime.db.transaction() as conn:
        made = await audit.checkpoint_head(conn, runtime.notary, world.made.tenant.id)
    after = await world.ok("audit_get", world.owner, event_id=outcome.event_id)
    assert made is not None and after["checkpoint"]["seq"] == made.seq >= after["event"]["seq"]
    checkpoint = audit_checkpoints.Checkpoint.from_dict({**after["checkpoint"], "chain": world.made.tenant.id})
    assert checkpoint.problem(runtime.notary.keys.public_keys()) is None


async def test_audit_get_does_not_find_another_tenants_event(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    elsewhere = await world.call("members_list", world.owner, tenant="globex")
    assert await world.code("audit_get", world.owner, tenant="acme", event_id=elsewhere.event_id) == "not_found"
    assert await world.code("audit_get", world.owner, tenant="acme", event_id="evt_missing") == "not_found"


async def test_audit_query_filters_by_target_permission_client_session_and_key(world: World) -> None:
    dispatcher = world.dispatcher
    call = Invocation(
        "config_get", {"env": "dev", "key": "model"}, world.agent, "stdio", client_name="cursor", session_id="s-9"
    )
    await world.ok("config_set", world.agent, env="dev", key="model", value="large")
    marked = await dispatcher.call(call)
    me = await world.ok("whoami", world.agent)
    filters = {
        "target": "model",
        "permission": "config:read",
        "client": "cursor",
        "session": "s-9",
        "key": me["key"]["id"],
    }
    for name, value in filters.items():
        page = await world.ok("audit_query", world.owner, **{name: value})
        assert marked.event_id in {e["id"] for e in page["items"]}, name
    only = await world.ok("audit_query", world.owner, session="s-9", client="cursor")
    assert [e["id"] for e in only["items"]] == [marked.event_id]


async def test_audit_query_is_concise_unless_asked_for_details(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="model", value="large")
    concise = (await world.ok("audit_query", world.owner, operation="config_set"))["items"][0]
    assert "args" not in concise and "hash" not in concise and concise["target"] == "model"
    detailed = (await world.ok("audit_query", world.owner, operation="config_set", response_format="detailed"))[
        "items"
    ][0]
    assert detailed["args"]["key"] == "model" and len(detailed["hash"]) == 64 and detailed["transport"] == "cli"


async def test_a_verify_of_another_chain_never_reads_past_its_own_events(world: World) -> None:
    runtime = world.dispatcher.runtime
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    await _activity(world)
    globex = await world.ok("audit_verify", world.owner, tenant="globex")
    acme = await world.ok("audit_verify", world.owner, tenant="acme")
    assert globex["ok"] and acme["ok"] and globex["events"] < acme["events"]
    async with runtime.db.transaction() as conn:
        count = sa.select(sa.func.count()).where(audit_events.c.chain == world.made.tenant.id)
        assert acme["events"] <= int((await conn.execute(count)).scalar_one())


async def test_audit_verify_refuses_a_range_past_the_chains_end(world: World) -> None:
    assert await world.code("audit_verify", world.owner, from_seq=10**6) == "invalid_argument"
    assert await world.code("audit_verify", world.owner, from_seq=3, to_seq=2) == "invalid_argument"


async def test_audit_verify_from_just_past_the_head_passes_with_nothing_to_check(world: World) -> None:
    await _activity(world)
    head = (await world.ok("audit_verify", world.owner))["to_seq"] + 1  # that call's own event
    report = await world.ok("audit_verify", world.owner, from_seq=head + 1)
    assert report["ok"] and (report["from_seq"], report["to_seq"], report["events"]) == (head + 1, head, 0)


async def test_a_cancelled_verify_stops_at_its_next_batch(world: World) -> None:
    # A task's cancellation reaches its verify between batches, even where reads never wait (SQLite).
    await _activity(world)
    checked: list[int] = []
    async with world.dispatcher.runtime.db.reader() as conn:

        async def read(query: sa.Select[Any]) -> Sequence[Any]:
            return (await conn.execute(query)).all()

        with anyio.CancelScope() as scope:

            def progress(done: int, total: int) -> None:
                checked.append(done)
                scope.cancel()

            await audit_verify.verify_chain(read, None, {}, world.made.tenant.id, batch=2, progress=progress)
    assert scope.cancelled_caught and checked == [2]


async def test_a_nul_in_arguments_and_escape_like_text_in_a_target_are_recorded_found_and_verified(
    world: World,
) -> None:
    # PostgreSQL's JSON functions refuse a \u0000 escape anywhere in a document; the columns derived
    # from an event's body must still be filled, and a literal "\u0000" in a target kept as written.
    key = "odd\\u0000key"
    outcome = await world.call("config_get", world.agent, env="dev\x00", key=key)
    assert outcome.error is not None
    (event,) = (await world.ok("audit_query", world.owner, target=key, response_format="detailed"))["items"]
    assert event["target"] == key and event["args"]["env"] == "dev\x00"
    assert (await world.ok("audit_verify", world.owner))["ok"]


async def test_a_column_derived_from_an_event_never_disagrees_with_its_body(world: World) -> None:
    # SQLite refuses the write (a generated column); PostgreSQL's trigger refills it from the body.
    await _activity(world)
    db, where = world.dispatcher.runtime.db, (audit_events.c.chain == world.made.tenant.id, audit_events.c.seq == 2)
    try:
        async with db.transaction() as conn:
            await conn.execute(audit_events.update().where(*where).values(operation="forged", target="elsewhere"))
    except sa.exc.OperationalError:
        assert db.dialect == "sqlite"
    else:
        assert db.dialect == "postgresql"
    async with db.reader() as conn:
        row = (await conn.execute(sa.select(audit_events).where(*where))).one()
    event = audit.AuditEvent.from_row(row)
    assert (row.operation, row.target, row.id, row.at) == (event.operation, event.target, event.id, event.at)
    assert row.operation != "forged"
