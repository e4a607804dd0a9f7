"""Hard tenant isolation as a property: no sequence of calls made from tenant A reveals tenant B's data.

Tenant B (owned by a user who is not in A) holds config values, a secret, an object, an agent, a member
and a key, each carrying a random canary. A's owner and A's agent then make random sequences of calls
to every registered operation, with arguments drawn from what an attacker could know or guess about B
(its slug, ids, key names, object keys). No result or error may contain a canary.
"""

from __future__ import annotations

import base64
import json
import secrets as random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalemule.core import identity, tenants
from scalemule.dispatch import Invocation
from scalemule.operations import REGISTRY, resource_for
from tests.conftest import World

pytestmark = pytest.mark.anyio


@dataclass
class Victim:
    """Tenant B: what an attacker may know (identifiers) and what must never reach it (canaries)."""

    known: list[Any]
    canaries: list[str]


@pytest.fixture
async def victim(world: World) -> Victim:
    canary = {
        name: f"canary-{name}-{random.token_hex(12)}"
        for name in ("config", "secret", "object", "meta", "agent", "email", "key")
    }
    async with world.dispatcher.runtime.db.transaction() as conn:
        bob = await identity.create_principal(conn, kind="user", name="bob", email="bob@beta.example")
        beta = await tenants.create_tenant(conn, slug="beta", name="Beta", owner=bob)
        _, bob_token = await identity.create_key(
            conn, principal_id=bob.id, tenant_id=beta.id, name="bob", scopes=None, expires_at=None, created_by=None
        )
    await world.ok("config_set", bob_token, env="dev", key="model", value=canary["config"])
    await world.ok("secrets_set", bob_token, env="dev", name="API_KEY", value=canary["secret"])
    await world.ok(
        "storage_put_object",
        bob_token,
        key="private/menu.txt",
        content=canary["object"],
        metadata={"note": canary["meta"]},
    )
    agent = await world.ok("agents_create", bob_token, name=canary["agent"], role="developer")
    member = await world.ok("members_add", bob_token, email=f"{canary['email']}@beta.example", role="viewer")
    key = await world.ok("keys_create", bob_token, name=canary["key"], principal_id=agent["principal"]["id"])
    known = [
        "beta",
        beta.id,
        bob.id,
        agent["principal"]["id"],
        member["principal"]["id"],
        key["key"]["id"],
        "model",
        "API_KEY",
        "private/menu.txt",
        "private/",
        "dev",
        "prod",
    ]
    return Victim(known=known, canaries=list(canary.values()))


_ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(0, 3), st.text(max_size=6))


def _leaks(victim: Victim, value: Any) -> list[str]:
    """The canaries found in ``value``, as JSON text or inside any base64 string in it."""
    text = json.dumps(value, default=str)
    for piece in text.split('"'):
        try:
            text += base64.b64decode(piece + "=" * (-len(piece) % 4)).decode("utf-8", "ignore")
        except ValueError:
            continue
    return [canary for canary in victim.canaries if canary in text]


async def test_the_leak_check_finds_a_canary_where_one_is(world: World, victim: Victim) -> None:
    mine = await world.ok("secrets_set", world.owner, env="dev", name="PLANTED", value=victim.canaries[1])
    assert _leaks(victim, await world.ok("secrets_reveal", world.owner, env="dev", name="PLANTED")) == [
        victim.canaries[1]
    ]
    assert _leaks(victim, {"content": base64.b64encode(victim.canaries[2].encode()).decode()}) == [victim.canaries[2]]
    assert mine["name"] == "PLANTED"


@dataclass(frozen=True)
class Known:
    """Stands for the ``index``-th identifier an attacker knows of B (resolved once B exists)."""

    index: int


_KNOWN = st.builds(Known, st.integers(0, 11))
# Mostly B's identifiers, sometimes anything: what an attacker could know or guess.
_GUESS = st.one_of(_KNOWN, _KNOWN, _KNOWN, _ANYTHING)


@st.composite
def _plans(draw: st.DrawFn) -> list[tuple[str, str, dict[str, Any]]]:
    plan = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(list(REGISTRY.values())))
        fields = op.args_model.model_fields
        required = [name for name, field in fields.items() if field.is_required()]
        optional = [name for name in fields if name not in required] + ["tenant"]
        chosen = draw(st.lists(st.sampled_from(optional), max_size=2, unique=True))
        plan.append((draw(st.sampled_from(["owner", "agent"])), op.name, {n: draw(_GUESS) for n in required + chosen}))
    return plan


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=_plans())
async def test_no_sequence_of_calls_from_tenant_a_reveals_a_byte_of_tenant_b(
    world: World, victim: Victim, plan: list[tuple[str, str, dict[str, Any]]]
) -> None:
    tokens = {"owner": world.owner, "agent": world.agent}
    for caller, name, drawn in plan:
        arguments = {
            k: victim.known[v.index % len(victim.known)] if isinstance(v, Known) else v for k, v in drawn.items()
        }
        outcome = await world.dispatcher.call(Invocation(name, arguments, tokens[caller], "cli"))
        assert _leaks(victim, outcome.result) == [], (name, arguments)
        assert _leaks(victim, outcome.error.text if outcome.error else None) == [], (name, arguments)


async def test_tenant_b_resources_are_refused_to_tenant_a_without_a_leak(world: World, victim: Victim) -> None:
    for uri in [
        "scalemule://tenants/beta",
        "scalemule://tenants/beta/config/dev",
        "scalemule://tenants/beta/audit/recent",
        "scalemule://tenants/beta/objects/private/menu.txt",
    ]:
        found = resource_for(uri)
        assert found is not None
        for token in (world.owner, world.agent):
            outcome = await world.dispatcher.call(Invocation(found[0].name, found[2], token, "stdio", resource=uri))
            assert outcome.error is not None and outcome.error.code == "permission_denied", uri
            assert _leaks(victim, outcome.error.text) == []
