"""Principals and API keys: authenticate a token, create agents and keys, list and revoke keys."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scalemule.core import tokens
from scalemule.core.access import KeyInfo, Principal, PrincipalKind, Tenant
from scalemule.core.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import api_keys, memberships, principals, tenants

# last_used_at is a hint for humans, not an invariant: refreshing it at most once a minute keeps a
# write off the hot path of almost every call.
LAST_USED_RESOLUTION = timedelta(minutes=1)

_NEXT_STEP = "Create a key with 'scalemule init' or keys_create and pass it as SCALEMULE_API_KEY or a Bearer token."

# One statement per call: the key, its principal and, for a tenant-bound key, the principal's
# membership there (NULL role when it is no longer a member).
_authenticate_query = (
    sa.select(
        api_keys,
        principals.c.kind,
        principals.c.name.label("principal_name"),
        principals.c.tenant_id.label("owner_tenant_id"),
        principals.c.on_behalf_of,
        memberships.c.role.label("bound_role"),
        tenants.c.slug.label("bound_slug"),
        tenants.c.name.label("bound_name"),
        tenants.c.created_at.label("bound_created_at"),
    )
    .join(principals, principals.c.id == api_keys.c.principal_id)
    .outerjoin(
        memberships,
        sa.and_(memberships.c.principal_id == api_keys.c.principal_id, memberships.c.tenant_id == api_keys.c.tenant_id),
    )
    .outerjoin(tenants, tenants.c.id == memberships.c.tenant_id)
    .where(api_keys.c.token_sha256 == sa.bindparam("digest"))
)


@dataclass(frozen=True)
class Authenticated:
    """A verified caller: its principal, the key it used, and its role in the key's bound tenant."""

    principal: Principal
    key: KeyInfo
    bound: tuple[Tenant, str] | None


@dataclass(frozen=True)
class KeyRecord:
    """An API key as listed to its managers."""

    info: KeyInfo
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def principal_of(row: Any) -> Principal:
    """Build a Principal from a ``principals`` row."""
    return Principal(id=row.id, kind=row.kind, name=row.name, tenant_id=row.tenant_id, on_behalf_of=row.on_behalf_of)


def _key_info(row: Any) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        prefix=row.prefix,
        principal_id=row.principal_id,
        tenant_id=row.tenant_id,
        scopes=None if row.scopes is None else frozenset(row.scopes),
        expires_at=row.expires_at,
    )


async def authenticate(conn: Connection, token: str | None) -> Authenticated:
    """Resolve a bearer token to its principal, key and bound-tenant membership.

    Raises:
        Unauthenticated: no token, a malformed one, or one unknown, revoked or expired.
    """
    if not token:
        raise Unauthenticated("no API key was given", hint=_NEXT_STEP)
    if not tokens.is_well_formed(token):
        raise Unauthenticated("the API key is malformed (checksum mismatch or wrong shape)", hint=_NEXT_STEP)
    digest = tokens.digest(token)
    row = (await conn.execute(_authenticate_query, {"digest": digest})).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        raise Unauthenticated(f"API key {tokens.display_prefix(token)}… is not known", hint=_NEXT_STEP)
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthenticated(f"API key {row.prefix}… was revoked", hint=_NEXT_STEP)
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated(f"API key {row.prefix}… expired at {row.expires_at.isoformat()}", hint=_NEXT_STEP)
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        await conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(last_used_at=now))
    principal = Principal(
        id=row.principal_id,
        kind=row.kind,
        name=row.principal_name,
        tenant_id=row.owner_tenant_id,
        on_behalf_of=row.on_behalf_of,
    )
    bound = None
    if row.bound_role is not None:
        tenant = Tenant(id=row.tenant_id, slug=row.bound_slug, name=row.bound_name, created_at=row.bound_created_at)
        bound = (tenant, row.bound_role)
    return Authenticated(principal, _key_info(row), bound)


async def create_principal(
    conn: Connection,
    *,
    kind: PrincipalKind,
    name: str,
    email: str | None = None,
    tenant_id: str | None = None,
    on_behalf_of: str | None = None,
) -> Principal:
    """Insert a principal.

    Raises:
        AlreadyExists: the email, or the name within the owning tenant, is taken.
    """
    principal = Principal(
        id=new_id({"user": "usr", "agent": "agt", "service": "svc", "operator": "opr"}[kind]),
        kind=kind,
        name=name,
        tenant_id=tenant_id,
        on_behalf_of=on_behalf_of,
    )
    async with constraint_errors(
        {
            "uq_principals_email": lambda: AlreadyExists(
                f"a user with email {email!r} already exists", hint="Add that user with members_add instead."
            ),
            "uq_principals_tenant_id_name": lambda: AlreadyExists(
                f"an agent or service named {name!r} already exists in this tenant",
                hint="Pick another name, or issue the existing one a key with keys_create.",
            ),
        }
    ):
        await conn.execute(
            principals.insert().values(
                id=principal.id,
                kind=kind,
                name=name,
                email=email,
                tenant_id=tenant_id,
                on_behalf_of=on_behalf_of,
                created_at=utcnow(),
            )
        )
    return principal


async def get_principal(conn: Connection, principal_id: str) -> Principal | None:
    """The principal with ``principal_id``, or None."""
    row = (await conn.execute(sa.select(principals).where(principals.c.id == principal_id))).first()
    return None if row is None else principal_of(row)


async def find_user_by_email(conn: Connection, email: str) -> Principal | None:
    """The user with ``email``, or None."""
    row = (await conn.execute(sa.select(principals).where(principals.c.email == email))).first()
    return None if row is None else principal_of(row)


async def create_key(
    conn: Connection,
    *,
    principal_id: str,
    tenant_id: str | None,
    name: str,
    scopes: Iterable[str] | None,
    expires_at: datetime | None,
    created_by: str | None,
) -> tuple[KeyInfo, str]:
    """Mint a key; returns its info and the token, which is never retrievable again."""
    token = tokens.generate()
    info = KeyInfo(
        id=new_id("key"),
        prefix=tokens.display_prefix(token),
        principal_id=principal_id,
        tenant_id=tenant_id,
        scopes=None if scopes is None else frozenset(scopes),
        expires_at=expires_at,
    )
    await conn.execute(
        api_keys.insert().values(
            id=info.id,
            principal_id=principal_id,
            tenant_id=tenant_id,
            name=name,
            prefix=info.prefix,
            token_sha256=tokens.digest(token),
            scopes=None if info.scopes is None else sorted(info.scopes),
            expires_at=expires_at,
            created_at=utcnow(),
            created_by=created_by,
        )
    )
    return info, token


def _tenant_keys(tenant_id: str) -> sa.Select[Any]:
    # A tenant's keys: those bound to it, and unbound keys of principals the tenant owns.
    return (
        sa.select(api_keys)
        .join(principals, principals.c.id == api_keys.c.principal_id)
        .where(
            sa.or_(
                api_keys.c.tenant_id == tenant_id,
                sa.and_(api_keys.c.tenant_id.is_(None), principals.c.tenant_id == tenant_id),
            )
        )
    )


async def list_keys(
    conn: Connection, *, tenant_id: str, principal_id: str | None, after_id: str | None, limit: int
) -> list[KeyRecord]:
    """Keys of the tenant (optionally one principal's), ordered by id, ``limit`` at most."""
    query = _tenant_keys(tenant_id).order_by(api_keys.c.id).limit(limit)
    if principal_id is not None:
        query = query.where(api_keys.c.principal_id == principal_id)
    if after_id is not None:
        query = query.where(api_keys.c.id > after_id)
    rows = (await conn.execute(query)).all()
    return [KeyRecord(_key_info(r), r.name, r.created_at, r.last_used_at, r.revoked_at) for r in rows]


async def get_key(conn: Connection, *, tenant_id: str, key_id: str) -> KeyRecord:
    """One of the tenant's keys.

    Raises:
        NotFound: no such key in this tenant.
    """
    row = (await conn.execute(_tenant_keys(tenant_id).where(api_keys.c.id == key_id))).first()
    if row is None:
        raise NotFound(f"no API key {key_id!r} in this tenant", hint="List the tenant's keys with keys_list.")
    return KeyRecord(_key_info(row), row.name, row.created_at, row.last_used_at, row.revoked_at)


async def revoke_key(conn: Connection, *, tenant_id: str, key_id: str) -> KeyRecord:
    """Revoke a key now; revoking twice keeps the first revocation time.

    Raises:
        NotFound: no such key in this tenant.
    """
    record = await get_key(conn, tenant_id=tenant_id, key_id=key_id)
    if record.revoked_at is None:
        now = utcnow()
        await conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=now))
        record = KeyRecord(record.info, record.name, record.created_at, record.last_used_at, now)
    return record


def check_expiry_days(days: int | None) -> datetime | None:
    """The expiry time ``days`` from now, or None for a key that does not expire.

    Raises:
        InvalidArgument: days outside 1..3650.
    """
    if days is None:
        return None
    if not 1 <= days <= 3650:
        raise InvalidArgument(
            "expires_in_days must be between 1 and 3650", hint="Omit it for a key that never expires."
        )
    return utcnow() + timedelta(days=days)
