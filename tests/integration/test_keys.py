"""API keys through the dispatch path: tenant binding, exact expiry, last use, and who lists which keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from scalemule.core import identity, ids
from scalemule.core.access import ROLES, Principal
from scalemule.core.errors import Unauthenticated
from tests.conftest import World
from tests.integration.people import issued_key, join, user_with_key

pytestmark = pytest.mark.anyio

T0 = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@dataclass
class FrozenClock:
    """The time every ``utcnow`` reads while a test runs; the test moves it."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    frozen = FrozenClock(T0)
    monkeypatch.setattr(ids, "clock", frozen)
    return frozen


async def _user_in_three_tenants(world: World) -> tuple[str, dict[str, str]]:
    """bob: viewer of 'acme', developer of 'globex', admin of 'zeta'. Returns his id and tenant ids by slug."""
    ids_by_slug = {"acme": world.made.tenant.id}
    for slug in ("globex", "zeta"):
        made = await world.ok("tenants_create", world.owner, slug=slug, name=slug.title())
        ids_by_slug[slug] = made["tenant"]["id"]
    bob, bob_key = await user_with_key(world, "bob@example.com")
    for slug, role in (("acme", "viewer"), ("globex", "developer"), ("zeta", "admin")):
        await join(world, bob_key, by=world.owner, tenant=slug, email="bob@example.com", role=role)
    return bob, ids_by_slug


# --- tenant binding -------------------------------------------------------------------------------


async def test_a_bound_key_of_a_member_of_several_tenants_takes_tenant_and_role_from_its_binding(
    world: World,
) -> None:
    bob, tenant_ids = await _user_in_three_tenants(world)
    for slug, role in (("globex", "developer"), ("acme", "viewer"), ("zeta", "admin")):
        _, token = await issued_key(world, bob, tenant_id=tenant_ids[slug])
        me = await world.ok("whoami", token)
        assert (me["tenant"]["slug"], me["tenant"]["id"], me["role"]) == (slug, tenant_ids[slug], role)
        # A bound key holds its role there and nothing of its principal's kind.
        assert set(me["permissions"]) == ROLES[role]
        assert me["key"]["tenant_id"] == tenant_ids[slug]
        assert (await world.ok("tenants_get", token))["tenant"]["slug"] == slug


async def test_a_bound_key_is_refused_once_its_principal_leaves_the_bound_tenant_though_it_stays_in_others(
    world: World,
) -> None:
    bob, tenant_ids = await _user_in_three_tenants(world)
    _, bound = await issued_key(world, bob, tenant_id=tenant_ids["globex"])
    _, unbound = await issued_key(world, bob, tenant_id=None)
    await world.ok("members_remove", world.owner, tenant="globex", principal_id=bob)
    assert await world.code("whoami", bound) == "permission_denied"
    assert await world.code("tenants_get", bound) == "permission_denied"
    for slug in ("acme", "zeta", "globex"):
        assert await world.code("tenants_get", bound, tenant=slug) == "permission_denied", slug
    # Still a member elsewhere: his unbound key works there.
    assert (await world.ok("tenants_get", unbound, tenant="zeta"))["role"] == "admin"


# --- expiry and last use (injected clock) ---------------------------------------------------------


@pytest.mark.parametrize("days", [1, 30, 3650])
async def test_a_key_made_for_n_days_expires_exactly_n_days_later(world: World, clock: FrozenClock, days: int) -> None:
    made = await world.ok("keys_create", world.agent, name="temp", expires_in_days=days)
    expires_at = T0 + timedelta(days=days)
    assert datetime.fromisoformat(made["key"]["expires_at"]) == expires_at
    clock.now = expires_at - timedelta(microseconds=1)
    me = await world.ok("whoami", made["token"])
    assert datetime.fromisoformat(me["key"]["expires_at"]) == expires_at
    clock.now = expires_at
    assert await world.code("whoami", made["token"]) == "unauthenticated"
    clock.now = expires_at + timedelta(days=1)
    assert await world.code("whoami", made["token"]) == "unauthenticated"


async def test_a_key_made_without_expiry_never_expires(world: World, clock: FrozenClock) -> None:
    made = await world.ok("keys_create", world.agent, name="forever")
    assert made["key"]["expires_at"] is None
    clock.now = T0 + timedelta(days=365 * 50)
    assert (await world.ok("whoami", made["token"]))["key"]["expires_at"] is None


@pytest.mark.parametrize("days", [0, -1, 3651])
async def test_an_expiry_outside_one_to_3650_days_is_an_invalid_argument(world: World, days: int) -> None:
    assert await world.code("keys_create", world.agent, name="k", expires_in_days=days) == "invalid_argument"


async def _last_used(world: World, key_id: str) -> datetime | None:
    listed = await world.ok("keys_list", world.owner, limit=200)
    (item,) = [i for i in listed["items"] if i["id"] == key_id]
    return None if item["last_used_at"] is None else datetime.fromisoformat(item["last_used_at"])


async def test_last_used_at_is_refreshed_once_its_resolution_has_passed(world: World, clock: FrozenClock) -> None:
    made = await world.ok("keys_create", world.agent, name="used")
    key_id = made["key"]["id"]
    assert await _last_used(world, key_id) is None
    await world.ok("whoami", made["token"])
    assert await _last_used(world, key_id) == T0
    clock.now = T0 + identity.LAST_USED_RESOLUTION - timedelta(microseconds=1)
    await world.ok("whoami", made["token"])
    assert await _last_used(world, key_id) == T0
    clock.now = T0 + identity.LAST_USED_RESOLUTION
    await world.ok("whoami", made["token"])
    assert await _last_used(world, key_id) == clock.now


def test_last_used_at_is_documented_to_within_a_minute() -> None:
    assert timedelta(minutes=1) == identity.LAST_USED_RESOLUTION


async def test_a_revoked_key_records_when_and_keeps_the_first_revocation_time(world: World, clock: FrozenClock) -> None:
    made = await world.ok("keys_create", world.agent, name="temp")
    await world.ok("whoami", made["token"])
    clock.now = T0 + timedelta(hours=1)
    revoked = (await world.ok("keys_revoke", world.agent, key_id=made["key"]["id"]))["key"]
    assert datetime.fromisoformat(revoked["revoked_at"]) == clock.now
    assert datetime.fromisoformat(revoked["last_used_at"]) == T0
    clock.now = T0 + timedelta(hours=2)
    again = (await world.ok("keys_revoke", world.agent, key_id=made["key"]["id"]))["key"]
    assert (again["revoked_at"], again["last_used_at"]) == (revoked["revoked_at"], revoked["last_used_at"])
    listed = await world.ok("keys_list", world.agent, principal_id=world.made.agent.id)
    (item,) = [i for i in listed["items"] if i["id"] == made["key"]["id"]]
    assert (item["revoked_at"], item["last_used_at"]) == (revoked["revoked_at"], revoked["last_used_at"])
    assert await world.code("whoami", made["token"]) == "unauthenticated"


async def test_work_run_later_with_a_key_reads_its_rights_again_and_is_refused_once_it_lapses(
    world: World, clock: FrozenClock
) -> None:
    made = await world.ok("keys_create", world.agent, name="task", expires_in_days=1)
    key_id, expires_at = made["key"]["id"], T0 + timedelta(days=1)
    revoked = await world.ok("keys_create", world.agent, name="gone")
    await world.ok("keys_revoke", world.agent, key_id=revoked["key"]["id"])
    clock.now = expires_at - timedelta(microseconds=1)
    async with world.dispatcher.runtime.db.transaction() as conn:
        got = await identity.authenticate_key(conn, key_id)
    assert got.principal == world.made.agent
    assert (got.key.id, got.key.principal_id, got.key.tenant_id) == (key_id, world.made.agent.id, world.made.tenant.id)
    assert got.key.expires_at == expires_at and got.key.scopes == frozenset(made["key"]["scopes"])
    assert got.bound == (world.made.tenant, "developer")
    # Not a use of the key: last_used_at tells of calls made with the token only.
    assert await _last_used(world, key_id) is None
    clock.now = expires_at
    for lapsed in (key_id, revoked["key"]["id"], "key_nope"):
        with pytest.raises(Unauthenticated):
            async with world.dispatcher.runtime.db.transaction() as conn:
                await identity.authenticate_key(conn, lapsed)


# --- listing ---------------------------------------------------------------------------------------


async def test_keys_list_for_a_principal_returns_that_principals_keys_only(world: World) -> None:
    made: dict[str, set[str]] = {}
    for name, count in (("bot-a", 2), ("bot-b", 1)):
        agent = await world.ok("agents_create", world.owner, name=name, role="viewer")
        agent_id = agent["principal"]["id"]
        made[agent_id] = set()
        for i in range(count):
            key = await world.ok("keys_create", world.owner, name=f"{name}-{i}", principal_id=agent_id)
            made[agent_id].add(key["key"]["id"])
    everything = (await world.ok("keys_list", world.owner))["items"]
    made[world.made.agent.id] = {i["id"] for i in everything if i["principal_id"] == world.made.agent.id}
    assert len(made[world.made.agent.id]) == 1
    for principal_id, key_ids in made.items():
        listed = await world.ok("keys_list", world.owner, principal_id=principal_id)
        assert {i["id"] for i in listed["items"]} == key_ids
        assert {i["principal_id"] for i in listed["items"]} == {principal_id}


async def test_keys_list_shows_unbound_keys_of_the_tenants_own_agents_and_nothing_of_other_tenants(
    world: World,
) -> None:
    bot = await world.ok("agents_create", world.owner, name="bot", role="viewer")
    unbound = await world.ok(
        "keys_create", world.owner, name="roaming", principal_id=bot["principal"]["id"], bind_tenant=False
    )
    assert unbound["key"]["tenant_id"] is None
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    stranger = await world.ok("agents_create", world.owner, tenant="globex", name="stranger", role="viewer")
    theirs = [
        await world.ok(
            "keys_create",
            world.owner,
            tenant="globex",
            name="s",
            principal_id=stranger["principal"]["id"],
            bind_tenant=bind,
        )
        for bind in (True, False)
    ]
    owner = world.made.owner.id  # the owner's own keys show in every tenant: leave them out

    async def managed(slug: str) -> set[str]:
        items = (await world.ok("keys_list", world.owner, tenant=slug))["items"]
        return {i["id"] for i in items if i["principal_id"] != owner}

    acme, globex = await managed("acme"), await managed("globex")
    assert unbound["key"]["id"] in acme and unbound["key"]["id"] not in globex
    assert {k["key"]["id"] for k in theirs} == globex
    assert not acme & globex
    for key in theirs:
        assert await world.code("keys_revoke", world.owner, tenant="acme", key_id=key["key"]["id"]) == "not_found"


async def test_a_principal_reads_back_as_it_was_created(world: World) -> None:
    bot = await world.ok("agents_create", world.agent, name="helper", role="viewer")
    async with world.dispatcher.runtime.db.transaction() as conn:
        found = await identity.get_principal(conn, bot["principal"]["id"])
        owner = await identity.find_user_by_email(conn, "alice@example.com")
        assert await identity.get_principal(conn, "agt_nope") is None
        assert await identity.find_user_by_email(conn, "nobody@example.com") is None
    assert found == Principal(
        id=bot["principal"]["id"],
        kind="agent",
        name="helper",
        tenant_id=world.made.tenant.id,
        on_behalf_of=world.made.owner.id,
    )
    assert owner == world.made.owner


async def test_one_principals_keys_page_in_id_order(world: World) -> None:
    bot = await world.ok("agents_create", world.owner, name="bot", role="viewer")
    bot_id = bot["principal"]["id"]
    made = [
        (await world.ok("keys_create", world.owner, name=f"k{i}", principal_id=bot_id))["key"]["id"] for i in range(6)
    ]
    paged: list[str] = []
    cursor = None
    for _ in range(10):
        page = await world.ok("keys_list", world.owner, principal_id=bot_id, limit=2, cursor=cursor)
        paged += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == sorted(made)


async def test_the_operator_lists_the_keys_bound_to_one_tenant_a_page_at_a_time(world: World) -> None:
    globex = (await world.ok("tenants_create", world.owner, slug="globex", name="Globex"))["tenant"]["id"]
    for i in range(3):
        await world.ok("keys_create", world.owner, tenant="globex", name=f"g{i}")
        await world.ok("keys_create", world.owner, tenant="acme", name=f"a{i}")
    async with world.dispatcher.runtime.db.transaction() as conn:
        everything = await identity.list_keys(conn, audience=None, principal_id=None, after_id=None, limit=1000)
        first = await identity.list_keys(
            conn, audience=None, principal_id=None, tenant_id=globex, after_id=None, limit=2
        )
        rest = await identity.list_keys(
            conn, audience=None, principal_id=None, tenant_id=globex, after_id=first[-1].info.id, limit=1000
        )
    bound = sorted(r.info.id for r in everything if r.info.tenant_id == globex)
    assert len(bound) == 3 and len(everything) == 8  # the two keys from init and the six above
    assert [r.info.id for r in first] == bound[:2] and [r.info.id for r in rest] == bound[2:]
