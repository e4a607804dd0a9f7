"""The audit log: what each event records, redaction, the per-tenant hash chain, and audit_query."""

from __future__ import annotations

import secrets as random
from datetime import datetime, timedelta
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from scalemule import dispatch
from scalemule.core import audit
from scalemule.core.audit import GENESIS_HASH, AuditEvent
from scalemule.core.pages import encode_cursor
from scalemule.dispatch import Invocation
from scalemule.operations import REGISTRY
from scalemule.operations.base import REDACTED
from scalemule.operations.registry import Operation
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio

_EVENT_FIELDS = set(AuditEvent.__dataclass_fields__)


def _sensitive_fields(op: Operation) -> list[str]:
    return [
        name
        for name, info in op.args_model.model_fields.items()
        if any(type(m).__name__ == "Sensitive" for m in info.metadata)
    ]


async def test_an_event_records_who_called_what_from_where_and_how_it_went(world: World, probe: StoreProbe) -> None:
    outcome = await world.dispatcher.call(
        Invocation(
            "agents_create",
            {"name": "menu-worker", "role": "worker"},
            world.agent,
            "stdio",
            client_name="claude-code",
            client_version="2.1.0",
            session_id="sess-1",
            request_id="42",
        )
    )
    assert outcome.error is None
    event = await probe.event(outcome.event_id)
    agent = world.made.agent
    assert (event["actor_id"], event["actor_kind"], event["actor_name"]) == (agent.id, "agent", agent.name)
    assert event["key_id"] is not None and event["on_behalf_of"] == world.made.owner.id
    assert (event["client_name"], event["client_version"]) == ("claude-code", "2.1.0")
    assert (event["transport"], event["session_id"], event["request_id"]) == ("stdio", "sess-1", "42")
    assert (event["operation"], event["permission"], event["target"]) == (
        "agents_create",
        "agents:manage",
        "menu-worker",
    )
    assert event["args"] == {"name": "menu-worker", "role": "worker"}
    assert (event["outcome"], event["error_code"]) == ("ok", None)
    assert event["duration_ms"] >= 0 and event["tenant_id"] == world.made.tenant.id
    assert event["chain"] == world.made.tenant.id


def test_an_events_duration_is_the_time_since_the_call_began_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    caller = dispatch._Caller(Invocation("whoami", {}, None, "cli"), REGISTRY["whoami"], started=10.0)
    monkeypatch.setattr(dispatch, "time", SimpleNamespace(perf_counter=lambda: 10.25))
    assert caller.event("ok", None).duration_ms == 250.0


async def test_a_failed_call_is_recorded_as_an_error_with_its_code(world: World, probe: StoreProbe) -> None:
    outcome = await world.call("keys_revoke", world.agent, key_id="key_missing")
    event = await probe.event(outcome.event_id)
    assert (event["outcome"], event["error_code"], event["target"]) == ("error", "not_found", "key_missing")


async def test_a_denied_call_is_recorded_as_denied_in_the_callers_tenant(world: World, probe: StoreProbe) -> None:
    outcome = await world.call("members_add", world.agent, email="x@example.com", role="viewer")
    event = await probe.event(outcome.event_id)
    assert (event["outcome"], event["error_code"]) == ("denied", "permission_denied")
    assert event["permission"] == "members:manage" and event["tenant_id"] == world.made.tenant.id


async def test_calls_with_refused_credentials_are_tallied_not_recorded_one_event_each(
    world: World, probe: StoreProbe
) -> None:
    before = await probe.audit_count()
    for token in [None, "smk_unknown", world.agent[:-1] + "x"] * 20:
        outcome = await world.call("whoami", token)
        assert outcome.error is not None and outcome.error.code == "unauthenticated"
        assert outcome.event_id is None
    # Counted in a bucket, not appended (a minute that closes meanwhile is folded into one event).
    assert await probe.audit_count() <= before + 1
    assert await probe.tallied() == 60
    folded = [e for e in await probe.audit_events() if e["error_code"] == "unauthenticated"]
    assert 1 <= len(folded) <= 2  # one per minute: the calls may straddle a minute boundary
    for event in folded:
        assert (event["outcome"], event["actor_id"], event["chain"]) == ("denied", None, "-")
        assert event["args"]["source"] == "cli" and event["operation"] == "whoami"


async def test_a_denied_call_by_a_known_caller_is_still_one_event_each(world: World, probe: StoreProbe) -> None:
    before = await probe.audit_count()
    for _ in range(3):
        outcome = await world.call("members_add", world.agent, email="x@example.com", role="viewer")
        assert (await probe.event(outcome.event_id))["error_code"] == "permission_denied"
    assert await probe.audit_count() == before + 3


async def test_the_token_keys_create_returns_never_reaches_the_audit_log(world: World, probe: StoreProbe) -> None:
    made = await world.ok("keys_create", world.agent, name="ci", idempotency_key="once")
    await world.ok("keys_create", world.agent, name="ci", idempotency_key="once")
    events = await probe.audit_events()
    assert made["token"] not in repr(events)
    assert made["token"][len("smk_") :] not in repr(events)


async def test_sensitive_arguments_are_recorded_as_redacted_whatever_the_outcome(
    world: World, probe: StoreProbe
) -> None:
    marked = {op.name: _sensitive_fields(op) for op in REGISTRY.values() if _sensitive_fields(op)}
    if not marked:
        pytest.skip("no operation declares a Sensitive argument")
    for name, fields in marked.items():
        for token in (world.owner, world.agent, None):
            canary = f"canary-{random.token_hex(8)}"
            arguments = {field: canary for field in fields} | {"unknown": canary[:3]}
            outcome = await world.call(name, token, **arguments)
            if outcome.event_id is None:  # a refused credential: tallied, its first call's args kept
                await probe.tallied()
                assert canary not in repr(await probe.audit_events()), name
                continue
            event = await probe.event(outcome.event_id)
            assert canary not in repr(event), name
            assert all(event["args"][field] == REDACTED for field in fields), name


async def test_events_of_each_tenant_form_a_gapless_hash_chain(world: World, probe: StoreProbe) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    for token in (world.agent, world.owner, None, "smk_bad"):
        await world.call("whoami", token)
        await world.call("members_list", token, tenant="globex")
        await world.call("tenants_get", token, tenant="acme")
    events = await probe.audit_events()
    chains: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        chains.setdefault(event["chain"], []).append(event)
    assert len(chains) >= 3  # acme, globex and the global chain
    for chain, chained in chains.items():
        assert [e["seq"] for e in chained] == list(range(1, len(chained) + 1)), chain
        previous = GENESIS_HASH
        for event in chained:
            assert event["prev_hash"] == previous, (chain, event["seq"])
            sealed = AuditEvent(**{k: v for k, v in event.items() if k in _EVENT_FIELDS})
            assert sealed.digest() == event["hash"], (chain, event["seq"])
            previous = event["hash"]


async def test_concurrent_calls_keep_the_chain_gapless(world: World, probe: StoreProbe) -> None:
    async def one(i: int) -> None:
        await world.call("whoami", world.agent if i % 2 else world.owner)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for i in range(24):
                group.start_soon(one, i)
    acme = [e for e in await probe.audit_events() if e["chain"] == world.made.tenant.id]
    assert [e["seq"] for e in acme] == list(range(1, len(acme) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in pairwise(acme))
    assert len(acme) >= 25  # init's event and the 24 calls


async def test_a_process_whose_guess_of_the_head_is_stale_appends_after_the_true_head(
    world: World, probe: StoreProbe
) -> None:
    # Another process appending to the chain leaves this one's guess behind: its next append must
    # find the head (on PostgreSQL, after the one-statement move-and-insert matched nothing).
    chain = world.made.tenant.id
    await world.ok("whoami", world.agent)
    stale = audit._head_guess[chain]
    for _ in range(2):
        await world.ok("whoami", world.agent)
    audit._head_guess[chain] = stale
    outcome = await world.call("whoami", world.agent)
    acme = [e for e in await probe.audit_events() if e["chain"] == chain]
    assert [e["seq"] for e in acme] == list(range(1, len(acme) + 1))
    assert all(b["prev_hash"] == a["hash"] for a, b in pairwise(acme))
    assert acme[-1]["id"] == outcome.event_id and audit._head_guess[chain].seq == acme[-1]["seq"]


async def test_a_tampered_event_no_longer_matches_its_hash(world: World, probe: StoreProbe) -> None:
    outcome = await world.call("whoami", world.agent)
    event = await probe.event(outcome.event_id)
    sealed = AuditEvent(**{k: v for k, v in event.items() if k in _EVENT_FIELDS})
    assert sealed.digest() == event["hash"]
    forged = AuditEvent(**{**{k: v for k, v in event.items() if k in _EVENT_FIELDS}, "outcome": "denied"})
    assert forged.digest() != event["hash"]


# --- audit_query -----------------------------------------------------------------------------


async def _busy_tenant(world: World) -> None:
    await world.ok("whoami", world.agent)
    await world.ok("members_list", world.owner)
    await world.call("members_add", world.agent, email="x@example.com", role="viewer")
    await world.call("keys_revoke", world.agent, key_id="key_missing")
    await world.ok("agents_create", world.agent, name="helper", role="viewer")


async def test_audit_query_shows_the_tenants_events_newest_first(world: World) -> None:
    await _busy_tenant(world)
    page = await world.ok("audit_query", world.agent)
    seqs = [e["seq"] for e in page["items"]]
    assert seqs == sorted(seqs, reverse=True) and page["next_cursor"] is None
    assert [e["operation"] for e in page["items"][:5]] == [
        "agents_create",
        "keys_revoke",
        "members_add",
        "members_list",
        "whoami",
    ]
    assert page["items"][0]["client"] == "tests/?"


async def test_audit_query_filters_by_actor_operation_and_outcome(world: World) -> None:
    await _busy_tenant(world)
    agent = world.made.agent
    for actor in (agent.id, agent.name):
        by_actor = await world.ok("audit_query", world.owner, actor=actor)
        assert by_actor["items"] and all(e["actor"]["id"] == agent.id for e in by_actor["items"])
    by_op = await world.ok("audit_query", world.owner, operation="members_list")
    assert [e["operation"] for e in by_op["items"]] == ["members_list"]
    denied = await world.ok("audit_query", world.owner, outcome="denied")
    assert [(e["operation"], e["error_code"]) for e in denied["items"]] == [("members_add", "permission_denied")]
    errors = await world.ok("audit_query", world.owner, outcome="error")
    assert [(e["operation"], e["error_code"]) for e in errors["items"]] == [("keys_revoke", "not_found")]


async def test_audit_query_filters_by_a_time_window(world: World) -> None:
    await _busy_tenant(world)
    everything = (await world.ok("audit_query", world.owner))["items"]
    middle = everything[len(everything) // 2]
    at = datetime.fromisoformat(middle["at"])
    since = await world.ok("audit_query", world.owner, since=at.isoformat())
    assert since["items"] and all(datetime.fromisoformat(e["at"]) >= at for e in since["items"])
    assert middle["id"] in {e["id"] for e in since["items"]}
    until = await world.ok("audit_query", world.owner, until=at.isoformat())
    assert all(datetime.fromisoformat(e["at"]) < at for e in until["items"])
    assert middle["id"] not in {e["id"] for e in until["items"]}
    ahead = (at + timedelta(days=1)).isoformat()
    assert (await world.ok("audit_query", world.owner, since=ahead))["items"] == []


async def test_audit_query_pages_through_every_event_once(world: World) -> None:
    await _busy_tenant(world)
    full = await world.call("audit_query", world.owner, limit=200)
    assert full.result is not None
    everything = [e["id"] for e in full.result["items"]]
    paged: list[str] = []
    cursor = None
    for _ in range(50):
        page = await world.ok("audit_query", world.owner, limit=2, cursor=cursor)
        paged += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Each call is recorded after it ran: the walk sees the full query's own event first, then what that
    # query saw, each event once and in order.
    assert paged == [full.event_id, *everything]


async def test_audit_query_never_shows_another_tenants_events(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    await world.ok("members_list", world.owner, tenant="globex")
    acme = await world.ok("audit_query", world.owner, tenant="acme", limit=200)
    assert "members_list" not in {e["operation"] for e in acme["items"]}
    globex = await world.ok("audit_query", world.owner, tenant="globex", limit=200)
    assert "members_list" in {e["operation"] for e in globex["items"]}


async def test_a_forged_audit_cursor_is_an_invalid_argument(world: World) -> None:
    for position in ({"seq": "x"}, {"seq": [1]}, {"seq": 10**30}, {}):
        outcome = await world.call("audit_query", world.owner, cursor=encode_cursor(position))
        assert outcome.error is not None and outcome.error.code == "invalid_argument", position


async def test_resource_reads_are_audited_like_tool_calls(world: World, probe: StoreProbe) -> None:
    uri = "scalemule://tenants/acme"
    outcome = await world.dispatcher.call(
        Invocation("tenants_get", {"tenant": "acme"}, world.agent, "stdio", resource=uri)
    )
    assert outcome.error is None
    event = await probe.event(outcome.event_id)
    assert (event["operation"], event["target"], event["outcome"]) == ("tenants_get", uri, "ok")
