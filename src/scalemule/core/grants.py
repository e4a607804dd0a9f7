"""Grants: one permission on named targets, stored per tenant; the rule that reads them is in core.access."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from scalemule.core.access import Grant, KeyInfo, grants_reach
from scalemule.core.errors import NotFound
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection
from scalemule.db.tables import grants

# Built once: constructing a statement costs more than running it on SQLite. Served by ix_grants_holder.
_held_query = sa.select(grants).where(
    grants.c.tenant_id == sa.bindparam("tenant_id"), grants.c.principal_id == sa.bindparam("principal_id")
)


def _grant(row: Any) -> Grant:
    return Grant(row.id, row.principal_id, row.key_id, row.permission, row.pattern)


async def held(conn: Connection, *, tenant_id: str, principal_id: str, key: KeyInfo | None) -> list[Grant]:
    """The grants a call by ``principal_id`` with ``key`` may use in the tenant."""
    rows = await conn.execute(_held_query, {"tenant_id": tenant_id, "principal_id": principal_id})
    return [g for g in map(_grant, rows) if grants_reach(g, key)]


async def create(
    conn: Connection,
    *,
    tenant_id: str,
    principal_id: str,
    key_id: str | None,
    permission: str,
    pattern: str,
    by: str,
) -> tuple[Grant, datetime]:
    """Store a grant (the caller has checked who may make it); returns it and its time."""
    grant, now = Grant(new_id("grt"), principal_id, key_id, permission, pattern), utcnow()
    await conn.execute(
        grants.insert().values(
            id=grant.id,
            tenant_id=tenant_id,
            principal_id=principal_id,
            key_id=key_id,
            permission=permission,
            pattern=pattern,
            granted_by=by,
            created_at=now,
        )
    )
    return grant, now


async def list_grants(
    conn: Connection, *, tenant_id: str, principal_id: str | None, after: str | None, limit: int
) -> list[tuple[Grant, str, datetime]]:
    """The tenant's grants by id (of one principal, if given), with who granted each and when."""
    query = sa.select(grants).where(grants.c.tenant_id == tenant_id).order_by(grants.c.id).limit(limit)
    if principal_id is not None:
        query = query.where(grants.c.principal_id == principal_id)
    if after is not None:
        query = query.where(grants.c.id > after)
    return [(_grant(r), r.granted_by, r.created_at) for r in await conn.execute(query)]


async def revoke(conn: Connection, *, tenant_id: str, grant_id: str) -> Grant:
    """Delete a grant of the tenant; the next call that would have used it is refused.

    Raises:
        NotFound: no such grant in this tenant.
    """
    where = sa.and_(grants.c.tenant_id == tenant_id, grants.c.id == grant_id)
    row = (await conn.execute(sa.select(grants).where(where))).first()
    if row is None:
        raise NotFound(f"no grant {grant_id[:64]!r} in this tenant", hint="List grants with grants_list.")
    await conn.execute(grants.delete().where(where))
    return _grant(row)


async def of_principals(conn: Connection, *, tenant_id: str, principal_ids: list[str]) -> list[Grant]:
    """Every grant held in the tenant by any of ``principal_ids``."""
    if not principal_ids:
        return []
    query = sa.select(grants).where(grants.c.tenant_id == tenant_id, grants.c.principal_id.in_(principal_ids))
    return [_grant(r) for r in await conn.execute(query)]
