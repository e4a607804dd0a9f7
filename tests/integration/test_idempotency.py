"""Idempotency keys: scoped to the tenant a call acts in, else to the caller; stored in a stable format."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest
import sqlalchemy as sa

from scalemule.core import identity
from scalemule.core.ids import utcnow
from scalemule.db.tables import idempotency_keys
from scalemule.operations import REGISTRY
from scalemule.operations.base import REDACTED, Call
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio


async def _agent_of(world: World, slug: str) -> tuple[str, str]:
    """A developer agent owned by tenant ``slug`` and a key bound there; returns (principal id, token)."""
    agent = await world.ok("agents_create", world.owner, tenant=slug, name=f"{slug}-dev", role="developer")
    key = await world.ok("keys_create", world.owner, tenant=slug, name="dev", principal_id=agent["principal"]["id"])
    return agent["principal"]["id"], key["token"]


async def test_the_same_idempotency_key_in_two_tenants_runs_twice_and_each_caller_gets_its_own_result(
    world: World,
) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    globex_agent, globex_token = await _agent_of(world, "globex")
    acme = await world.ok("keys_create", world.agent, name="deploy", idempotency_key="req-1")
    globex = await world.ok("keys_create", globex_token, name="deploy", idempotency_key="req-1")
    assert acme["key"]["id"] != globex["key"]["id"]
    assert (acme["key"]["principal_id"], globex["key"]["principal_id"]) == (world.made.agent.id, globex_agent)
    assert REDACTED not in (acme["token"], globex["token"])
    # Each tenant's replay is its own first result.
    assert (await world.ok("keys_create", world.agent, name="deploy", idempotency_key="req-1"))["key"] == acme["key"]
    assert (await world.ok("keys_create", globex_token, name="deploy", idempotency_key="req-1"))["key"] == globex["key"]


async def test_one_caller_using_one_idempotency_key_in_two_of_its_tenants_creates_in_each(world: World) -> None:
    globex = await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    made = {
        slug: await world.ok("keys_create", world.owner, tenant=slug, name="ci", idempotency_key="same")
        for slug in ("acme", "globex")
    }
    assert made["acme"]["key"]["tenant_id"] == world.made.tenant.id
    assert made["globex"]["key"]["tenant_id"] == globex["tenant"]["id"]
    assert made["acme"]["key"]["id"] != made["globex"]["key"]["id"]


async def test_two_agents_of_one_tenant_share_its_idempotency_keys(world: World) -> None:
    _, other = await _agent_of(world, "acme")
    first = await world.ok("agents_create", world.agent, name="helper", role="viewer", idempotency_key="mk-helper")
    replay = await world.ok("agents_create", other, name="helper", role="viewer", idempotency_key="mk-helper")
    assert replay == {**first, "replayed": True}


async def test_an_idempotency_key_outside_any_tenant_is_the_callers_own(world: World) -> None:
    bob = await world.ok("members_add", world.owner, email="bob@example.com", role="viewer")
    async with world.dispatcher.runtime.db.transaction() as conn:
        _, bob_token = await identity.create_key(
            conn,
            principal_id=bob["principal"]["id"],
            tenant_id=None,
            name="bob",
            scopes=None,
            expires_at=None,
            created_by=None,
        )
    alice = await world.ok("tenants_create", world.owner, slug="globex", name="Globex", idempotency_key="t-1")
    theirs = await world.ok("tenants_create", bob_token, slug="initech", name="Initech", idempotency_key="t-1")
    assert (alice["tenant"]["slug"], theirs["tenant"]["slug"]) == ("globex", "initech")
    assert theirs["role"] == "owner"


async def test_the_same_idempotency_key_on_another_operation_is_a_conflict(world: World) -> None:
    await world.ok("agents_create", world.agent, name="helper", role="viewer", idempotency_key="k-1")
    assert await world.code("keys_create", world.agent, name="helper", idempotency_key="k-1") == "conflict"


async def test_a_record_in_the_stored_format_replays(world: World) -> None:
    # Replicas of two releases share one store: a record one wrote must replay on the other. The format:
    # the SHA-256 of the compact, key-sorted JSON of [operation, arguments without idempotency_key].
    arguments = {"tenant": None, "name": "helper", "role": "viewer", "kind": "agent"}
    canonical = json.dumps(["agents_create", arguments], sort_keys=True, separators=(",", ":"))
    stored = {"principal": {"id": "agt_x", "kind": "agent", "name": "helper"}, "role": "viewer"}
    async with world.dispatcher.runtime.db.transaction() as conn:
        await conn.execute(
            idempotency_keys.insert().values(
                scope=world.made.tenant.id,
                key="from-another-replica",
                operation="agents_create",
                request_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
                result=stored,
                created_at=utcnow(),
            )
        )
    outcome = await world.call(
        "agents_create", world.agent, name="helper", role="viewer", idempotency_key="from-another-replica"
    )
    assert outcome.error is None, outcome.error
    assert outcome.result == {**stored, "replayed": True}
    async with world.dispatcher.runtime.db.transaction() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(idempotency_keys))).scalar_one()
    assert count == 1


async def test_different_idempotency_keys_in_one_tenant_are_different_requests(world: World) -> None:
    first = await world.ok("agents_create", world.agent, name="one", role="viewer", idempotency_key="a")
    second = await world.ok("agents_create", world.agent, name="two", role="viewer", idempotency_key="b")
    assert first["principal"]["id"] != second["principal"]["id"]
    replay = await world.ok("agents_create", world.agent, name="one", role="viewer", idempotency_key="a")
    assert replay == {**first, "replayed": True}


async def test_a_call_that_loses_the_race_for_its_idempotency_key_is_a_conflict_and_changes_nothing(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = REGISTRY["agents_create"]

    async def racing(call: Call, args: Any) -> Any:
        # Another replica records the same key while this call's handler runs.
        result = await original.handler(call, args)
        await call.conn.execute(
            idempotency_keys.insert().values(
                scope=call.tenant_id,
                key=args.idempotency_key,
                operation="agents_create",
                request_sha256="0" * 64,
                result={},
                created_at=utcnow(),
            )
        )
        return result

    monkeypatch.setitem(REGISTRY, "agents_create", dataclasses.replace(original, handler=racing))
    before = await probe.rows()
    code = await world.code("agents_create", world.agent, name="helper", role="viewer", idempotency_key="race")
    assert code == "conflict"
    assert await probe.rows() == before
