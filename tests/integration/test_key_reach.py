"""API keys never outreach the key that minted them, and every key can be seen and stopped by the
principal it belongs to and by whoever could have issued it — and by nobody else."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from scalemule.core import identity, ids
from scalemule.core.access import KeyTerms
from scalemule.core.errors import Unauthenticated
from scalemule.db.engine import Connection
from scalemule.db.tables import api_keys
from scalemule.settings import Settings
from tests.conftest import World
from tests.integration.people import issued_key, join, member_with_key, run_while_blocked, user_with_key

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


async def test_a_minted_key_records_the_key_that_minted_it_and_who_created_it(world: World) -> None:
    child = await world.ok("keys_create", world.agent, name="child")
    listed = await world.ok("keys_list", world.agent)
    (row,) = [k for k in listed["items"] if k["id"] == child["key"]["id"]]
    agent_key = (await world.ok("whoami", world.agent))["key"]["id"]
    assert row["parent_key_id"] == agent_key
    bot = await world.ok("agents_create", world.owner, name="bot", role="viewer")
    for_bot = await world.ok("keys_create", world.owner, name="bot key", principal_id=bot["principal"]["id"])
    owner_key = await _owner_key_id(world)
    async with world.dispatcher.runtime.db.transaction() as conn:
        stored = {
            r.id: (r.principal_id, r.created_by, r.parent_key_id)
            for r in await conn.execute(
                sa.select(api_keys.c.id, api_keys.c.principal_id, api_keys.c.created_by, api_keys.c.parent_key_id)
            )
        }
    owner, agent = world.made.owner.id, world.made.agent.id
    assert stored == {
        owner_key: (owner, None, None),  # issued by the operator at init
        agent_key: (agent, owner, None),
        child["key"]["id"]: (agent, agent, agent_key),
        for_bot["key"]["id"]: (bot["principal"]["id"], owner, owner_key),
    }


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


async def _chain(world: World) -> list[str]:
    """The agent's init key, a key minted with it, one minted with that and one below: ids, root first."""
    chain = [(await world.ok("whoami", world.agent))["key"]["id"]]
    token = world.agent
    for name in ("parent", "child", "grandchild"):
        made = await world.ok("keys_create", token, name=name)
        chain.append(made["key"]["id"])
        token = made["token"]
    return chain


async def test_a_keys_lineage_is_locked_and_returned_root_first_without_other_keys(world: World) -> None:
    # The lock order (root first, the same for every mint and revocation) is what keeps concurrent
    # mints and revocations free of deadlocks; SQLite cannot show it, so the order is read here.
    chain = await _chain(world)
    await world.ok("keys_create", world.agent, name="sibling")
    await world.ok("keys_create", world.owner, name="unrelated")
    async with world.dispatcher.runtime.db.transaction() as conn:
        for end in range(1, len(chain) + 1):
            rows = await identity._lock_lineage(conn, chain[end - 1])
            assert [row.id for row in rows] == chain[:end]
            assert all(row.revoked_at is None and row.expires_at is None for row in rows)


async def _mint_below(world: World, key_id: str) -> str:
    async with world.dispatcher.runtime.db.transaction() as conn:
        parent = (await identity.get_key(conn, audience=None, key_id=key_id)).info
        terms = KeyTerms(tenant_id=parent.tenant_id, scopes=frozenset({"config:read"}), expires_at=None)
        info, _ = await identity.mint_key(
            conn, parent=parent, principal_id=parent.principal_id, name="late", terms=terms, created_by="t"
        )
    return info.id


async def _set_ancestor(world: World, key_id: str, **values: object) -> None:
    # What a revocation or expiry committed while a mint below the key was under way leaves behind.
    async with world.dispatcher.runtime.db.transaction() as conn:
        await conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(**values))


async def test_minting_below_a_revoked_or_expired_ancestor_is_refused_at_the_instant_it_expires(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = identity.utcnow()
    monkeypatch.setattr(ids, "clock", lambda: now)
    chain = await _chain(world)
    sibling = await world.ok("keys_create", world.agent, name="sibling")
    await world.ok("keys_revoke", world.agent, key_id=sibling["key"]["id"])
    # A revoked key off the lineage stops nothing.
    await _mint_below(world, chain[-1])
    await _set_ancestor(world, chain[1], expires_at=now + timedelta(microseconds=1))
    await _mint_below(world, chain[-1])
    count = await _key_count(world)
    for values in ({"expires_at": now}, {"expires_at": None, "revoked_at": now}):
        await _set_ancestor(world, chain[1], **values)
        with pytest.raises(Unauthenticated):
            await _mint_below(world, chain[-1])
        assert await _key_count(world) == count


async def _key_count(world: World) -> int:
    async with world.dispatcher.runtime.db.transaction() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(api_keys))).scalar_one())


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


async def test_each_caller_lists_exactly_its_own_keys_and_those_it_could_issue(world: World) -> None:
    acme = world.made.tenant.id
    globex = (await world.ok("tenants_create", world.owner, slug="globex", name="Globex"))["tenant"]["id"]
    key: dict[str, str] = {
        "owner": await _owner_key_id(world),
        "agent": (await world.ok("whoami", world.agent))["key"]["id"],
    }
    owner_acme = await world.ok("keys_create", world.owner, tenant="acme", name="owner in acme")
    key["owner@acme"] = owner_acme["key"]["id"]
    key["owner@globex"] = (await world.ok("keys_create", world.owner, tenant="globex", name="g"))["key"]["id"]
    principal: dict[str, str] = {}
    for name, role in (("bot", "viewer"), ("admin-bot", "admin"), ("ex-bot", "viewer")):
        principal[name] = (await world.ok("agents_create", world.owner, tenant="acme", name=name, role=role))[
            "principal"
        ]["id"]
        made = await world.ok("keys_create", world.owner, tenant="acme", name=name, principal_id=principal[name])
        key[name] = made["key"]["id"]
    roaming = await world.ok(
        "keys_create", world.owner, tenant="acme", name="roaming", principal_id=principal["bot"], bind_tenant=False
    )
    key["bot unbound"] = roaming["key"]["id"]
    key["bot@globex"], _ = await issued_key(world, principal["bot"], tenant_id=globex)
    await world.ok("members_remove", world.owner, tenant="acme", principal_id=principal["ex-bot"])
    stranger = await world.ok("agents_create", world.owner, tenant="globex", name="stranger", role="viewer")
    for bind in (True, False):
        made = await world.ok(
            "keys_create",
            world.owner,
            tenant="globex",
            name="s",
            principal_id=stranger["principal"]["id"],
            bind_tenant=bind,
        )
        key[f"stranger {bind}"] = made["key"]["id"]
    # bob: a viewer of acme; dave: an admin of acme and a viewer of globex.
    bob, bob_token = await user_with_key(world, "bob@example.com")
    await join(world, bob_token, by=world.owner, email="bob@example.com", role="viewer")
    key["bob"] = (await world.ok("whoami", bob_token))["key"]["id"]
    key["bob@acme"], bob_acme = await issued_key(world, bob, tenant_id=acme)
    dave, dave_token = await user_with_key(world, "dave@example.com")
    await join(world, dave_token, by=world.owner, email="dave@example.com", role="admin")
    await join(world, dave_token, by=world.owner, tenant="globex", email="dave@example.com", role="viewer")
    key["dave@acme"], _ = await issued_key(world, dave, tenant_id=acme)

    async def listed(token: str, **tenant: str) -> list[str]:
        items = (await world.ok("keys_list", token, limit=200, **tenant))["items"]
        names = {v: k for k, v in key.items()}
        return [names.get(item["id"], item["id"]) for item in items]

    def by_id(*names: str) -> list[str]:
        return sorted(names, key=lambda name: key[name])

    acme_keys = ("agent", "owner@acme", "bot", "bot unbound", "admin-bot", "ex-bot", "bob@acme", "dave@acme")
    # A developer: its own key, and the tenant's keys of developers, viewers, workers and non-members.
    assert await listed(world.agent) == by_id("agent", "bot", "bot unbound", "ex-bot", "bob@acme")
    # An owner: every key of its own, and every key of the tenant.
    assert await listed(world.owner, tenant="acme") == by_id("owner", "owner@globex", *acme_keys)
    assert await listed(world.owner, tenant="globex") == by_id(
        "owner", "owner@acme", "owner@globex", "stranger True", "stranger False", "bot@globex"
    )
    # Its key bound to acme reaches none of the owner's keys bound elsewhere or unbound.
    assert await listed(owner_acme["token"]) == by_id(*acme_keys)
    # Without keys:manage: one's own keys only, and from a bound key those bound to the same tenant.
    assert await listed(bob_token, tenant="acme") == by_id("bob", "bob@acme")
    assert await listed(bob_acme) == ["bob@acme"]
