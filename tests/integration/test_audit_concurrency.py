"""Many writers on PostgreSQL: one tenant's chain under 32 concurrent clients, 8 more tenants beside it."""

from __future__ import annotations

import anyio
import pytest
import sqlalchemy as sa

from scalemule.core import audit_verify
from scalemule.db.tables import audit_events, audit_heads
from scalemule.dispatch import Invocation
from tests.conftest import World

pytestmark = pytest.mark.anyio

CLIENTS = 32
OTHER_TENANTS = 8
SECONDS = 10.0


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_thirty_two_clients_on_one_tenant_and_eight_more_tenants_leave_chains_that_verify(
    world: World,
) -> None:
    dispatcher, runtime = world.dispatcher, world.dispatcher.runtime
    slugs = [f"other-{i}" for i in range(OTHER_TENANTS)]
    for slug in slugs:
        await world.ok("tenants_create", world.owner, slug=slug, name=slug)
    calls = {"acme": 0, "others": 0}
    deadline = anyio.current_time() + SECONDS

    async def client(token: str, arguments: dict[str, str], tally: str) -> None:
        while anyio.current_time() < deadline:
            outcome = await dispatcher.call(Invocation("whoami", arguments, token, "http", client_name="load"))
            assert outcome.error is None, outcome.error
            calls[tally] += 1

    with anyio.fail_after(SECONDS + 30):
        async with anyio.create_task_group() as group:
            for _ in range(CLIENTS):
                group.start_soon(client, world.agent, {}, "acme")
            for slug in slugs:
                group.start_soon(client, world.owner, {"tenant": slug}, "others")
    assert calls["acme"] >= CLIENTS and calls["others"] >= OTHER_TENANTS
    async with runtime.db.transaction() as conn:
        heads = {row.chain: int(row.seq) for row in await conn.execute(sa.select(audit_heads))}
        stats = sa.select(
            audit_events.c.chain,
            sa.func.count(),
            sa.func.count(sa.distinct(audit_events.c.seq)),
            sa.func.min(audit_events.c.seq),
            sa.func.max(audit_events.c.seq),
        ).group_by(audit_events.c.chain)
        chains = {row[0]: tuple(row[1:]) for row in await conn.execute(stats)}
    for chain, (count, distinct, low, high) in chains.items():
        assert (count, distinct, low, high) == (heads[chain], heads[chain], 1, heads[chain]), chain
    assert chains[world.made.tenant.id][0] >= calls["acme"]
    for chain in chains:
        report, _ = await audit_verify.verify_stored(runtime.db, runtime.notary, chain)
        assert report.ok and report.events == heads[chain] and report.checkpoints >= 1, report
