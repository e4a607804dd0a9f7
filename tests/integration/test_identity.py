"""Identity and tenants through the dispatch path: who you are, what you may grant, keys and their life."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from scalemule.core import identity, ids, tokens
from scalemule.core.access import ROLES
from scalemule.core.errors import AlreadyExists
from scalemule.core.ids import utcnow
from scalemule.db.tables import api_keys
from scalemule.operations.base import REDACTED, SHOWN_ONCE
from tests.conftest import StoreProbe, World
from tests.integration.people import member_with_key

pytestmark = pytest.mark.anyio


async def _key_rows(world: World) -> list[dict[str, object]]:
    async with world.dispatcher.runtime.db.transaction() as conn:
        return [dict(r._mapping) for r in await conn.execute(sa.select(api_keys))]


# --- whoami / access_check -------------------------------------------------------------------


async def test_whoami_shows_the_agent_its_tenant_role_permissions_key_and_human(world: World) -> None:
    me = await world.ok("whoami", world.agent)
    owner = await world.ok("whoami", world.owner)
    assert me["principal"]["kind"] == "agent" and me["principal"]["name"] == "acme-agent"
    assert me["on_behalf_of"] == owner["principal"]["id"]
    assert me["tenant"]["slug"] == "acme" and me["tenant"]["id"] == world.made.tenant.id
    assert me["role"] == "developer"
    assert me["permissions"] == sorted(ROLES["developer"])
    assert world.agent.startswith(me["key"]["prefix"]) and me["key"]["prefix"] != world.agent
    assert me["key"]["tenant_id"] == world.made.tenant.id and me["key"]["expires_at"] is None


async def test_whoami_shows_a_user_its_only_tenant_and_the_right_to_create_tenants(world: World) -> None:
    me = await world.ok("whoami", world.owner)
    assert me["principal"] == {"id": world.made.owner.id, "kind": "user", "name": "alice@example.com"}
    assert me["on_behalf_of"] is None
    assert me["tenant"]["slug"] == "acme" and me["role"] == "owner"
    assert set(me["permissions"]) == ROLES["owner"] | {"tenants:create", "tenants:join"}
    assert me["key"]["tenant_id"] is None


async def test_access_check_names_the_permissions_granted_and_missing(world: World) -> None:
    check = await world.ok("access_check", world.agent, permissions=["secrets:read", "secrets:reveal"])
    assert check == {
        "allowed": False,
        "granted": ["secrets:read"],
        "missing": ["secrets:reveal"],
        "lacking": ["secrets:reveal"],
        "role": "developer",
        "env_protected": None,
        "grants": [],
    }
    check = await world.ok("access_check", world.agent, permissions=["config:write"])
    assert check["allowed"] is True and check["missing"] == []


async def test_access_check_of_an_unknown_permission_is_an_invalid_argument(world: World) -> None:
    assert await world.code("access_check", world.agent, permissions=["secrets:steal"]) == "invalid_argument"


# --- tenants ---------------------------------------------------------------------------------


async def test_a_user_creates_a_tenant_and_becomes_its_owner(world: World) -> None:
    made = await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    assert made["role"] == "owner" and made["tenant"]["slug"] == "globex"
    got = await world.ok("tenants_get", world.owner, tenant="globex")
    assert got["tenant"]["id"] == made["tenant"]["id"] and got["role"] == "owner"


async def test_an_agent_cannot_create_a_tenant(world: World, probe: StoreProbe) -> None:
    before = await probe.rows()
    assert await world.code("tenants_create", world.agent, slug="rogue", name="Rogue") == "permission_denied"
    assert await probe.rows() == before


@pytest.mark.parametrize("slug", ["Acme", "-acme", "acme-", "a_b", "a" * 65, ""])
async def test_a_malformed_slug_is_an_invalid_argument(world: World, slug: str) -> None:
    assert await world.code("tenants_create", world.owner, slug=slug, name="x") == "invalid_argument"


async def test_tenants_list_pages_through_every_tenant_once_in_slug_order(world: World) -> None:
    for slug in ("delta", "bravo", "echo", "charlie"):
        await world.ok("tenants_create", world.owner, slug=slug, name=slug.title())
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        page = await world.ok("tenants_list", world.owner, limit=2, cursor=cursor)
        pages += 1
        assert len(page["items"]) <= 2
        assert all(item["role"] == "owner" for item in page["items"])
        seen += [item["tenant"]["slug"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == ["acme", "bravo", "charlie", "delta", "echo"]
    assert pages == 3


async def test_a_tenant_bound_key_lists_only_its_tenant(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    bound = await world.ok("keys_create", world.owner, tenant="acme", name="acme only")
    listed = await world.ok("tenants_list", bound["token"])
    assert [item["tenant"]["slug"] for item in listed["items"]] == ["acme"]


async def test_a_forged_tenants_list_cursor_is_an_invalid_argument(world: World) -> None:
    assert await world.code("tenants_list", world.owner, cursor="bm90LWEtY3Vyc29y") == "invalid_argument"


# --- members ---------------------------------------------------------------------------------


async def test_an_owner_adds_changes_and_removes_a_member(world: World) -> None:
    bob, _ = await member_with_key(world, "bob@example.com", "viewer")
    listed = await world.ok("members_list", world.owner)
    assert {m["principal"]["id"]: m["role"] for m in listed["items"]}[bob] == "viewer"
    changed = await world.ok("members_set_role", world.owner, principal_id=bob, role="developer")
    assert changed["role"] == "developer"
    await world.ok("members_remove", world.owner, principal_id=bob)
    listed = await world.ok("members_list", world.owner)
    assert bob not in {m["principal"]["id"] for m in listed["items"]}


async def test_adding_a_member_twice_already_exists(world: World) -> None:
    await world.ok("members_add", world.owner, email="bob@example.com", role="viewer")
    assert await world.code("members_add", world.owner, email="bob@example.com", role="admin") == "already_exists"


async def test_members_add_needs_exactly_one_of_email_or_principal_id(world: World) -> None:
    assert await world.code("members_add", world.owner, role="viewer") == "invalid_argument"
    both = {"email": "bob@example.com", "principal_id": world.made.agent.id, "role": "viewer"}
    assert await world.code("members_add", world.owner, **both) == "invalid_argument"


async def test_the_last_owner_can_be_neither_demoted_nor_removed(world: World, probe: StoreProbe) -> None:
    me = world.made.owner.id
    before = await probe.rows()
    assert await world.code("members_set_role", world.owner, principal_id=me, role="admin") == "failed_precondition"
    assert await world.code("members_remove", world.owner, principal_id=me) == "failed_precondition"
    assert await probe.rows() == before


async def test_an_owner_can_step_down_once_another_owner_exists(world: World) -> None:
    await member_with_key(world, "carol@example.com", "owner")
    demoted = await world.ok("members_set_role", world.owner, principal_id=world.made.owner.id, role="admin")
    assert demoted["role"] == "admin"


async def test_an_admin_cannot_grant_owner_nor_touch_an_owner(world: World, probe: StoreProbe) -> None:
    _, admin = await member_with_key(world, "dave@example.com", "admin")
    before = await probe.rows()
    assert await world.code("members_add", admin, email="eve@example.com", role="owner") == "permission_denied"
    owner_id = world.made.owner.id
    assert await world.code("members_set_role", admin, principal_id=owner_id, role="viewer") == "permission_denied"
    assert await world.code("members_remove", admin, principal_id=owner_id) == "permission_denied"
    assert await probe.rows() == before
    assert (await world.ok("members_add", admin, email="eve@example.com", role="admin"))["role"] == "admin"


async def test_an_admin_cannot_promote_a_member_to_owner(world: World) -> None:
    _, admin = await member_with_key(world, "dave@example.com", "admin")
    bob, _ = await member_with_key(world, "bob@example.com", "viewer")
    assert await world.code("members_set_role", admin, principal_id=bob, role="owner") == "permission_denied"


async def test_a_developer_cannot_grant_admin_or_owner_in_any_way(world: World, probe: StoreProbe) -> None:
    before = await probe.rows()
    for role in ("admin", "owner"):
        assert await world.code("members_add", world.agent, email="x@example.com", role=role) == "permission_denied"
        assert await world.code("agents_create", world.agent, name=f"sub-{role}", role=role) == "permission_denied"
        assert (
            await world.code("members_set_role", world.agent, principal_id=world.made.agent.id, role=role)
            == "permission_denied"
        )
    assert await probe.rows() == before


async def test_a_developer_cannot_issue_a_key_for_an_agent_holding_more_than_it(world: World) -> None:
    admin_agent = await world.ok("agents_create", world.owner, name="ops", role="admin")
    agent_id = admin_agent["principal"]["id"]
    assert await world.code("keys_create", world.agent, name="k", principal_id=agent_id) == "permission_denied"


async def test_a_removed_members_bound_key_no_longer_works_in_its_tenant(world: World) -> None:
    await world.ok("members_remove", world.owner, principal_id=world.made.agent.id)
    assert await world.code("whoami", world.agent, tenant="acme") == "permission_denied"
    assert await world.code("members_list", world.agent) == "permission_denied"


# --- agents ----------------------------------------------------------------------------------


async def test_an_agent_created_by_a_user_acts_on_that_users_behalf(world: World, probe: StoreProbe) -> None:
    created = await world.ok("agents_create", world.owner, name="menu-worker", role="worker")
    assert created["on_behalf_of"] == world.made.owner.id and created["role"] == "worker"
    key = await world.ok("keys_create", world.owner, name="w", principal_id=created["principal"]["id"])
    me = await world.ok("whoami", key["token"])
    assert me["on_behalf_of"] == world.made.owner.id and me["role"] == "worker"
    outcome = await world.call("whoami", key["token"])
    assert (await probe.event(outcome.event_id))["on_behalf_of"] == world.made.owner.id


async def test_an_agent_created_by_an_agent_acts_on_behalf_of_the_same_human(world: World) -> None:
    created = await world.ok("agents_create", world.agent, name="helper", role="viewer", kind="service")
    assert created["principal"]["kind"] == "service"
    assert created["on_behalf_of"] == world.made.owner.id


async def test_an_agent_name_is_unique_within_its_tenant(world: World) -> None:
    await world.ok("agents_create", world.owner, name="helper", role="viewer")
    assert await world.code("agents_create", world.owner, name="helper", role="viewer") == "already_exists"


# --- principals ------------------------------------------------------------------------------


async def test_an_id_says_what_it_names(world: World) -> None:
    made = await world.ok("keys_create", world.agent, name="k")
    tenant_id = world.made.tenant.id
    owners = {"user": (None, "bob@example.com"), "agent": (tenant_id, None), "service": (tenant_id, None)}
    async with world.dispatcher.runtime.db.transaction() as conn:
        prefixes = {}
        for kind in ("user", "agent", "service", "operator"):
            owner, email = owners.get(kind, (None, None))
            made_principal = await identity.create_principal(
                conn, kind=kind, name=f"a {kind}", email=email, tenant_id=owner
            )
            prefixes[kind] = made_principal.id.split("_")[0]
    assert prefixes == {"user": "usr", "agent": "agt", "service": "svc", "operator": "opr"}
    assert made["key"]["id"].startswith("key_") and world.made.tenant.id.startswith("ten_")


async def test_a_second_user_with_a_taken_email_already_exists(world: World, probe: StoreProbe) -> None:
    before = await probe.rows()
    with pytest.raises(AlreadyExists):
        async with world.dispatcher.runtime.db.transaction() as conn:
            await identity.create_principal(conn, kind="user", name="alice 2", email="alice@example.com")
    assert await probe.rows() == before


# --- keys ------------------------------------------------------------------------------------


async def test_scopes_narrow_what_a_key_may_do(world: World) -> None:
    key = await world.ok("keys_create", world.agent, name="read config", scopes=["config:read"])
    assert key["key"]["scopes"] == ["config:read"]
    me = await world.ok("whoami", key["token"])
    assert me["permissions"] == ["config:read"]
    assert await world.code("members_list", key["token"]) == "permission_denied"


async def test_a_scope_beyond_the_principals_permissions_is_denied(world: World, probe: StoreProbe) -> None:
    before = await probe.rows()
    code = await world.code("keys_create", world.agent, name="wider", scopes=["config:read", "secrets:reveal"])
    assert code == "permission_denied"
    helper = await world.ok("agents_create", world.agent, name="viewer-bot", role="viewer")
    before = await probe.rows()
    code = await world.code(
        "keys_create", world.agent, name="k", principal_id=helper["principal"]["id"], scopes=["config:write"]
    )
    assert code == "permission_denied"
    assert await probe.rows() == before


async def test_an_unknown_scope_is_an_invalid_argument(world: World) -> None:
    assert await world.code("keys_create", world.agent, name="k", scopes=["config:rule"]) == "invalid_argument"


async def test_a_key_for_a_principal_outside_the_tenant_is_not_found(world: World) -> None:
    other = await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    stranger = await world.ok("agents_create", world.owner, tenant="globex", name="stranger", role="viewer")
    assert other["role"] == "owner"
    code = await world.code(
        "keys_create", world.owner, tenant="acme", name="k", principal_id=stranger["principal"]["id"]
    )
    assert code == "not_found"


async def test_a_token_is_shown_once_and_stored_only_as_its_sha256(world: World, probe: StoreProbe) -> None:
    made = await world.ok("keys_create", world.agent, name="ci")
    token = made["token"]
    assert tokens.is_well_formed(token)
    rows = await _key_rows(world)
    (row,) = [r for r in rows if r["id"] == made["key"]["id"]]
    assert row["token_sha256"] == hashlib.sha256(token.encode()).digest()
    body = token[len(tokens.PREFIX) :]
    stored = repr(await probe.rows()) + repr(await probe.audit_events())
    assert token not in stored and body not in stored
    listed = await world.ok("keys_list", world.agent)
    assert token not in repr(listed) and all("token" not in item for item in listed["items"])


async def test_keys_list_shows_metadata_of_every_key_and_pages(world: World) -> None:
    for i in range(3):
        await world.ok("keys_create", world.owner, name=f"k{i}")
    ids: list[str] = []
    cursor = None
    for _ in range(10):
        page = await world.ok("keys_list", world.owner, limit=2, cursor=cursor)
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # The owner's own key from init and the three above, and the agent's key from init (the owner
    # could grant the agent's role).
    assert len(ids) == len(set(ids)) == 5
    assert ids == sorted(ids)


async def test_a_revoked_key_is_unauthenticated_on_its_next_call(world: World) -> None:
    made = await world.ok("keys_create", world.agent, name="temp")
    await world.ok("whoami", made["token"])
    revoked = await world.ok("keys_revoke", world.agent, key_id=made["key"]["id"])
    assert revoked["key"]["revoked_at"] is not None and revoked["revoked_keys"] == 1
    assert await world.code("whoami", made["token"]) == "unauthenticated"
    again = await world.ok("keys_revoke", world.agent, key_id=made["key"]["id"])
    assert again["key"]["revoked_at"] == revoked["key"]["revoked_at"] and again["revoked_keys"] == 0


async def test_revoking_an_unknown_key_is_not_found(world: World) -> None:
    assert await world.code("keys_revoke", world.agent, key_id="key_nope") == "not_found"


async def test_an_expired_key_is_unauthenticated(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    made_at = utcnow()
    monkeypatch.setattr(ids, "clock", lambda: made_at)
    made = await world.ok("keys_create", world.agent, name="soon", expires_in_days=1)
    assert datetime.fromisoformat(made["key"]["expires_at"]) == made_at + timedelta(days=1)
    await world.ok("whoami", made["token"])
    monkeypatch.setattr(ids, "clock", lambda: made_at + timedelta(days=1))
    assert await world.code("whoami", made["token"]) == "unauthenticated"


async def test_a_mistyped_malformed_or_unknown_key_is_unauthenticated(world: World) -> None:
    token = world.agent
    typo = token[:10] + ("a" if token[10] != "a" else "b") + token[11:]
    for bad in (typo, token[:-1], token + "x", "smk_" + "x" * 38, tokens.generate(), "Bearer " + token, " "):
        assert await world.code("whoami", bad) == "unauthenticated", bad


async def test_a_key_stops_working_for_its_principal_but_not_for_others(world: World) -> None:
    made = await world.ok("keys_create", world.agent, name="temp")
    await world.ok("keys_revoke", world.owner, key_id=made["key"]["id"])
    assert await world.code("whoami", made["token"]) == "unauthenticated"
    await world.ok("whoami", world.agent)


# --- idempotency -----------------------------------------------------------------------------


async def test_a_replay_says_it_is_one_and_that_the_token_was_shown_once(world: World, probe: StoreProbe) -> None:
    first = await world.ok("keys_create", world.agent, name="deploy", idempotency_key="req-1")
    count = len(await _key_rows(world))
    replay = await world.ok("keys_create", world.agent, name="deploy", idempotency_key="req-1")
    assert replay["key"] == first["key"]
    assert replay["replayed"] is True and "replayed" not in first
    assert replay["token"] == SHOWN_ONCE and first["token"] not in (SHOWN_ONCE, REDACTED)
    assert len(await _key_rows(world)) == count
    assert first["token"] not in repr(await probe.rows())


async def test_reused_idempotency_key_with_other_args_is_a_conflict(world: World, probe: StoreProbe) -> None:
    await world.ok("keys_create", world.agent, name="deploy", idempotency_key="req-1")
    before = await probe.rows()
    assert await world.code("keys_create", world.agent, name="other", idempotency_key="req-1") == "conflict"
    assert await probe.rows() == before


async def test_an_idempotent_tenant_creation_replays_instead_of_colliding(world: World) -> None:
    first = await world.ok("tenants_create", world.owner, slug="globex", name="Globex", idempotency_key="t-1")
    replay = await world.ok("tenants_create", world.owner, slug="globex", name="Globex", idempotency_key="t-1")
    assert replay == {**first, "replayed": True}
    assert (
        await world.code("tenants_create", world.owner, slug="initech", name="Initech", idempotency_key="t-1")
        == "conflict"
    )
