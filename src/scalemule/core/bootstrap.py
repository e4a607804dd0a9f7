"""First-time setup of a store: the first tenant, its owner, an agent and their keys."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from scalemule.core import identity, tenants, unit_of_work
from scalemule.core.access import Principal, Tenant
from scalemule.core.errors import FailedPrecondition
from scalemule.db.engine import Connection, Database
from scalemule.db.tables import tenants as tenants_table


@dataclass(frozen=True)
class Bootstrap:
    """What ``scalemule init`` made; the tokens are shown once."""

    tenant: Tenant
    owner: Principal
    agent: Principal
    owner_token: str
    agent_token: str


async def initialize(db: Database, *, slug: str, owner_email: str) -> Bootstrap:
    """Create the first tenant with an owner user and an agent acting on the owner's behalf.

    An operator command: recorded as the first event of the new tenant's chain (a refusal, in the
    global chain).

    Raises:
        FailedPrecondition: the store already has tenants (init runs once).
    """
    work, trace = unit_of_work.operator(db, "init", {"tenant": slug, "owner": owner_email}, target=slug)

    async def body(conn: Connection) -> Bootstrap:
        made = await _create(conn, slug=slug, owner_email=owner_email)
        trace.tenant_id = made.tenant.id
        return made

    return await work.run(body)


async def _create(conn: Connection, *, slug: str, owner_email: str) -> Bootstrap:
    existing = (await conn.execute(sa.select(sa.func.count()).select_from(tenants_table))).scalar_one()
    if existing:
        raise FailedPrecondition(
            "this store is already initialised",
            hint="Nothing was changed. Use 'scalemule call keys_create' for more keys, or a new SCALEMULE_DATA_DIR.",
        )
    tenants.check_slug(slug)
    owner = await identity.create_principal(conn, kind="user", name=owner_email, email=owner_email)
    tenant = await tenants.create_tenant(conn, slug=slug, name=slug, owner=owner)
    agent = await identity.create_principal(
        conn, kind="agent", name=f"{slug}-agent", tenant_id=tenant.id, on_behalf_of=owner.id
    )
    await tenants.add_member(conn, tenant_id=tenant.id, principal_id=agent.id, role="developer")
    _, owner_token = await identity.create_key(
        conn,
        principal_id=owner.id,
        tenant_id=None,
        name="owner (init)",
        scopes=None,
        expires_at=None,
        created_by=None,
    )
    _, agent_token = await identity.create_key(
        conn,
        principal_id=agent.id,
        tenant_id=tenant.id,
        name="agent (init)",
        scopes=None,
        expires_at=None,
        created_by=owner.id,
    )
    return Bootstrap(tenant, owner, agent, owner_token, agent_token)
