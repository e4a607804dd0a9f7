"""Tenants and their members."""

from __future__ import annotations

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
from scalemule.db.tables import memberships, principals, tenants

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
SLUG = re.compile(SLUG_PATTERN)


@dataclass(frozen=True)
class Member:
    """A principal's membership in a tenant."""

    principal: Principal
    email: str | None
    role: str
    created_at: datetime


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
        AlreadyExists: the slug is taken.
    """
    tenant = Tenant(id=new_id("ten"), slug=check_slug(slug), name=name, created_at=utcnow())
    async with constraint_errors(
        {"uq_tenants_slug": lambda: AlreadyExists(f"tenant {slug!r} already exists", hint="Pick another slug.")}
    ):
        await conn.execute(
            tenants.insert().values(
                id=tenant.id, slug=tenant.slug, name=name, created_at=tenant.created_at, created_by=owner.id
            )
        )
    if owner.kind != "operator":
        await add_member(conn, tenant_id=tenant.id, principal_id=owner.id, role="owner")
    await config.create_defaults(conn, tenant.id, owner.id)
    return tenant


async def get_tenant_by_slug(conn: Connection, slug: str) -> Tenant | None:
    """The tenant with ``slug``, or None."""
    row = (await conn.execute(sa.select(tenants).where(tenants.c.slug == slug))).first()
    return None if row is None else tenant_of(row)


async def role_in(conn: Connection, *, principal_id: str, tenant_id: str) -> str | None:
    """The principal's role in the tenant, or None when it is not a member."""
    query = sa.select(memberships.c.role).where(
        memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id
    )
    return (await conn.execute(query)).scalar_one_or_none()


async def membership_by_slug(conn: Connection, *, principal_id: str, slug: str) -> tuple[Tenant, str] | None:
    """The tenant named ``slug`` and the principal's role there, or None when it is not a member."""
    query = (
        sa.select(tenants, memberships.c.role)
        .join(memberships, memberships.c.tenant_id == tenants.c.id)
        .where(tenants.c.slug == slug, memberships.c.principal_id == principal_id)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else (tenant_of(row), row.role)


async def membership_by_id(conn: Connection, *, principal_id: str, tenant_id: str) -> tuple[Tenant, str] | None:
    """The tenant with ``tenant_id`` and the principal's role there, or None when it is not a member."""
    query = (
        sa.select(tenants, memberships.c.role)
        .join(memberships, memberships.c.tenant_id == tenants.c.id)
        .where(tenants.c.id == tenant_id, memberships.c.principal_id == principal_id)
    )
    row = (await conn.execute(query)).first()
    return None if row is None else (tenant_of(row), row.role)


# Built once: every call by a key not bound to a tenant resolves its tenant with it.
_memberships_query = (
    sa.select(tenants, memberships.c.role)
    .join(memberships, memberships.c.tenant_id == tenants.c.id)
    .where(memberships.c.principal_id == sa.bindparam("principal_id"), tenants.c.slug > sa.bindparam("after"))
    .order_by(tenants.c.slug)
    .limit(sa.bindparam("limit"))
)


async def memberships_of(
    conn: Connection, *, principal_id: str, after_slug: str | None = None, limit: int = 1000
) -> list[tuple[Tenant, str]]:
    """The tenants the principal belongs to with its role in each, ordered by slug."""
    params = {"principal_id": principal_id, "after": after_slug or "", "limit": limit}
    return [(tenant_of(r), r.role) for r in (await conn.execute(_memberships_query, params)).all()]


async def add_member(conn: Connection, *, tenant_id: str, principal_id: str, role: str) -> None:
    """Make the principal a member with ``role``.

    Raises:
        AlreadyExists: it is a member already.
    """
    async with constraint_errors(
        {
            "pk_memberships": lambda: AlreadyExists(
                "that principal is already a member of this tenant",
                hint="Change its role with members_set_role instead.",
            )
        }
    ):
        await conn.execute(
            memberships.insert().values(
                tenant_id=tenant_id, principal_id=principal_id, role=check_role(role), created_at=utcnow()
            )
        )


_members_query = sa.select(principals, memberships.c.role, memberships.c.created_at.label("member_since")).join(
    memberships, memberships.c.principal_id == principals.c.id
)


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
    """Members of the tenant ordered by principal id."""
    query = _members_query.where(memberships.c.tenant_id == tenant_id).order_by(principals.c.id).limit(limit)
    if after_id is not None:
        query = query.where(principals.c.id > after_id)
    return [_member(r) for r in (await conn.execute(query)).all()]


async def _owner_count(conn: Connection, tenant_id: str) -> int:
    query = sa.select(sa.func.count()).where(memberships.c.tenant_id == tenant_id, memberships.c.role == "owner")
    return int((await conn.execute(query)).scalar_one())


async def set_role(conn: Connection, *, tenant_id: str, principal_id: str, role: str) -> Member:
    """Change a member's role.

    Raises:
        NotFound: not a member.
        FailedPrecondition: it would leave the tenant without an owner.
    """
    member = await get_member(conn, tenant_id=tenant_id, principal_id=principal_id)
    check_role(role)
    if member.role == "owner" and role != "owner" and await _owner_count(conn, tenant_id) == 1:
        raise FailedPrecondition("the tenant would have no owner left", hint="Make another member owner first.")
    await conn.execute(
        memberships.update()
        .where(memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id)
        .values(role=role)
    )
    return Member(member.principal, member.email, role, member.created_at)


async def remove_member(conn: Connection, *, tenant_id: str, principal_id: str) -> Member:
    """Remove a member.

    Raises:
        NotFound: not a member.
        FailedPrecondition: it is the last owner.
    """
    member = await get_member(conn, tenant_id=tenant_id, principal_id=principal_id)
    if member.role == "owner" and await _owner_count(conn, tenant_id) == 1:
        raise FailedPrecondition("the last owner cannot be removed", hint="Make another member owner first.")
    await conn.execute(
        memberships.delete().where(memberships.c.tenant_id == tenant_id, memberships.c.principal_id == principal_id)
    )
    return member
