"""Joining and leaving tenants: people join only by accepting an invitation, can always leave unless
they are the last owner, and a slug names a tenant only among those one belongs to."""

from __future__ import annotations

import pytest

from scalemule.core import tenants
from scalemule.db.engine import Connection
from scalemule.settings import Settings
from tests.conftest import StoreProbe, World
from tests.integration.people import join, member_with_key, run_while_blocked, user_with_key

pytestmark = pytest.mark.anyio


async def _member_ids(world: World, tenant: str = "acme") -> dict[str, str]:
    listed = await world.ok("members_list", world.owner, tenant=tenant)
    return {m["principal"]["id"]: "invited" if m["invitation"] else "member" for m in listed["items"]}


# --- hole 5: consent to join -----------------------------------------------------------------


async def test_adding_a_person_invites_them_and_they_join_only_by_accepting(world: World) -> None:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    invited = await world.ok("members_add", world.owner, email="bob@example.com", role="viewer")
    assert invited["principal"]["id"] == bob and invited["invitation"]["expires_at"]
    assert await world.code("tenants_get", bob_key, tenant="acme") == "permission_denied"
    assert (await _member_ids(world))[bob] == "invited"
    pending = await world.ok("invitations_list", bob_key)
    (invitation,) = pending["items"]
    assert invitation["id"] == invited["invitation"]["id"] and invitation["tenant"]["slug"] == "acme"
    assert invitation["role"] == "viewer" and invitation["invited_by"] == "alice@example.com"
    answer = await world.ok("invitations_respond", bob_key, invitation_id=invitation["id"], accept=True)
    assert answer["accepted"] is True
    assert (await world.ok("tenants_get", bob_key, tenant="acme"))["role"] == "viewer"
    assert (await _member_ids(world))[bob] == "member"
    assert (await world.ok("invitations_list", bob_key))["items"] == []


async def test_a_declined_invitation_adds_nobody_and_is_gone(world: World) -> None:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    invited = await world.ok("members_add", world.owner, principal_id=bob, role="viewer")
    await world.ok("invitations_respond", bob_key, invitation_id=invited["invitation"]["id"], accept=False)
    assert bob not in await _member_ids(world)
    again = {"invitation_id": invited["invitation"]["id"], "accept": True}
    assert await world.code("invitations_respond", bob_key, **again) == "not_found"


async def test_another_persons_invitation_is_not_found_like_an_unknown_one(world: World) -> None:
    _, bob_key = await user_with_key(world, "bob@example.com")
    await user_with_key(world, "carol@example.com")
    for_carol = await world.ok("members_add", world.owner, email="carol@example.com", role="admin")
    theirs = await world.call("invitations_respond", bob_key, invitation_id=for_carol["invitation"]["id"], accept=True)
    unknown = await world.call("invitations_respond", bob_key, invitation_id="inv_nope", accept=True)
    assert theirs.error is not None and unknown.error is not None
    assert theirs.error.code == unknown.error.code == "not_found"
    assert theirs.error.message.replace(for_carol["invitation"]["id"], "X") == unknown.error.message.replace(
        "inv_nope", "X"
    )


async def test_inviting_someone_twice_while_pending_already_exists_and_members_remove_cancels(world: World) -> None:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    invited = await world.ok("members_add", world.owner, email="bob@example.com", role="viewer")
    assert await world.code("members_add", world.owner, email="bob@example.com", role="admin") == "already_exists"
    cancelled = await world.ok("members_remove", world.owner, principal_id=bob)
    assert cancelled["invitation"]["id"] == invited["invitation"]["id"]
    assert bob not in await _member_ids(world)
    answer = {"invitation_id": invited["invitation"]["id"], "accept": True}
    assert await world.code("invitations_respond", bob_key, **answer) == "not_found"


async def test_accepting_needs_the_inviter_to_still_be_able_to_grant_the_role(world: World) -> None:
    dave, admin = await member_with_key(world, "dave@example.com", "admin")
    _, bob_key = await user_with_key(world, "bob@example.com")
    invited = await world.ok("members_add", admin, email="bob@example.com", role="admin")
    await world.ok("members_set_role", world.owner, principal_id=dave, role="viewer")
    answer = {"invitation_id": invited["invitation"]["id"], "accept": True}
    assert await world.code("invitations_respond", bob_key, **answer) == "failed_precondition"


async def test_a_tenant_bound_key_can_neither_create_tenants_nor_answer_invitations(
    world: World, probe: StoreProbe
) -> None:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    await world.ok("tenants_create", bob_key, slug="bobco", name="Bob Co")
    bound = await world.ok("keys_create", bob_key, name="bobco only")
    invited = await world.ok("members_add", world.owner, principal_id=bob, role="viewer")
    before = await probe.rows()
    answer = {"invitation_id": invited["invitation"]["id"], "accept": True}
    assert await world.code("invitations_respond", bound["token"], **answer) == "permission_denied"
    assert await world.code("invitations_list", bound["token"]) == "permission_denied"
    assert await world.code("tenants_create", bound["token"], slug="escape", name="Escape") == "permission_denied"
    assert await probe.rows() == before
    # What the key holds says so: the kind's permissions act outside any tenant.
    held = await world.ok("whoami", bound["token"])
    assert not {"tenants:create", "tenants:join"} & set(held["permissions"])
    personal = await world.ok("whoami", bob_key, tenant="bobco")
    assert {"tenants:create", "tenants:join"} <= set(personal["permissions"])


async def test_invitations_list_pages_through_every_pending_invitation(world: World) -> None:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    for slug in ("one", "two", "three"):
        await world.ok("tenants_create", world.owner, slug=slug, name=slug)
        await world.ok("members_add", world.owner, tenant=slug, principal_id=bob, role="viewer")
    first = await world.ok("invitations_list", bob_key, limit=2)
    rest = await world.ok("invitations_list", bob_key, limit=2, cursor=first["next_cursor"])
    slugs = [i["tenant"]["slug"] for i in first["items"] + rest["items"]]
    assert sorted(slugs) == ["one", "three", "two"] and rest["next_cursor"] is None


async def test_an_agent_of_the_tenant_is_added_back_directly(world: World) -> None:
    bot = await world.ok("agents_create", world.owner, name="bot", role="viewer")
    bot_id = bot["principal"]["id"]
    await world.ok("members_remove", world.owner, principal_id=bot_id)
    added = await world.ok("members_add", world.owner, principal_id=bot_id, role="worker")
    assert added["invitation"] is None and added["role"] == "worker"


async def test_a_member_leaves_a_tenant_and_its_keys_stop_working_there(world: World) -> None:
    _, bob_key = await member_with_key(world, "bob@example.com", "developer")
    left = await world.ok("members_leave", bob_key, tenant="acme")
    assert left["role"] == "developer"
    assert await world.code("tenants_get", bob_key, tenant="acme") == "permission_denied"


async def test_the_last_owner_cannot_leave(world: World, probe: StoreProbe) -> None:
    before = await probe.rows()
    assert await world.code("members_leave", world.owner, tenant="acme") == "failed_precondition"
    assert await probe.rows() == before
    _, carol = await member_with_key(world, "carol@example.com", "owner")
    await world.ok("members_leave", world.owner, tenant="acme")
    assert (await world.ok("tenants_get", carol, tenant="acme"))["role"] == "owner"


# --- hole 5: slugs name tenants among one's own ------------------------------------------------


async def test_tenants_create_does_not_reveal_slugs_other_people_use(world: World) -> None:
    _, bob_key = await user_with_key(world, "bob@example.com")
    made = await world.ok("tenants_create", bob_key, slug="acme", name="Bob's Acme")
    assert made["tenant"]["id"] != world.made.tenant.id
    assert (await world.ok("tenants_get", bob_key, tenant="acme"))["tenant"]["id"] == made["tenant"]["id"]
    assert (await world.ok("tenants_get", world.owner, tenant="acme"))["tenant"]["id"] == world.made.tenant.id


async def test_a_slug_you_already_have_already_exists(world: World) -> None:
    assert await world.code("tenants_create", world.owner, slug="acme", name="Again") == "already_exists"


async def test_accepting_an_invitation_to_a_slug_you_already_have_is_a_conflict(world: World) -> None:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    await world.ok("tenants_create", bob_key, slug="acme", name="Bob's Acme")
    invited = await world.ok("members_add", world.owner, principal_id=bob, role="viewer")
    outcome = await world.call("invitations_respond", bob_key, invitation_id=invited["invitation"]["id"], accept=True)
    assert outcome.error is not None and outcome.error.code == "conflict"
    assert outcome.error.hint is not None and "members_leave" in outcome.error.hint
    assert [i["id"] for i in (await world.ok("invitations_list", bob_key))["items"]] == [invited["invitation"]["id"]]


# --- hole 7: the last owner, under concurrency ---------------------------------------------------


async def test_of_two_owners_stepping_down_one_after_the_other_the_second_is_refused(world: World) -> None:
    carol, carol_key = await member_with_key(world, "carol@example.com", "owner")
    await world.ok("members_set_role", world.owner, principal_id=world.made.owner.id, role="admin")
    code = await world.code("members_set_role", carol_key, principal_id=carol, role="admin")
    assert code == "failed_precondition"


async def test_two_owners_demoting_themselves_at_once_leave_the_tenant_one_owner(world: World, store: Settings) -> None:
    if store.database_url is None:
        pytest.skip("SQLite runs one unit of work at a time (its writer lock): the sequential test covers it")
    carol, carol_key = await member_with_key(world, "carol@example.com", "owner")
    tenant_id = world.made.tenant.id

    async def alice_steps_down(conn: Connection) -> None:
        await tenants.set_role(conn, tenant_id=tenant_id, principal_id=world.made.owner.id, role="admin")

    async def carol_steps_down() -> str:
        return await world.code("members_set_role", carol_key, principal_id=carol, role="admin")

    assert (
        await run_while_blocked(world.dispatcher.runtime, alice_steps_down, carol_steps_down) == "failed_precondition"
    )
    roles = {m["principal"]["id"]: m["role"] for m in (await world.ok("members_list", carol_key))["items"]}
    assert [p for p, role in roles.items() if role == "owner"] == [carol]


async def test_two_owners_leaving_at_once_leave_the_tenant_one_owner(world: World, store: Settings) -> None:
    if store.database_url is None:
        pytest.skip("SQLite runs one unit of work at a time (its writer lock): test_the_last_owner_cannot_leave")
    _, carol_key = await member_with_key(world, "carol@example.com", "owner")
    tenant_id = world.made.tenant.id

    async def alice_leaves(conn: Connection) -> None:
        await tenants.remove_member(conn, tenant_id=tenant_id, principal_id=world.made.owner.id, leaving=True)

    async def carol_leaves() -> str:
        return await world.code("members_leave", carol_key, tenant="acme")

    assert await run_while_blocked(world.dispatcher.runtime, alice_leaves, carol_leaves) == "failed_precondition"
    assert (await world.ok("tenants_get", carol_key, tenant="acme"))["role"] == "owner"


# --- tenants_list filters in the query ---------------------------------------------------------


async def test_a_tenant_bound_key_finds_its_tenant_on_the_first_page(world: World) -> None:
    for slug in ("aaa", "abc"):
        await world.ok("tenants_create", world.owner, slug=slug, name=slug)
    bound = await world.ok("keys_create", world.owner, tenant="acme", name="acme only")
    page = await world.ok("tenants_list", bound["token"], limit=1)
    assert [i["tenant"]["slug"] for i in page["items"]] == ["acme"] and page["next_cursor"] is None


async def test_the_join_shows_in_the_tenants_audit_log(world: World, probe: StoreProbe) -> None:
    _, bob_key = await user_with_key(world, "bob@example.com")
    await join(world, bob_key, by=world.owner, email="bob@example.com", role="viewer")
    events = [e for e in await probe.audit_events() if e["operation"] == "invitations_respond"]
    assert [(e["tenant_id"], e["outcome"]) for e in events] == [(world.made.tenant.id, "ok")]
