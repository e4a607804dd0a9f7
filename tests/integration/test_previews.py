"""Previews and resources that tell the truth: plans say who may apply them, resources page or refuse a cursor."""

from __future__ import annotations

import json

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from scalemule.dispatch import Dispatcher, Exposure
from scalemule.surfaces.mcp import build_server
from tests.conftest import World

pytestmark = pytest.mark.anyio


async def test_a_developers_dry_run_into_prod_says_it_cannot_be_applied_and_who_can(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="model", value="large")
    await world.ok("config_set", world.owner, env="prod", key="model", value="small")
    plan = await world.ok("config_promote", world.agent, from_env="dev", to_env="prod")
    assert (plan["can_apply"], plan["lacking"], plan["who_can"]) == (
        False,
        ["envs:write_protected"],
        ["owner", "admin"],
    )
    (step,) = plan["steps"]
    assert (step["old_value"], step["new_value"]) == ("small", "large")
    assert await world.code("config_promote", world.agent, from_env="dev", to_env="prod", dry_run=False) == (
        "permission_denied"
    )
    staging = await world.ok("config_promote", world.agent, from_env="dev", to_env="staging")
    assert staging["can_apply"] is True and staging["lacking"] == []


async def test_an_applied_promotion_carries_the_new_versions_and_never_secret_values(world: World) -> None:
    await world.ok("config_set", world.owner, env="dev", key="model", value="large")
    await world.ok("secrets_set", world.owner, env="dev", name="API", value="sk-never-shown")
    applied = await world.ok("config_promote", world.owner, from_env="dev", to_env="staging", dry_run=False)
    versions = {s["name"]: (s["kind"], s["applied_version"]) for s in applied["steps"]}
    assert versions == {"model": ("config", 1), "API": ("secret", 1)}
    assert "sk-never-shown" not in json.dumps(applied)


async def _read(world: World, token: str, uri: str) -> dict[str, object]:
    async with Client(build_server(world.dispatcher, lambda ctx: token, "stdio")) as client:
        read = await client.read_resource(uri)
    return dict(json.loads(read.contents[0].text))  # type: ignore[union-attr]


async def test_the_audit_resource_pages_with_the_cursor_it_returns(world: World) -> None:
    for i in range(3):
        await world.ok("config_set", world.agent, env="dev", key=f"k{i}", value=i)
    first = await _read(world, world.owner, "scalemule://tenants/acme/audit/recent?limit=2")
    assert len(first["items"]) == 2 and first["next_cursor"]  # type: ignore[arg-type]
    second = await _read(
        world, world.owner, f"scalemule://tenants/acme/audit/recent?limit=2&cursor={first['next_cursor']}"
    )
    seqs = [e["seq"] for e in first["items"] + second["items"]]  # type: ignore[operator]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 4


async def test_a_resource_that_does_not_page_refuses_a_cursor(world: World) -> None:
    async with Client(build_server(world.dispatcher, lambda ctx: world.owner, "stdio")) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource("scalemule://tenants/acme?cursor=abc")
    assert str(refused.value).startswith("invalid_argument")


async def test_an_audit_tool_outside_the_toolsets_names_the_resource_to_read(world: World) -> None:
    dispatcher = Dispatcher(world.dispatcher.runtime, Exposure.parse("default"))
    async with Client(build_server(dispatcher, lambda ctx: world.owner, "stdio")) as client:
        refused = await client.call_tool("audit_query", {})
    assert refused.is_error
    assert "scalemule://tenants/{tenant}/audit/recent" in (refused.structured_content or {})["error"]["hint"]
