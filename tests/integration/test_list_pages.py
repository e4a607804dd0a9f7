"""Every list tool pages completely: any limit, pages walked to the end, every visible item exactly once.

Each list operation in the registry has a seeder below that gives it more items than the smallest
pages hold; a list operation added without one fails the first test.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from scalemule.operations import REGISTRY
from tests.conftest import World
from tests.integration.people import user_with_key

pytestmark = pytest.mark.anyio

LIST_OPERATIONS = sorted(name for name, op in REGISTRY.items() if "cursor" in op.args_model.model_fields)


@dataclass
class Listing:
    """A caller and the arguments of a list call whose items the seeder made."""

    token: str
    arguments: dict[str, Any] = field(default_factory=dict)


Seeder = Callable[[World], Awaitable[Listing]]


async def _tenants(world: World) -> Listing:
    for i in range(4):
        await world.ok("tenants_create", world.owner, slug=f"t{i}", name=f"T{i}")
    return Listing(world.owner)


async def _tenants_through_a_bound_key(world: World) -> Listing:
    for i in range(4):
        await world.ok("tenants_create", world.owner, slug=f"t{i}", name=f"T{i}")
    made = await world.ok("keys_create", world.owner, tenant="t2", name="bound to t2")
    return Listing(made["token"])


async def _invitations(world: World) -> Listing:
    bob, bob_key = await user_with_key(world, "bob@example.com")
    for i in range(4):
        await world.ok("tenants_create", world.owner, slug=f"t{i}", name=f"T{i}")
        await world.ok("members_add", world.owner, tenant=f"t{i}", principal_id=bob, role="viewer")
    return Listing(bob_key)


async def _jobs(world: World) -> Listing:
    for i in range(5):
        await world.ok("jobs_enqueue", world.agent, kind="render", payload={"n": i})
    return Listing(world.agent)


async def _members(world: World) -> Listing:
    for i in range(5):
        await world.ok("agents_create", world.owner, tenant="acme", name=f"agent-{i}", role="viewer")
    return Listing(world.owner, {"tenant": "acme"})


async def _keys(world: World) -> Listing:
    for i in range(5):
        await world.ok("keys_create", world.owner, tenant="acme", name=f"key-{i}")
    return Listing(world.owner, {"tenant": "acme"})


async def _config(world: World) -> Listing:
    for i in range(6):
        await world.ok("config_set", world.agent, env="dev", key=f"k{i}", value=i)
    return Listing(world.agent, {"env": "dev"})


async def _history(world: World) -> Listing:
    for i in range(6):
        await world.ok("config_set", world.agent, env="dev", key="model", value=f"v{i}")
    return Listing(world.agent, {"env": "dev", "key": "model"})


async def _secrets(world: World) -> Listing:
    for i in range(5):
        await world.ok("secrets_set", world.agent, env="dev", name=f"S{i}", value="v")
    return Listing(world.agent, {"env": "dev"})


async def _objects(world: World) -> Listing:
    for i in range(5):
        await world.ok("storage_put_object", world.agent, key=f"docs/{i}.txt", content="x")
    return Listing(world.agent)


async def _grants(world: World) -> Listing:
    agent = await world.ok("agents_create", world.owner, tenant="acme", name="granted", role="worker")
    for i in range(5):
        await world.ok(
            "grants_create", world.owner, tenant="acme", principal_id=agent["principal"]["id"], pattern=f"dev/S{i}"
        )
    return Listing(world.owner, {"tenant": "acme"})


async def _audit(world: World) -> Listing:
    for i in range(6):
        await world.ok("config_set", world.agent, env="dev", key=f"a{i}", value=i)
    return Listing(world.owner, {"tenant": "acme", "operation": "config_set"})


SEEDERS: dict[str, list[Seeder]] = {
    "tenants_list": [_tenants, _tenants_through_a_bound_key],
    "invitations_list": [_invitations],
    "jobs_list": [_jobs],
    "members_list": [_members],
    "keys_list": [_keys],
    "grants_list": [_grants],
    "config_list": [_config],
    "config_history": [_history],
    "secrets_list": [_secrets],
    "storage_list_objects": [_objects],
    "audit_query": [_audit],
}


def test_every_list_operation_has_a_seeder() -> None:
    assert sorted(SEEDERS) == LIST_OPERATIONS


def _identity(item: dict[str, Any]) -> str:
    return json.dumps(item, sort_keys=True)


async def _walk(world: World, name: str, listing: Listing, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = await world.ok(name, listing.token, **listing.arguments, limit=limit, cursor=cursor)
        assert len(page["items"]) <= limit
        if page["next_cursor"] is not None:
            assert len(page["items"]) == limit, "a page short of its limit must be the last"
        seen += [_identity(item) for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError(f"{name} never reached its last page with limit={limit}")


@pytest.mark.parametrize(
    ("name", "seeder"),
    [(name, seeder) for name in sorted(SEEDERS) for seeder in SEEDERS[name]],
    ids=lambda value: value if isinstance(value, str) else value.__name__.strip("_"),
)
async def test_walking_every_page_shows_every_visible_item_exactly_once(
    world: World, name: str, seeder: Seeder
) -> None:
    listing = await seeder(world)
    everything = await world.ok(name, listing.token, **listing.arguments, limit=200)
    assert everything["next_cursor"] is None
    expected = [_identity(item) for item in everything["items"]]
    assert expected
    for limit in range(1, len(expected) + 2):
        walked = await _walk(world, name, listing, limit)
        assert walked == expected, f"limit={limit}"
