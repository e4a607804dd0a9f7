"""Tenants and their members.

A tenant's slug is a name among the tenants a principal belongs to, not a global name: it is copied
onto each membership and unique per principal there. The "last owner" rule is checked with the tenant
row locked, so two owners stepping down at once cannot both succeed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scalemule.core import config
from scalemule.core.access import ROLES, Principal, Tenant
from scalemule.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import invitations, memberships, principals, tenants
from scalemule.db.types import UTCDateTime

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
SLUG = re.compile(SLUG_PATTERN)


@dataclass(frozen=True)
class Member:
    """A principal's membership in a tenant."""

    principal: Principal
    email: str | None
    role: str
    created_at: datetime
    # Set for a person invited who has not answered yet: the invitation and when it lapses.
    invitation_id: str | None = None
    expires_at: datetime | None = None


def tenant_of(row: Any) -> Tenant:
    """Build a Tenant from a ``tenants`` row."""
    return Tenant(id=row.id, slug=row.slug, name=row.name, created_at=row.created_at)


def check_slug(slug: str) -> str:
    """Return ``slug`` if it is a valid tenant slug.

    Raises:
        InvalidArgument: not 1-64 lowercase letters, digits and inner hyphens.
    """
    if not SLUG.match(slug):
        raise InvalidArgument(
            f"tenant slug {slug[:80]!r} is not valid",
            hint="Use 1-64 lowercase letters, digits and hyphens, starting and ending with a letter or digit.",
        )
    return slug


def check_role(role: str) -> str:
    """Return ``role`` if it is a built-in role.

    Raises:
        InvalidArgument: unknown role.
    """
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role[:40]!r}", hint=f"Use one of: {', '.join(ROLES)}.")
    return role


async def create_tenant(conn: Connection, *, slug: str, name: str, owner: Principal) -> Tenant:
    """Create a tenant with ``owner`` as its first owner.

    Raises:
        AlreadyExists: the owner already belongs to a tenant with this slug (slugs other people use
            do not matter, and are not revealed).
    """
    tenant = Tenant(id=new_id("ten"), slug=check_slug(slug), name=name, created_at=utcnow())
    await conn.execute(
        tenants.insert().values(
            id=tenant.id, slug=tenant.slug, name=name, created_at=tenant.created_at, created_by=owner.id
        )
    )
    if owner.kind != "operator":
        await add_member(conn, tenant_id=tenant.id, principal_id=owner.id, role="owner")
    await config.create_defaults(conn, tenant.id, owner.id)
    return tenant


async def role_in(conn: Connection, *, principal_id: str, tenant_id: str) -> str | None:
    """The principal's role in the tenant, or None when it is not a member."""
    query = sa.select(memberships.c.role).where(
        memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id
    )
    return (await conn.execute(query)).scalar_one_or_none()


# Built once: a call naming its tenant resolves it with one of these (docs/scaling.md).
_membership_query = sa.select(tenants, memberships.c.role).join(memberships, memberships.c.tenant_id == tenants.c.id)
_by_slug_query = _membership_query.where(
    memberships.c.principal_id == sa.bindparam("principal_id"), memberships.c.slug == sa.bindparam("slug")
)
_by_id_query = _membership_query.where(
    tenants.c.id == sa.bindparam("tenant_id"), memberships.c.principal_id == sa.bindparam("principal_id")
)


async def membership_by_slug(conn: Connection, *, principal_id: str, slug: str) -> tuple[Tenant, str] | None:
    """The tenant the principal knows as ``slug`` and its role there, or None when it has none."""
    row = (await conn.execute(_by_slug_query, {"principal_id": principal_id, "slug": slug})).first()
    return None if row is None else (tenant_of(row), row.role)


async def membership_by_id(conn: Connection, *, principal_id: str, tenant_id: str) -> tuple[Tenant, str] | None:
    """The tenant with ``tenant_id`` and the principal's role there, or None when it is not a member."""
    row = (await conn.execute(_by_id_query, {"principal_id": principal_id, "tenant_id": tenant_id})).first()
    return None if row is None else (tenant_of(row), row.role)


# Built once: every call by a key not bound to a tenant resolves its tenant with it.
_memberships_query = (
    sa.select(tenants, memberships.c.role)
    .join(memberships, memberships.c.tenant_id == tenants.c.id)
    .where(memberships.c.principal_id == sa.bindparam("principal_id"), memberships.c.slug > sa.bindparam("after"))
    .order_by(memberships.c.slug)
    .limit(sa.bindparam("limit"))
)
_bound_memberships_query = _memberships_query.where(memberships.c.tenant_id == sa.bindparam("bound"))


async def memberships_of(
    conn: Connection,
    *,
    principal_id: str,
    bound_tenant_id: str | None = None,
    after_slug: str | None = None,
    limit: int = 1000,
) -> list[tuple[Tenant, str]]:
    """The tenants the principal belongs to with its role in each, ordered by slug; only
    ``bound_tenant_id`` when given (all a tenant-bound key may see)."""
    params = {"principal_id": principal_id, "after": after_slug or "", "limit": limit}
    query = _memberships_query
    if bound_tenant_id is not None:
        query, params = _bound_memberships_query, {**params, "bound": bound_tenant_id}
    return [(tenant_of(r), r.role) for r in (await conn.execute(query, params)).all()]


async def add_member(conn: Connection, *, tenant_id: str, principal_id: str, role: str) -> None:
    """Make the principal a member with ``role``.

    Raises:
        AlreadyExists: it is a member already, or belongs to another tenant with the same slug.
    """
    slug = sa.select(tenants.c.slug).where(tenants.c.id == tenant_id).scalar_subquery()
    async with constraint_errors(
        {
            "pk_memberships": lambda: AlreadyExists(
                "that principal is already a member of this tenant",
                hint="Change its role with members_set_role instead.",
            ),
            "uq_memberships_principal_id_slug": lambda: AlreadyExists(
                "you already belong to a tenant with this slug",
                hint="Pick another slug: a slug names one tenant among those you belong to.",
            ),
        }
    ):
        await conn.execute(
            memberships.insert().values(
                tenant_id=tenant_id, principal_id=principal_id, slug=slug, role=check_role(role), created_at=utcnow()
            )
        )


_PRINCIPAL_COLUMNS = (
    principals.c.id,
    principals.c.kind,
    principals.c.name,
    principals.c.email,
    principals.c.tenant_id,
    principals.c.on_behalf_of,
)
_members_query = sa.select(
    *_PRINCIPAL_COLUMNS, memberships.c.role, memberships.c.created_at.label("member_since")
).join(memberships, memberships.c.principal_id == principals.c.id)


def _member(row: Any) -> Member:
    principal = Principal(
        id=row.id, kind=row.kind, name=row.name, tenant_id=row.tenant_id, on_behalf_of=row.on_behalf_of
    )
    return Member(principal=principal, email=row.email, role=row.role, created_at=row.member_since)


async def get_member(conn: Connection, *, tenant_id: str, principal_id: str) -> Member:
    """One member of the tenant.

    Raises:
        NotFound: the principal is not a member.
    """
    query = _members_query.where(memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id)
    row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound(f"{principal_id!r} is not a member of this tenant", hint="List members with members_list.")
    return _member(row)


async def list_members(conn: Connection, *, tenant_id: str, after_id: str | None, limit: int) -> list[Member]:
    """Members of the tenant and people invited who have not answered yet, ordered by principal id."""
    members = _members_query.add_columns(
        sa.cast(sa.null(), sa.String(40)).label("invitation_id"),
        sa.cast(sa.null(), UTCDateTime()).label("expires_at"),
    ).where(memberships.c.tenant_id == tenant_id)
    invited = sa.select(
        *_PRINCIPAL_COLUMNS,
        invitations.c.role,
        invitations.c.created_at.label("member_since"),
        invitations.c.id.label("invitation_id"),
        invitations.c.expires_at,
    ).where(
        invitations.c.principal_id == principals.c.id,
        invitations.c.tenant_id == tenant_id,
        invitations.c.expires_at > utcnow(),
    )
    both = sa.union_all(members, invited).subquery()
    query = sa.select(both).order_by(both.c.id).limit(limit)
    if after_id is not None:
        query = query.where(both.c.id > after_id)
    return [
        dataclasses.replace(_member(r), invitation_id=r.invitation_id, expires_at=r.expires_at)
        for r in (await conn.execute(query)).all()
    ]


async def lock_tenant(conn: Connection, tenant_id: str) -> None:
    """Lock the tenant row until the unit of work ends.

    Taken before reading or counting owners: two owners demoting or removing each other at once then
    run one after the other, and the second sees the first's change. FOR NO KEY UPDATE: inserts that
    only reference the tenant (foreign key checks take KEY SHARE) are not held up. On SQLite units of
    work are serialised already (one writer at a time) and no lock clause is rendered.
    """
    await conn.execute(sa.select(tenants.c.id).where(tenants.c.id == tenant_id).with_for_update(key_share=True))


async def _check_not_last_owner(conn: Connection, tenant_id: str, member: Member, *, action: str) -> None:
    if member.role != "owner":
        return
    query = sa.select(sa.func.count()).where(memberships.c.tenant_id == tenant_id, memberships.c.role == "owner")
    if int((await conn.execute(query)).scalar_one()) == 1:
        raise FailedPrecondition(
            f"the last owner cannot {action}: the tenant would have no owner left",
            hint="Make another member owner first with members_set_role.",
        )


async def set_role(conn: Connection, *, tenant_id: str, principal_id: str, role: str) -> Member:
    """Change a member's role.

    Raises:
        NotFound: not a member.
        FailedPrecondition: it would leave the tenant without an owner.
    """
    await lock_tenant(conn, tenant_id)
    member = await get_member(conn, tenant_id=tenant_id, principal_id=principal_id)
    check_role(role)
    if role != "owner":
        await _check_not_last_owner(conn, tenant_id, member, action="be demoted")
    await conn.execute(
        memberships.update()
        .where(memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id)
        .values(role=role)
    )
    return dataclasses.replace(member, role=role)


async def remove_member(conn: Connection, *, tenant_id: str, principal_id: str, leaving: bool = False) -> Member:
    """Remove a member: ``members_remove``, or with ``leaving`` the member itself (``members_leave``).

    Raises:
        NotFound: not a member.
        FailedPrecondition: it is the last owner.
    """
    await lock_tenant(conn, tenant_id)
    member = await get_member(conn, tenant_id=tenant_id, principal_id=principal_id)
    await _check_not_last_owner(conn, tenant_id, member, action="leave" if leaving else "be removed")
    await conn.execute(
        memberships.delete().where(memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id)
    )
    return member


async def find_for_operator(conn: Connection, tenant: str) -> Tenant:
    """The tenant an operator names on the command line: by id, or by a slug only one tenant has.

    A slug names a tenant among one principal's tenants, so two tenants may share one.

    Raises:
        NotFound: no tenant with that id or slug.
        InvalidArgument: several tenants have that slug.
    """
    query = sa.select(tenants).where(sa.or_(tenants.c.id == tenant, tenants.c.slug == tenant)).limit(3)
    rows = (await conn.execute(query)).all()
    by_id = [r for r in rows if r.id == tenant]
    if by_id or len(rows) == 1:
        return tenant_of((by_id or rows)[0])
    if not rows:
        raise NotFound(f"no tenant {tenant[:64]!r}", hint="Name a tenant by its id (ten_…) or its slug.")
    raise InvalidArgument(
        f"several tenants have the slug {tenant[:64]!r}", hint="Name it by its id (ten_…): see 'scalemule keys list'."
    )
