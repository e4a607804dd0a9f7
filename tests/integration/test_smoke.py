from __future__ import annotations

import pytest

from tests.conftest import World

pytestmark = pytest.mark.anyio


async def test_whoami_names_the_agent_its_tenant_and_role(world: World) -> None:
    me = await world.ok("whoami", world.agent)
    assert me["principal"]["kind"] == "agent"
    assert me["tenant"]["slug"] == "acme"
    assert me["role"] == "developer"
    assert "secrets:reveal" not in me["permissions"]
