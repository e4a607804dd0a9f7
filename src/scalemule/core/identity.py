"""Principals and API keys: authenticate a token, create agents and keys, list and revoke keys.

Keys form trees: a key minted with another records it as its parent, and revoking a key revokes its
descendants. Minting and revoking lock the key's ancestors root first, so a key minted while an
ancestor is being revoked is either seen by the revocation or refused (see ``_lock_lineage``).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from scalemule.core import tokens
from scalemule.core.access import KeyAudience, KeyInfo, KeyTerms, Principal, PrincipalKind, Tenant
from scalemule.core.errors import AlreadyExists, NotFound, Unauthenticated
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import Connection, write
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
)
_by_digest = _authenticate_query.where(api_keys.c.token_sha256 == sa.bindparam("digest"))
_by_key_id = _authenticate_query.where(api_keys.c.id == sa.bindparam("key_id"))


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
    parent_key_id: str | None = None


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
    row = (await conn.execute(_by_digest, {"digest": digest})).first()
    if row is None or not hmac.compare_digest(row.token_sha256, digest):
        raise Unauthenticated(f"API key {tokens.display_prefix(token)}… is not known", hint=_NEXT_STEP)
    now = utcnow()
    _check_live(row, now)
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        await write(conn, api_keys.update().where(api_keys.c.id == row.id).values(last_used_at=now))
    return _authenticated(row)


async def authenticate_key(conn: Connection, key_id: str) -> Authenticated:
    """Resolve the key ``key_id`` as ``authenticate`` resolves a token, for work the server runs later
    on a caller's behalf (a task): the caller's rights as they stand now. Reads only (a task is not a
    use of the key that ``last_used_at`` tells of).

    Raises:
        Unauthenticated: the key no longer exists, was revoked or expired.
    """
    row = (await conn.execute(_by_key_id, {"key_id": key_id})).first()
    if row is None:
        raise Unauthenticated(f"the API key {key_id[:40]!r} no longer exists", hint=_NEXT_STEP)
    _check_live(row, utcnow())
    return _authenticated(row)


def _check_live(row: Any, now: datetime) -> None:
    if row.revoked_at is not None:
        raise Unauthenticated(f"API key {row.prefix}… was revoked", hint=_NEXT_STEP)
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated(f"API key {row.prefix}… expired at {row.expires_at.isoformat()}", hint=_NEXT_STEP)


def _authenticated(row: Any) -> Authenticated:
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
                f"a user with email {email!r} already exists",
                hint="Add that user with members_add instead.",
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
    parent_key_id: str | None = None,
) -> tuple[KeyInfo, str]:
    """Insert a key; returns its info and the token, which is never retrievable again.

    Keys minted with another key go through ``mint_key``, which enforces and records the lineage.
    """
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
            parent_key_id=parent_key_id,
        )
    )
    return info, token


async def mint_key(
    conn: Connection, *, parent: KeyInfo, principal_id: str, name: str, terms: KeyTerms, created_by: str
) -> tuple[KeyInfo, str]:
    """Mint a key with ``parent`` on the terms ``access.child_key_terms`` allowed, recording the lineage.

    Raises:
        Unauthenticated: ``parent`` (or a key above it) was revoked or expired while this call ran.
    """
    for row in await _lock_lineage(conn, parent.id):
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= utcnow()):
            raise Unauthenticated(
                f"API key {parent.prefix}… was revoked or expired while this call ran", hint=_NEXT_STEP
            )
    return await create_key(
        conn,
        principal_id=principal_id,
        tenant_id=terms.tenant_id,
        name=name,
        scopes=sorted(terms.scopes),
        expires_at=terms.expires_at,
        created_by=created_by,
        parent_key_id=parent.id,
    )


async def _lock_lineage(conn: Connection, key_id: str) -> list[Any]:
    """Lock ``key_id`` and every key above it, root first; returns their rows.

    Minting with a key and revoking a key both take these locks before writing. A revocation therefore
    waits for any mint below the revoked key to commit, and its recursive update (a new statement, so
    a new snapshot on PostgreSQL) sees the minted key; a mint that waited sees the revocation. Root
    first keeps the lock order the same everywhere (no deadlock). On SQLite units of work are
    serialised and FOR UPDATE is not rendered.
    """
    up = sa.select(api_keys.c.id, api_keys.c.parent_key_id, sa.literal(0).label("depth"))
    up_cte = up.where(api_keys.c.id == key_id).cte("lineage", recursive=True)
    up_cte = up_cte.union_all(
        sa.select(api_keys.c.id, api_keys.c.parent_key_id, up_cte.c.depth + 1).where(
            api_keys.c.id == up_cte.c.parent_key_id
        )
    )
    chain = (await conn.execute(sa.select(up_cte.c.id).order_by(up_cte.c.depth.desc()))).scalars().all()
    lock = sa.select(api_keys.c.id, api_keys.c.revoked_at, api_keys.c.expires_at).with_for_update()
    return [(await conn.execute(lock.where(api_keys.c.id == ancestor))).one() for ancestor in chain]


def _visible_keys(audience: KeyAudience | None) -> sa.Select[Any]:
    # The keys in the audience (access.key_audience); None: every key (the local operator).
    query = sa.select(api_keys).join(principals, principals.c.id == api_keys.c.principal_id)
    if audience is None:
        return query
    own = api_keys.c.principal_id == audience.principal_id
    if audience.own_tenant_id is not None:
        own = sa.and_(own, api_keys.c.tenant_id == audience.own_tenant_id)
    if audience.tenant_id is None:
        return query.where(own)
    tenant_id = audience.tenant_id
    # The tenant's keys: those bound to it, and unbound keys of the agents and services it owns. A
    # person's unbound keys span all their tenants: they are theirs alone.
    of_tenant = sa.or_(
        api_keys.c.tenant_id == tenant_id,
        sa.and_(api_keys.c.tenant_id.is_(None), principals.c.tenant_id == tenant_id),
    )
    manageable = sa.or_(memberships.c.role.is_(None), memberships.c.role.in_(sorted(audience.roles)))
    return query.outerjoin(
        memberships,
        sa.and_(memberships.c.principal_id == api_keys.c.principal_id, memberships.c.tenant_id == tenant_id),
    ).where(sa.or_(own, sa.and_(of_tenant, manageable)))


def _record(row: Any) -> KeyRecord:
    return KeyRecord(_key_info(row), row.name, row.created_at, row.last_used_at, row.revoked_at, row.parent_key_id)


async def list_keys(
    conn: Connection,
    *,
    audience: KeyAudience | None,
    principal_id: str | None,
    tenant_id: str | None = None,
    after_id: str | None,
    limit: int,
) -> list[KeyRecord]:
    """Keys in ``audience`` (None: all), optionally one principal's or bound to one tenant, by id."""
    query = _visible_keys(audience).order_by(api_keys.c.id).limit(limit)
    if principal_id is not None:
        query = query.where(api_keys.c.principal_id == principal_id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    if after_id is not None:
        query = query.where(api_keys.c.id > after_id)
    return [_record(r) for r in (await conn.execute(query)).all()]


async def get_key(conn: Connection, *, audience: KeyAudience | None, key_id: str) -> KeyRecord:
    """One key in ``audience`` (None: any key).

    Raises:
        NotFound: no such key, or one the caller may not manage (the same answer).
    """
    row = (await conn.execute(_visible_keys(audience).where(api_keys.c.id == key_id))).first()
    if row is None:
        raise NotFound(
            f"no API key {key_id!r} that you may manage", hint="List the keys you may manage with keys_list."
        )
    return _record(row)


async def revoke_key(conn: Connection, *, audience: KeyAudience | None, key_id: str) -> tuple[KeyRecord, int]:
    """Revoke a key now, and every key minted from it, transitively. Revoking twice keeps the first
    revocation time.

    Returns:
        The key as revoked, and how many keys this call revoked (itself and descendants).

    Raises:
        NotFound: no such key in ``audience`` (None: any key).
    """
    await get_key(conn, audience=audience, key_id=key_id)
    await _lock_lineage(conn, key_id)
    tree = sa.select(api_keys.c.id).where(api_keys.c.id == key_id).cte("descendants", recursive=True)
    tree = tree.union_all(sa.select(api_keys.c.id).where(api_keys.c.parent_key_id == tree.c.id))
    # Read, then update by id (the driver reports no row count for a statement opening with WITH).
    # With the lineage locked no key can be minted below this one in between.
    ids = (await conn.execute(sa.select(tree.c.id))).scalars().all()
    revoked = await conn.execute(
        api_keys.update().where(api_keys.c.id.in_(ids), api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return await get_key(conn, audience=None, key_id=key_id), int(revoked.rowcount)
