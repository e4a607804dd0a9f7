"""Identity toolset: who am I, tenants, members, agents and API keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from scalemule.core import config, grants, identity, tenants
from scalemule.core.access import (
    AUTHENTICATED,
    ROLE_HELP,
    ROLES,
    Grant,
    KeyAudience,
    KeyInfo,
    Tenant,
    allowed,
    check_can_grant,
    child_key_terms,
    grants_reach,
    key_audience,
    missing,
    unknown_permissions,
    unknown_permissions_error,
)
from scalemule.core.errors import InvalidArgument, NotFound, PermissionDenied
from scalemule.core.identity import KeyRecord
from scalemule.core.ids import utcnow
from scalemule.core.pages import paginate
from scalemule.operations.base import (
    Args,
    Call,
    IdempotencyKey,
    Identifier,
    Name,
    PageArgs,
    PrincipalView,
    Result,
    SecretText,
    Slug,
    TenantArgs,
    TenantPageArgs,
    TenantView,
)
from scalemule.operations.grants import GrantView
from scalemule.operations.registry import Resource, operation

Role = Annotated[Literal["owner", "admin", "developer", "viewer", "worker"], Field(description=ROLE_HELP)]


class KeyView(Result):
    """An API key's metadata; the token itself is shown only once, by keys_create."""

    id: str
    prefix: str
    principal_id: str
    tenant_id: str | None
    scopes: list[str] | None = Field(description="null: everything the principal's role grants")
    expires_at: datetime | None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyView:
        """View of ``info``."""
        return cls(
            id=info.id,
            prefix=info.prefix,
            principal_id=info.principal_id,
            tenant_id=info.tenant_id,
            scopes=None if info.scopes is None else sorted(info.scopes),
            expires_at=info.expires_at,
        )


class KeyDetail(KeyView):
    """A key as listed to its managers."""

    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    parent_key_id: str | None
    grants: list[GrantView] = Field(default=[], description="what the key may use beyond its scopes, in this tenant")

    @classmethod
    def of_record(cls, record: KeyRecord, held: Sequence[Grant] = ()) -> KeyDetail:
        """View of ``record``, with the grants among ``held`` that reach it."""
        info = record.info
        return cls(
            **KeyView.of(info).model_dump(),
            name=record.name,
            created_at=record.created_at,
            last_used_at=record.last_used_at,
            revoked_at=record.revoked_at,
            parent_key_id=record.parent_key_id,
            grants=[GrantView.of(g) for g in held if g.principal_id == info.principal_id and grants_reach(g, info)],
        )


# --- whoami / access_check -------------------------------------------------------------------


class WhoamiResult(Result):
    principal: PrincipalView
    on_behalf_of: str | None
    tenant: TenantView | None
    role: str | None
    permissions: list[str]
    key: KeyView | None
    grants: list[GrantView] = Field(description="permissions you hold on named targets only")


@operation(
    "whoami", title="Show who you are", permission=AUTHENTICATED, toolset="identity", read_only=True, idempotent=True
)
async def whoami(call: Call, args: TenantArgs) -> WhoamiResult:
    """Who you are: principal, tenant, role, permissions, key. Call it first; access_check tests
    given permissions."""
    key = call.key
    return WhoamiResult(
        principal=PrincipalView.of(call.principal),
        on_behalf_of=call.principal.on_behalf_of,
        tenant=None if call.tenant is None else TenantView.of(call.tenant),
        role=call.role,
        permissions=sorted(call.permissions),
        key=None if key is None else KeyView.of(key),
        grants=[GrantView.of(g) for g in await call.grants()],
    )


class AccessCheckArgs(TenantArgs):
    permissions: list[Identifier] = Field(min_length=1, max_length=50, description="e.g. ['secrets:reveal']")
    env: Identifier | None = Field(default=None, description="Also apply this environment's rules, e.g. 'prod'.")
    name: Identifier | None = Field(default=None, description="With env: a secret name, to apply grants.")


class AccessCheckResult(Result):
    allowed: bool
    granted: list[str]
    missing: list[str]
    lacking: list[str] = Field(description="what you would need for the missing ones")
    role: str | None
    env_protected: bool | None = Field(description="null without env")
    grants: list[GrantView] = Field(description="your grants of the asked permissions: on env/name only")


@operation(
    "access_check",
    title="Check your permissions",
    permission=AUTHENTICATED,
    toolset="identity",
    read_only=True,
    idempotent=True,
)
async def access_check(call: Call, args: AccessCheckArgs) -> AccessCheckResult:
    """Check whether you hold permissions in a tenant (with env, whether you may use them there) before
    trying a call; whoami lists all."""
    if unknown := unknown_permissions(args.permissions):
        raise unknown_permissions_error(unknown)
    if args.name is not None and args.env is None:
        raise InvalidArgument("name needs env", hint="Pass env too, e.g. env='prod', name='IMAGE_API_KEY'.")
    protected = None
    if args.env is not None:
        protected = (await config.get_environment(call.conn, call.tenant_id, config.check_env_name(args.env))).protected
    held = await call.grants() if call.tenant is not None else []
    target = (args.env, args.name) if args.env is not None and args.name is not None else None
    lacking = {
        p: []
        if allowed(call.permissions, held, p, target=target, protected_env=bool(protected))
        else missing(call.permissions, p, protected_env=bool(protected))
        for p in args.permissions
    }
    return AccessCheckResult(
        allowed=not any(lacking.values()),
        granted=[p for p, lack in lacking.items() if not lack],
        missing=[p for p, lack in lacking.items() if lack],
        lacking=sorted({x for lack in lacking.values() for x in lack}),
        role=call.role,
        env_protected=protected,
        grants=[GrantView.of(g) for g in held if g.permission in args.permissions],
    )


# --- tenants ---------------------------------------------------------------------------------


class TenantsCreateArgs(Args):
    slug: Slug = Field(description="URL-safe id, e.g. 'menugen'.")
    name: Name = Field(description="Display name.")
    idempotency_key: IdempotencyKey | None = None


class TenantRole(Result):
    tenant: TenantView
    role: str


@operation("tenants_create", title="Create a tenant", permission="tenants:create", toolset="identity", target="slug")
async def tenants_create(call: Call, args: TenantsCreateArgs) -> TenantRole:
    """Create a tenant (an isolated workspace) owned by you. Users only. Yours: tenants_list."""
    tenant = await tenants.create_tenant(call.conn, slug=args.slug, name=args.name, owner=call.principal)
    call.audit.tenant_id = tenant.id  # the new tenant's log starts with its creation
    return TenantRole(tenant=TenantView.of(tenant), role="owner")


class TenantsPage(Result):
    items: list[TenantRole]
    next_cursor: str | None


@operation(
    "tenants_list",
    title="List your tenants",
    permission=AUTHENTICATED,
    toolset="identity",
    read_only=True,
    idempotent=True,
)
async def tenants_list(call: Call, args: PageArgs) -> TenantsPage:
    """List the tenants you belong to and your role in each; tenants_get shows one."""
    bound = call.key.tenant_id if call.key is not None else None

    async def fetch(after: str | None, n: int) -> list[tuple[Tenant, str]]:
        # A tenant-bound key sees only its tenant.
        return await tenants.memberships_of(
            call.conn, principal_id=call.principal.id, bound_tenant_id=bound, after_slug=after, limit=n
        )

    page, next_cursor = await paginate(args.cursor, args.limit, fetch, lambda row: row[0].slug)
    return TenantsPage(items=[TenantRole(tenant=TenantView.of(t), role=r) for t, r in page], next_cursor=next_cursor)


@operation(
    "tenants_get",
    title="Show a tenant",
    permission="tenants:read",
    toolset="identity",
    read_only=True,
    idempotent=True,
    resources=(Resource("scalemule://tenants/{tenant}", "A tenant and your role in it", name="tenant"),),
)
async def tenants_get(call: Call, args: TenantArgs) -> TenantRole:
    """Show a tenant and your role in it; tenants_list shows all yours."""
    assert call.tenant is not None and call.role is not None
    return TenantRole(tenant=TenantView.of(call.tenant), role=call.role)


# --- agents ----------------------------------------------------------------------------------


class AgentsCreateArgs(TenantArgs):
    name: Name = Field(description="Unique within the tenant, e.g. 'menu-worker'.")
    role: Role = Field(description="Its role in the tenant.")
    kind: Literal["agent", "service"] = Field(default="agent", description="service: a non-AI account.")
    idempotency_key: IdempotencyKey | None = None


class AgentView(Result):
    principal: PrincipalView
    on_behalf_of: str | None
    role: str


@operation("agents_create", title="Create an agent", permission="agents:manage", toolset="identity", target="name")
async def agents_create(call: Call, args: AgentsCreateArgs) -> AgentView:
    """Create an agent or service account in the tenant, acting for your user; then
    keys_create(principal_id=...). Humans: members_add."""
    check_can_grant(call.permissions, args.role, action="grant")
    human = call.principal.id if call.principal.kind == "user" else call.principal.on_behalf_of
    agent = await identity.create_principal(
        call.conn, kind=args.kind, name=args.name, tenant_id=call.tenant_id, on_behalf_of=human
    )
    await tenants.add_member(call.conn, tenant_id=call.tenant_id, principal_id=agent.id, role=args.role)
    return AgentView(principal=PrincipalView.of(agent), on_behalf_of=human, role=args.role)


# --- keys ------------------------------------------------------------------------------------


class KeysCreateArgs(TenantArgs):
    name: Name = Field(description="What the key is for, e.g. 'worker prod'.")
    scopes: list[Identifier] | None = Field(
        default=None,
        max_length=50,
        description="Narrows the key (default: all you may give); names: scalemule://permissions",
    )
    principal_id: Identifier | None = Field(default=None, description="This tenant's agent or service; default: you.")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="Default: as long as yours.")
    bind_tenant: bool = Field(default=True, description="Key works only in this tenant.")
    idempotency_key: IdempotencyKey | None = None


class KeyCreated(Result):
    key: KeyView
    token: SecretText = Field(description="The API key. Shown once: store it now.")


async def _key_target(call: Call, target_id: str) -> frozenset[str]:
    # The permissions a key for ``target_id`` may carry: the caller's own for itself, else the role
    # of one of the tenant's agents or services, which the caller must be able to grant.
    if target_id == call.principal.id:
        return call.permissions
    target = await identity.get_principal(call.conn, target_id)
    if target is None or target.kind not in ("agent", "service") or target.tenant_id != call.tenant_id:
        raise NotFound(
            f"no agent or service {target_id!r} in this tenant",
            hint="Keys for others go to the tenant's agents and services; users create their own.",
        )
    role = await tenants.role_in(call.conn, principal_id=target_id, tenant_id=call.tenant_id)
    if role is None:
        raise PermissionDenied(
            f"{target.kind} '{target.name}' is not a member of this tenant", hint="members_add it first."
        )
    check_can_grant(call.permissions, role, action="issue a key for a member holding")
    return ROLES[role]


@operation(
    "keys_create", title="Create an API key", permission="keys:manage", toolset="identity", target="principal_id"
)
async def keys_create(call: Call, args: KeysCreateArgs) -> KeyCreated:
    """Issue an API key for yourself or this tenant's agent/service, never wider, longer-lived or less
    bound than yours; the token is shown once."""
    target_id = args.principal_id or call.principal.id
    terms = child_key_terms(
        call.key,
        tenant_id=call.tenant_id,
        bind_tenant=args.bind_tenant,
        allowed=await _key_target(call, target_id),
        scopes=args.scopes,
        expires_in_days=args.expires_in_days,
        now=utcnow(),
    )
    assert call.key is not None  # dispatch authenticated the call with a key
    info, token = await identity.mint_key(
        call.conn, parent=call.key, principal_id=target_id, name=args.name, terms=terms, created_by=call.principal.id
    )
    return KeyCreated(key=KeyView.of(info), token=token)


class KeysListArgs(TenantPageArgs):
    principal_id: Identifier | None = Field(default=None, description="Only this principal's keys.")


class KeysPage(Result):
    items: list[KeyDetail]
    next_cursor: str | None


def _audience(call: Call) -> KeyAudience:
    return key_audience(call.principal, call.key, call.tenant, call.permissions)


@operation(
    "keys_list", title="List API keys", permission=AUTHENTICATED, toolset="identity", read_only=True, idempotent=True
)
async def keys_list(call: Call, args: KeysListArgs) -> KeysPage:
    """List keys you may revoke: yours, and with keys:manage those of members whose role you could
    grant."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: identity.list_keys(
            call.conn, audience=_audience(call), principal_id=args.principal_id, after_id=after, limit=n
        ),
        lambda r: r.info.id,
    )
    held: list[Grant] = []
    if call.tenant is not None:
        owners = sorted({r.info.principal_id for r in page})
        held = await grants.of_principals(call.conn, tenant_id=call.tenant.id, principal_ids=owners)
    return KeysPage(items=[KeyDetail.of_record(r, held) for r in page], next_cursor=next_cursor)


class KeysRevokeArgs(TenantArgs):
    key_id: Identifier = Field(description="Key id (keys_list).")


class KeyRevoked(Result):
    key: KeyDetail
    revoked_keys: int


@operation(
    "keys_revoke",
    title="Revoke an API key",
    permission=AUTHENTICATED,
    toolset="identity",
    destructive=True,
    idempotent=True,
    target="key_id",
)
async def keys_revoke(call: Call, args: KeysRevokeArgs) -> KeyRevoked:
    """Revoke a key (see keys_list) and every key minted from it, at once."""
    record, count = await identity.revoke_key(call.conn, audience=_audience(call), key_id=args.key_id)
    return KeyRevoked(key=KeyDetail.of_record(record), revoked_keys=count)
