"""Grants (identity toolset): give one permission on named secrets, narrower than any role."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from scalemule.core import grants, identity, tenants
from scalemule.core.access import Grant, check_can_give, check_grant_pattern
from scalemule.core.errors import NotFound
from scalemule.core.pages import paginate
from scalemule.operations.base import Call, IdempotencyKey, Identifier, Result, TenantArgs, TenantPageArgs
from scalemule.operations.registry import operation


class GrantView(Result):
    """A grant: ``permission`` on the targets ``pattern`` names, for a principal or one of its keys."""

    id: str
    principal_id: str
    key_id: str | None = Field(description="null: every key of the principal")
    permission: str
    pattern: str

    @classmethod
    def of(cls, grant: Grant) -> GrantView:
        """View of ``grant``."""
        return cls(
            id=grant.id,
            principal_id=grant.principal_id,
            key_id=grant.key_id,
            permission=grant.permission,
            pattern=grant.pattern,
        )


class GrantDetail(GrantView):
    granted_by: str
    created_at: datetime


class GrantsCreateArgs(TenantArgs):
    principal_id: Identifier = Field(description="The member (e.g. a worker agent) to grant to.")
    key_id: Identifier | None = Field(default=None, description="Only this key of the principal.")
    permission: Literal["secrets:reveal"] = Field(default="secrets:reveal", description="What the grant gives.")
    pattern: str = Field(max_length=300, description="env/name, wildcards * ?: e.g. 'prod/IMAGE_*'")
    idempotency_key: IdempotencyKey | None = None


@operation(
    "grants_create",
    title="Grant a permission on named secrets",
    permission="members:manage",
    toolset="identity",
    target="principal_id",
)
async def grants_create(call: Call, args: GrantsCreateArgs) -> GrantDetail:
    """Give a member secrets:reveal on named secrets only (e.g. a worker's prod/IMAGE_API_KEY) instead
    of a wider role. You must hold it yourself; grants_revoke takes it back."""
    check_can_give(call.permissions, args.permission)
    pattern = check_grant_pattern(args.pattern)
    if await tenants.role_in(call.conn, principal_id=args.principal_id, tenant_id=call.tenant_id) is None:
        raise NotFound(f"no member {args.principal_id!r} in this tenant", hint="See members_list.")
    if args.key_id is not None:
        key = await identity.get_key(call.conn, audience=None, key_id=args.key_id)
        if key.info.principal_id != args.principal_id:
            raise NotFound(
                f"principal {args.principal_id!r} has no key {args.key_id!r}", hint="See keys_list(principal_id=...)."
            )
    grant, at = await grants.create(
        call.conn,
        tenant_id=call.tenant_id,
        principal_id=args.principal_id,
        key_id=args.key_id,
        permission=args.permission,
        pattern=pattern,
        by=call.principal.id,
    )
    return GrantDetail(**GrantView.of(grant).model_dump(), granted_by=call.principal.id, created_at=at)


class GrantsListArgs(TenantPageArgs):
    principal_id: Identifier | None = Field(default=None, description="Only this principal's grants.")


class GrantsPage(Result):
    items: list[GrantDetail]
    next_cursor: str | None


@operation(
    "grants_list", title="List grants", permission="members:read", toolset="identity", read_only=True, idempotent=True
)
async def grants_list(call: Call, args: GrantsListArgs) -> GrantsPage:
    """List the tenant's grants (of one principal, if given); whoami shows your own."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: grants.list_grants(
            call.conn, tenant_id=call.tenant_id, principal_id=args.principal_id, after=after, limit=n
        ),
        lambda row: row[0].id,
    )
    items = [GrantDetail(**GrantView.of(g).model_dump(), granted_by=by, created_at=at) for g, by, at in page]
    return GrantsPage(items=items, next_cursor=next_cursor)


class GrantsRevokeArgs(TenantArgs):
    grant_id: Identifier = Field(description="From grants_list.")


@operation(
    "grants_revoke",
    title="Revoke a grant",
    permission="members:manage",
    toolset="identity",
    destructive=True,
    target="grant_id",
)
async def grants_revoke(call: Call, args: GrantsRevokeArgs) -> GrantView:
    """Revoke a grant (see grants_list); the next call that relied on it is refused."""
    return GrantView.of(await grants.revoke(call.conn, tenant_id=call.tenant_id, grant_id=args.grant_id))
