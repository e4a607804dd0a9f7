"""access_check reports exactly the decision a call gets: every operation, role and key shape.

For each role and each shape of key (bound, unbound, scoped, expired, revoked, revoked through the key
that minted it), a fresh agent asks access_check about every permission, then calls every operation in
the registry. Dispatch authorizes before it validates, so a call with no arguments but the tenant is
refused if and only if the permission is lacking. Environment rules are checked the same way, with
writes that are valid but for the rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from scalemule.core.access import AUTHENTICATED, PERMISSIONS, ROLES
from scalemule.core.ids import utcnow
from scalemule.db.tables import api_keys
from scalemule.operations import REGISTRY, Operation
from tests.conftest import World

pytestmark = pytest.mark.anyio

REFUSED = {"permission_denied", "unauthenticated"}
SHAPES = ("bound", "unbound", "scoped", "expired", "revoked", "parent_revoked")


def _order(op: Operation) -> tuple[bool, bool, str]:
    # Reads first, then writes; leaving the tenant ends the caller's membership, so it runs last.
    return (op.name == "members_leave", not op.read_only, op.name)


OPERATIONS = sorted(REGISTRY.values(), key=_order)


async def _key(world: World, agent_id: str, role: str, shape: str) -> str:
    """A key of the agent ``agent_id`` (holding ``role`` in acme) in the given shape."""
    owner = world.owner
    make: Callable[..., Awaitable[dict[str, object]]] = world.ok
    if shape == "parent_revoked":
        parent = await make("keys_create", owner, tenant="acme", name="parent")
        child = await make("keys_create", str(parent["token"]), name=f"child-{role}", principal_id=agent_id)
        parent_key = parent["key"]
        assert isinstance(parent_key, dict)
        await make("keys_revoke", owner, tenant="acme", key_id=parent_key["id"])
        return str(child["token"])
    options: dict[str, object] = {"bind_tenant": shape != "unbound"}
    if shape == "scoped":
        options["scopes"] = sorted(ROLES[role])[::2]
    made = await make("keys_create", owner, tenant="acme", name=f"{shape}-{role}", principal_id=agent_id, **options)
    made_key = made["key"]
    assert isinstance(made_key, dict)
    if shape == "revoked":
        await make("keys_revoke", owner, tenant="acme", key_id=made_key["id"])
    if shape == "expired":
        async with world.dispatcher.runtime.db.transaction() as conn:
            past = utcnow() - timedelta(seconds=1)
            await conn.execute(api_keys.update().where(api_keys.c.id == made_key["id"]).values(expires_at=past))
    return str(made["token"])


async def _granted(world: World, token: str) -> set[str] | None:
    """What access_check says the key holds in acme; None when it refuses the key itself."""
    check = await world.call("access_check", token, tenant="acme", permissions=sorted(PERMISSIONS))
    if check.error is not None:
        assert check.error.code == "unauthenticated", check.error
        return None
    assert check.result is not None
    return set(check.result["granted"])


@pytest.mark.parametrize("role", sorted(ROLES))
async def test_access_check_reports_the_decision_every_operation_gets(world: World, role: str) -> None:
    for shape in SHAPES:
        agent = await world.ok("agents_create", world.owner, tenant="acme", name=f"{role}-{shape}", role=role)
        token = await _key(world, agent["principal"]["id"], role, shape)
        granted = await _granted(world, token)
        for op in OPERATIONS:
            arguments = {"tenant": "acme"} if op.tenant_scoped else {}
            outcome = await world.call(op.name, token, **arguments)
            refused = outcome.error is not None and outcome.error.code in REFUSED
            expected = granted is None or (op.permission != AUTHENTICATED and op.permission not in granted)
            assert refused == expected, (role, shape, op.name, granted, outcome.error)


WRITES_INTO_PROD = (
    ("config:write", "config_set", {"env": "prod", "key": "decided", "value": 1}),
    ("secrets:write", "secrets_set", {"env": "prod", "name": "DECIDED", "value": "v"}),
    ("config:write", "envs_create", {"protected": True}),
)


@pytest.mark.parametrize("role", sorted(ROLES))
async def test_access_check_with_an_environment_reports_the_decision_writes_into_it_get(
    world: World, role: str
) -> None:
    for shape in ("bound", "unbound", "scoped"):
        agent = await world.ok("agents_create", world.owner, tenant="acme", name=f"{role}-{shape}", role=role)
        token = await _key(world, agent["principal"]["id"], role, shape)
        asked = sorted({permission for permission, _, _ in WRITES_INTO_PROD})
        check = await world.ok("access_check", token, tenant="acme", permissions=asked, env="prod")
        for permission, name, arguments in WRITES_INTO_PROD:
            if name == "envs_create":
                arguments = {**arguments, "name": f"guarded-{shape}"}
            outcome = await world.call(name, token, tenant="acme", **arguments)
            refused = outcome.error is not None and outcome.error.code in REFUSED
            assert refused == (permission in check["missing"]), (role, shape, name, check, outcome.error)


async def test_access_check_reports_the_decision_every_operation_gets_for_a_granted_key(world: World) -> None:
    agent = await world.ok("agents_create", world.owner, tenant="acme", name="granted", role="worker")
    token = await _key(world, agent["principal"]["id"], "worker", "bound")
    key_id = (await world.ok("whoami", token))["key"]["id"]
    await world.ok(
        "grants_create", world.owner, tenant="acme", principal_id=agent["principal"]["id"], key_id=key_id,
        pattern="prod/IMAGE_*",
    )  # fmt: skip
    check = await world.ok("access_check", token, tenant="acme", permissions=sorted(PERMISSIONS))
    by_grant = {g["permission"] for g in check["grants"]}
    assert by_grant == {"secrets:reveal"} and "secrets:reveal" in check["missing"]
    for op in OPERATIONS:
        outcome = await world.call(op.name, token, **({"tenant": "acme"} if op.tenant_scoped else {}))
        refused = outcome.error is not None and outcome.error.code in REFUSED
        # A permission held only through a grant reaches the handler, which decides per target (below).
        expected = op.permission != AUTHENTICATED and op.permission not in check["granted"] + sorted(by_grant)
        assert refused == expected, (op.name, check, outcome.error)


@pytest.mark.parametrize("target", [("prod", "IMAGE_API_KEY"), ("prod", "IMAGE_2"), ("prod", "DB"), ("dev", "IMAGE_2")])
async def test_access_check_with_a_secret_name_reports_the_decision_a_granted_reveal_gets(
    world: World, target: tuple[str, str]
) -> None:
    env, name = target
    await world.ok("secrets_set", world.owner, tenant="acme", env=env, name=name, value="v")
    agent = await world.ok("agents_create", world.owner, tenant="acme", name="granted", role="worker")
    token = await _key(world, agent["principal"]["id"], "worker", "scoped")
    await world.ok(
        "grants_create", world.owner, tenant="acme", principal_id=agent["principal"]["id"], pattern="prod/IMAGE_*"
    )
    check = await world.ok("access_check", token, tenant="acme", permissions=["secrets:reveal"], env=env, name=name)
    outcome = await world.call("secrets_reveal", token, tenant="acme", env=env, name=name)
    assert check["allowed"] == (outcome.error is None), (target, check, outcome.error)
    assert check["allowed"] == (env == "prod" and name.startswith("IMAGE_"))
