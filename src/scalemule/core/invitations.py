"""Invitations: a person joins a tenant only by accepting one with their own key.

Only pending invitations are stored; answering or cancelling one deletes it (the audit log keeps the
story). One pending invitation per person and tenant (a unique constraint). Agents and services are
owned by their tenant and join it directly, without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scalemule.core import tenants
from scalemule.core.access import ROLES, Principal, Tenant, can_grant
from scalemule.core.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import invitations, principals
from scalemule.db.tables import tenants as tenants_table

INVITATION_LIFETIME = timedelta(days=14)


@dataclass(frozen=True)
class Invitation:
    """A pending invitation of a person to a tenant."""

    id: str
    tenant: Tenant
    principal_id: str
    role: str
    invited_by: str
    invited_by_name: str | None
    created_at: datetime
    expires_at: datetime


_query = (
    sa.select(
        invitations,
        tenants_table.c.slug,
        tenants_table.c.name.label("tenant_name"),
        tenants_table.c.created_at.label("tenant_created_at"),
        principals.c.name.label("invited_by_name"),
    )
    .join(tenants_table, tenants_table.c.id == invitations.c.tenant_id)
    .outerjoin(principals, principals.c.id == invitations.c.invited_by)
)


def _invitation(row: Any) -> Invitation:
    tenant = Tenant(id=row.tenant_id, slug=row.slug, name=row.tenant_name, created_at=row.tenant_created_at)
    return Invitation(
        id=row.id,
        tenant=tenant,
        principal_id=row.principal_id,
        role=row.role,
        invited_by=row.invited_by,
        invited_by_name=row.invited_by_name,
        created_at=row.created_at,
        expires_at=row.expires_at,
    )


async def invite(conn: Connection, *, tenant_id: str, person: Principal, role: str, invited_by: str) -> Invitation:
    """Invite ``person`` (a user) to the tenant with ``role``; an expired invitation is replaced.

    Raises:
        AlreadyExists: the person is a member already, or has a pending invitation.
    """
    if await tenants.role_in(conn, principal_id=person.id, tenant_id=tenant_id) is not None:
        raise AlreadyExists(
            "that person is already a member of this tenant", hint="Change its role with members_set_role instead."
        )
    now = utcnow()
    await conn.execute(
        invitations.delete().where(
            invitations.c.tenant_id == tenant_id,
            invitations.c.principal_id == person.id,
            invitations.c.expires_at <= now,
        )
    )
    invitation_id = new_id("inv")
    async with constraint_errors(
        {
            "uq_invitations_tenant_id_principal_id": lambda: AlreadyExists(
                "that person already has a pending invitation to this tenant",
                hint="Wait for their answer, or cancel it with members_remove and invite again.",
            )
        }
    ):
        await conn.execute(
            invitations.insert().values(
                id=invitation_id,
                tenant_id=tenant_id,
                principal_id=person.id,
                role=tenants.check_role(role),
                invited_by=invited_by,
                created_at=now,
                expires_at=now + INVITATION_LIFETIME,
            )
        )
    return _invitation((await conn.execute(_query.where(invitations.c.id == invitation_id))).one())


async def pending_for(conn: Connection, *, principal_id: str, after_id: str | None, limit: int) -> list[Invitation]:
    """The person's pending (unexpired) invitations, ordered by id."""
    query = (
        _query.where(invitations.c.principal_id == principal_id, invitations.c.expires_at > utcnow())
        .order_by(invitations.c.id)
        .limit(limit)
    )
    if after_id is not None:
        query = query.where(invitations.c.id > after_id)
    return [_invitation(r) for r in (await conn.execute(query)).all()]


async def _own(conn: Connection, *, principal_id: str, invitation_id: str) -> Invitation:
    query = _query.where(invitations.c.id == invitation_id, invitations.c.principal_id == principal_id)
    row = (await conn.execute(query)).first()
    if row is None or row.expires_at <= utcnow():
        # The same answer for an unknown id, another person's invitation and a lapsed one.
        raise NotFound(
            f"no pending invitation {invitation_id[:64]!r} for you",
            hint="List yours with invitations_list; a lapsed invitation must be sent again.",
        )
    return _invitation(row)


async def respond(conn: Connection, *, person: Principal, invitation_id: str, accept: bool) -> Invitation:
    """Accept (become a member with the invited role) or decline one of the person's invitations.

    Raises:
        NotFound: no pending invitation with that id for this person.
        FailedPrecondition: the inviter can no longer grant the role (demoted or gone).
        Conflict: the person already belongs to another tenant with the same slug.
    """
    invitation = await _own(conn, principal_id=person.id, invitation_id=invitation_id)
    await conn.execute(invitations.delete().where(invitations.c.id == invitation.id))
    if not accept:
        return invitation
    # Role rules hold at acceptance too: the inviter must still be able to grant the role.
    inviter_role = await tenants.role_in(conn, principal_id=invitation.invited_by, tenant_id=invitation.tenant.id)
    if inviter_role is None or not can_grant(ROLES[inviter_role], invitation.role):
        raise FailedPrecondition(
            f"whoever invited you can no longer grant role '{invitation.role}' in this tenant",
            hint="Ask a current owner or admin of the tenant to invite you again.",
        )
    slug = invitation.tenant.slug
    if await tenants.membership_by_slug(conn, principal_id=person.id, slug=slug) is not None:
        raise Conflict(
            f"you already belong to a tenant with slug {slug!r}",
            hint=f"Leave it first with members_leave(tenant='{slug}'), or decline this invitation.",
        )
    await tenants.add_member(conn, tenant_id=invitation.tenant.id, principal_id=person.id, role=invitation.role)
    return invitation


async def cancel(conn: Connection, *, tenant_id: str, principal_id: str) -> Invitation | None:
    """Cancel the person's pending invitation to the tenant; returns it, or None when there is none."""
    query = _query.where(invitations.c.tenant_id == tenant_id, invitations.c.principal_id == principal_id)
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    await conn.execute(invitations.delete().where(invitations.c.id == row.id))
    return _invitation(row)
