"""Grants: one permission on named secrets for a principal or one of its keys, through MCP and dispatch."""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from scalemule.dispatch import Dispatcher, Exposure
from scalemule.surfaces.mcp import build_server
from tests.conftest import World

pytestmark = pytest.mark.anyio

SECRETS = {
    ("prod", "IMAGE_API_KEY"): "sk-image",
    ("prod", "DB_PASSWORD"): "hunter2",
    ("dev", "IMAGE_API_KEY"): "sk-dev",
}


async def _worker(world: World, *, scopes: list[str] | None = None, name: str = "img-worker") -> tuple[str, str, str]:
    """A worker agent and a key of it: (principal id, key id, token)."""
    agent = await world.ok("agents_create", world.owner, tenant="acme", name=name, role="worker")
    options: dict[str, Any] = {} if scopes is None else {"scopes": scopes}
    made = await world.ok(
        "keys_create", world.owner, tenant="acme", name=name, principal_id=agent["principal"]["id"], **options
    )
    return agent["principal"]["id"], made["key"]["id"], made["token"]


async def _store_secrets(world: World) -> None:
    for (env, name), value in SECRETS.items():
        await world.ok("secrets_set", world.owner, tenant="acme", env=env, name=name, value=value)


async def _call_over_mcp(world: World, token: str, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    dispatcher = Dispatcher(world.dispatcher.runtime, Exposure(toolsets=None))
    async with Client(build_server(dispatcher, lambda ctx: token, "stdio")) as client:
        return await client.call_tool(tool, arguments)


async def test_a_worker_key_granted_one_secret_reveals_it_and_is_refused_every_other(world: World) -> None:
    await _store_secrets(world)
    worker_id, key_id, token = await _worker(world)
    await world.ok(
        "grants_create", world.owner, tenant="acme", principal_id=worker_id, key_id=key_id, pattern="prod/IMAGE_API_KEY"
    )
    revealed = await _call_over_mcp(world, token, "secrets_reveal", {"env": "prod", "name": "IMAGE_API_KEY"})
    assert not revealed.is_error and (revealed.structured_content or {})["value"] == "sk-image"
    for env, name in SECRETS.keys() - {("prod", "IMAGE_API_KEY")}:
        refused = await _call_over_mcp(world, token, "secrets_reveal", {"env": env, "name": name})
        assert refused.is_error and (refused.structured_content or {})["error"]["code"] == "permission_denied"
        assert SECRETS[(env, name)] not in json.dumps(refused.structured_content)


async def test_a_principal_wide_grant_matches_its_wildcard_for_every_key_and_a_key_grant_one_key(world: World) -> None:
    await _store_secrets(world)
    worker_id, _, token = await _worker(world)
    other = await world.ok("keys_create", world.owner, tenant="acme", name="second", principal_id=worker_id)
    await world.ok("grants_create", world.owner, tenant="acme", principal_id=worker_id, pattern="*/IMAGE_*")
    for key in (token, other["token"]):
        assert (await world.ok("secrets_reveal", key, env="dev", name="IMAGE_API_KEY"))["value"] == "sk-dev"
        assert (await world.ok("secrets_reveal", key, env="prod", name="IMAGE_API_KEY"))["value"] == "sk-image"
        assert await world.code("secrets_reveal", key, env="prod", name="DB_PASSWORD") == "permission_denied"
    agent_id, key_id, keyed = await _worker(world, name="keyed")
    second = await world.ok("keys_create", world.owner, tenant="acme", name="unkeyed", principal_id=agent_id)
    await world.ok("grants_create", world.owner, tenant="acme", principal_id=agent_id, key_id=key_id, pattern="prod/*")
    assert (await world.ok("secrets_reveal", keyed, env="prod", name="DB_PASSWORD"))["value"] == "hunter2"
    assert await world.code("secrets_reveal", second["token"], env="prod", name="DB_PASSWORD") == "permission_denied"


async def test_a_granter_cannot_grant_what_it_lacks(world: World) -> None:
    worker_id, _, _ = await _worker(world)
    # A developer holds neither members:manage nor secrets:reveal.
    assert (
        await world.code("grants_create", world.agent, principal_id=worker_id, pattern="prod/IMAGE_API_KEY")
        == "permission_denied"
    )
    # An admin whose key is narrowed to managing members, without secrets:reveal, cannot pass it on.
    admin = await world.ok("agents_create", world.owner, tenant="acme", name="admin-bot", role="admin")
    narrow = await world.ok(
        "keys_create", world.owner, tenant="acme", name="narrow", principal_id=admin["principal"]["id"],
        scopes=["members:manage", "members:read"],
    )  # fmt: skip
    assert (
        await world.code("grants_create", narrow["token"], principal_id=worker_id, pattern="prod/*")
        == "permission_denied"
    )
    # Only grantable permissions, on env/name patterns.
    assert (
        await world.code(
            "grants_create",
            world.owner,
            tenant="acme",
            principal_id=worker_id,
            permission="secrets:write",
            pattern="prod/*",
        )
        == "invalid_argument"
    )
    assert (
        await world.code("grants_create", world.owner, tenant="acme", principal_id=worker_id, pattern="IMAGE_API_KEY")
        == "invalid_argument"
    )


async def test_revoking_a_grant_takes_effect_on_the_next_call(world: World) -> None:
    await _store_secrets(world)
    worker_id, _, token = await _worker(world)
    grant = await world.ok(
        "grants_create", world.owner, tenant="acme", principal_id=worker_id, pattern="prod/IMAGE_API_KEY"
    )
    await world.ok("secrets_reveal", token, env="prod", name="IMAGE_API_KEY")
    await world.ok("grants_revoke", world.owner, tenant="acme", grant_id=grant["id"])
    assert await world.code("secrets_reveal", token, env="prod", name="IMAGE_API_KEY") == "permission_denied"
    assert await world.code("grants_revoke", world.owner, tenant="acme", grant_id=grant["id"]) == "not_found"


async def test_whoami_access_check_and_keys_list_show_the_grant(world: World) -> None:
    worker_id, key_id, token = await _worker(world)
    grant = await world.ok(
        "grants_create", world.owner, tenant="acme", principal_id=worker_id, key_id=key_id, pattern="prod/IMAGE_*"
    )
    assert [g["id"] for g in (await world.ok("whoami", token))["grants"]] == [grant["id"]]
    check = await world.ok("access_check", token, permissions=["secrets:reveal"])
    assert check["missing"] == ["secrets:reveal"] and [g["pattern"] for g in check["grants"]] == ["prod/IMAGE_*"]
    keys = await world.ok("keys_list", world.owner, tenant="acme", principal_id=worker_id)
    assert [[g["id"] for g in k["grants"]] for k in keys["items"]] == [[grant["id"]]]
    listed = await world.ok("grants_list", world.owner, tenant="acme", principal_id=worker_id)
    assert [(g["id"], g["granted_by"]) for g in listed["items"]] == [(grant["id"], grant["granted_by"])]


async def test_access_check_with_a_secret_name_reports_the_decision_a_reveal_gets(world: World) -> None:
    await _store_secrets(world)
    worker_id, key_id, token = await _worker(world)
    await world.ok(
        "grants_create", world.owner, tenant="acme", principal_id=worker_id, key_id=key_id, pattern="prod/IMAGE_*"
    )
    for env, name in SECRETS:
        check = await world.ok("access_check", token, permissions=["secrets:reveal"], env=env, name=name)
        outcome = await world.call("secrets_reveal", token, env=env, name=name)
        assert check["allowed"] == (outcome.error is None), (env, name, outcome.error)


async def test_an_unknown_permission_name_gets_a_did_you_mean(world: World) -> None:
    outcome = await world.call("access_check", world.agent, permissions=["secret:reveal"])
    assert outcome.error is not None and outcome.error.code == "invalid_argument"
    assert outcome.error.hint is not None and "'secrets:reveal'" in outcome.error.hint
