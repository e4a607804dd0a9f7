"""What a denial says: the permission, the tenant, and whether the role or the key's scopes lacked it."""

from __future__ import annotations

import pytest

from scalemule.core import identity
from scalemule.dispatch import ErrorBody
from tests.conftest import World

pytestmark = pytest.mark.anyio


async def _denied(world: World, operation: str, token: str, **arguments: object) -> ErrorBody:
    outcome = await world.call(operation, token, **arguments)
    assert outcome.error is not None and outcome.error.code == "permission_denied", outcome
    assert "None" not in outcome.error.message
    return outcome.error


async def test_a_denial_by_role_names_the_permission_the_tenant_and_the_role(world: World) -> None:
    bob = await world.ok("members_add", world.owner, email="bob@example.com", role="viewer")
    async with world.dispatcher.runtime.db.transaction() as conn:
        info, token = await identity.create_key(
            conn,
            principal_id=bob["principal"]["id"],
            tenant_id=None,
            name="bob",
            scopes=None,
            expires_at=None,
            created_by=None,
        )
    error = await _denied(world, "config_set", token, env="dev", key="K", value="v")
    assert error.message.startswith("user 'bob@example.com' lacks 'config:write' in tenant 'acme' (")
    assert "'viewer'" in error.message and info.prefix not in error.message


async def test_a_denial_by_the_keys_scopes_names_the_key_not_the_role(world: World) -> None:
    narrow = await world.ok("keys_create", world.agent, name="read only", scopes=["config:read"])
    error = await _denied(world, "config_set", narrow["token"], env="dev", key="K", value="v")
    assert error.message.startswith("agent 'acme-agent' lacks 'config:write' in tenant 'acme' (")
    assert narrow["key"]["prefix"] in error.message and "'developer'" not in error.message


async def test_a_scoped_key_denied_what_its_role_lacks_anyway_is_denied_by_the_role(world: World) -> None:
    narrow = await world.ok("keys_create", world.agent, name="read only", scopes=["config:read"])
    error = await _denied(world, "secrets_reveal", narrow["token"], env="dev", name="X")
    assert error.message.startswith("agent 'acme-agent' lacks 'secrets:reveal' in tenant 'acme' (")
    assert "'developer'" in error.message and narrow["key"]["prefix"] not in error.message


async def test_a_denial_outside_any_tenant_names_no_tenant_and_no_role(world: World) -> None:
    error = await _denied(world, "tenants_create", world.agent, slug="mine", name="Mine")
    assert error.message.startswith("agent 'acme-agent' lacks 'tenants:create' (")
    assert "role" not in error.message and "tenant '" not in error.message
