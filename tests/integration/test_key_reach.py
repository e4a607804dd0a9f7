"""API keys never outreach the key that minted them, and every key can be seen and stopped by the
principal it belongs to and by whoever could have issued it — and by nobody else."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from scalemule.core import identity
from scalemule.core.access import KeyTerms
from scalemule.db.engine import Connection
from scalemule.db.tables import api_keys
from scalemule.settings import Settings
from tests.conftest import World
from tests.integration.people import member_with_key, run_while_blocked

pytestmark = pytest.mark.anyio


async def _set_expiry(world: World, key_id: str, days: int) -> None:
    async with world.dispatcher.runtime.db.transaction() as conn:
        expires = identity.utcnow() + timedelta(days=days)
        await conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(expires_at=expires))


async def _owner_key_id(world: World) -> str:
    return str((await world.ok("whoami", world.owner))["key"]["id"])


# --- hole 1: reach of minted keys ------------------------------------------------------------


async def test_a_tenant_bound_key_cannot_mint_an_unbound_key(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    bound = await world.ok("keys_create", world.owner, tenant="acme", name="acme only")
    code = await world.code("keys_create", bound["token"], name="escape", bind_tenant=False)
    assert code == "permission_denied"
    child = await world.ok("keys_create", bound["token"], name="still bound")
    assert child["key"]["tenant_id"] == world.made.tenant.id
    assert await world.code("whoami", child["token"], tenant="globex") == "permission_denied"


async def test_a_minted_key_is_scoped_within_the_key_that_minted_it(world: World) -> None:
    narrow = await world.ok("keys_create", world.agent, name="narrow", scopes=["config:read", "keys:manage"])
    child = await world.ok("keys_create", narrow["token"], name="child")
    assert child["key"]["scopes"] == ["config:read", "keys:manage"]
    assert await world.code("keys_create", narrow["token"], name="wide", scopes=["config:write"]) == "permission_denied"


async def test_a_minted_key_without_an_expiry_inherits_its_parents(world: World) -> None:
    parent = await world.ok("keys_create", world.agent, name="parent", expires_in_days=3)
    child = await world.ok("keys_create", parent["token"], name="child")
    assert child["key"]["expires_at"] == parent["key"]["expires_at"]
    grandchild = await world.ok("keys_create", child["token"], name="grandchild", expires_in_days=1)
    assert grandchild["key"]["expires_at"] < parent["key"]["expires_at"]


async def test_a_minted_key_cannot_expire_after_its_parent(world: World) -> None:
    parent = await world.ok("keys_create", world.agent, name="parent", expires_in_days=3)
    outcome = await world.call("keys_create", parent["token"], name="child", expires_in_days=30)
    assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert parent["key"]["expires_at"][:10] in outcome.error.message


async def test_a_minted_key_records_the_key_that_minted_it(world: World) -> None:
    child = await world.ok("keys_create", world.agent, name="child")
    listed = await world.ok("keys_list", world.agent)
    (row,) = [k for k in listed["items"] if k["id"] == child["key"]["id"]]
    assert row["parent_key_id"] == (await world.ok("whoami", world.agent))["key"]["id"]


async def test_revoking_a_key_revokes_every_key_minted_from_it_transitively(world: World) -> None:
    parent = await world.ok("keys_create", world.agent, name="parent")
    child = await world.ok("keys_create", parent["token"], name="child")
    grandchild = await world.ok("keys_create", child["token"], name="grandchild")
    sibling = await world.ok("keys_create", world.agent, name="sibling")
    revoked = await world.ok("keys_revoke", world.agent, key_id=parent["key"]["id"])
    assert revoked["revoked_keys"] == 3
    for token in (parent["token"], child["token"], grandchild["token"]):
        assert await world.code("whoami", token) == "unauthenticated"
    await world.ok("whoami", sibling["token"])
    await world.ok("whoami", world.agent)


async def test_a_key_minted_while_its_parent_is_being_revoked_is_refused(world: World, store: Settings) -> None:
    if store.database_url is None:
        pytest.skip("SQLite runs one unit of work at a time (its writer lock): there is no interleaving to force")
    parent = await world.ok("keys_create", world.agent, name="parent")
    child = await world.ok("keys_create", parent["token"], name="child")

    async def revoke_parent(conn: Connection) -> None:
        await identity.revoke_key(conn, audience=None, key_id=parent["key"]["id"])

    # The mint goes through the grandchild's parent, so the lock that matters is on the lineage.
    outcome = await run_while_blocked(
        world.dispatcher.runtime, revoke_parent, lambda: world.call("keys_create", child["token"], name="late")
    )
    assert outcome.error is not None and outcome.error.code == "unauthenticated"
    async with world.dispatcher.runtime.db.transaction() as conn:
        names = (await conn.execute(sa.select(api_keys.c.name).where(api_keys.c.revoked_at.is_(None)))).scalars()
        assert "late" not in set(names)


async def test_a_revocation_waiting_on_a_concurrent_mint_revokes_the_minted_key_too(
    world: World, store: Settings
) -> None:
    if store.database_url is None:
        pytest.skip("SQLite runs one unit of work at a time (its writer lock): there is no interleaving to force")
    parent = await world.ok("keys_create", world.agent, name="parent")
    child = await world.ok("keys_create", parent["token"], name="child")
    async with world.dispatcher.runtime.db.transaction() as conn:
        child_info = (await identity.get_key(conn, audience=None, key_id=child["key"]["id"])).info
    minted: list[str] = []

    async def mint_below(conn: Connection) -> None:
        terms = KeyTerms(tenant_id=child_info.tenant_id, scopes=frozenset({"config:read"}), expires_at=None)
        _, token = await identity.mint_key(
            conn, parent=child_info, principal_id=child_info.principal_id, name="late", terms=terms, created_by="t"
        )
        minted.append(token)

    revoke = await run_while_blocked(
        world.dispatcher.runtime,
        mint_below,
        lambda: world.ok("keys_revoke", world.agent, key_id=parent["key"]["id"]),
    )
    assert revoke["revoked_keys"] == 3
    assert await world.code("whoami", minted[0]) == "unauthenticated"


# --- hole 2: every key is listable and revocable by its principal -------------------------------


async def test_a_user_lists_and_revokes_its_own_unbound_key(world: World) -> None:
    spare = await world.ok("keys_create", world.owner, name="spare", bind_tenant=False)
    mine = await world.ok("keys_list", world.owner)
    ids = {k["id"] for k in mine["items"]}
    assert {await _owner_key_id(world), spare["key"]["id"]} <= ids
    await world.ok("keys_revoke", spare["token"], key_id=await _owner_key_id(world))
    assert await world.code("whoami", world.owner) == "unauthenticated"


async def test_a_user_in_several_tenants_lists_its_keys_without_naming_one(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    listed = await world.ok("keys_list", world.owner)
    assert await _owner_key_id(world) in {k["id"] for k in listed["items"]}


async def test_a_tenant_bound_key_cannot_see_or_revoke_its_owners_unbound_key(world: World) -> None:
    bound = await world.ok("keys_create", world.owner, tenant="acme", name="acme only")
    owner_key = await _owner_key_id(world)
    listed = await world.ok("keys_list", bound["token"])
    assert owner_key not in {k["id"] for k in listed["items"]}
    assert await world.code("keys_revoke", bound["token"], key_id=owner_key) == "not_found"
    await world.ok("whoami", world.owner)


# --- hole 4: managing another principal's keys needs what issuing them needs ---------------------


async def test_a_developer_cannot_revoke_an_owners_key(world: World) -> None:
    owner_bound = await world.ok("keys_create", world.owner, tenant="acme", name="owner in acme")
    assert await world.code("keys_revoke", world.agent, key_id=owner_bound["key"]["id"]) == "not_found"
    assert await world.code("keys_revoke", world.agent, key_id=await _owner_key_id(world)) == "not_found"
    await world.ok("whoami", owner_bound["token"])


async def test_keys_list_shows_a_developer_only_keys_it_could_manage(world: World) -> None:
    _, admin = await member_with_key(world, "dave@example.com", "admin")
    admin_key = await world.ok("keys_create", admin, name="admin in acme")
    viewer_bot = await world.ok("agents_create", world.owner, name="viewer-bot", role="viewer")
    bot_key = await world.ok("keys_create", world.owner, name="bot", principal_id=viewer_bot["principal"]["id"])
    seen = {k["id"] for k in (await world.ok("keys_list", world.agent))["items"]}
    assert bot_key["key"]["id"] in seen
    assert (await world.ok("whoami", world.agent))["key"]["id"] in seen
    assert admin_key["key"]["id"] not in seen
    everything = {k["id"] for k in (await world.ok("keys_list", admin))["items"]}
    assert {bot_key["key"]["id"], admin_key["key"]["id"]} <= everything


async def test_a_developer_revokes_the_key_of_an_agent_it_could_manage(world: World) -> None:
    viewer_bot = await world.ok("agents_create", world.owner, name="viewer-bot", role="viewer")
    bot_key = await world.ok("keys_create", world.owner, name="bot", principal_id=viewer_bot["principal"]["id"])
    await world.ok("keys_revoke", world.agent, key_id=bot_key["key"]["id"])
    assert await world.code("whoami", bot_key["token"]) == "unauthenticated"
