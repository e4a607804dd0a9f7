"""Identity toolset: who am I, tenants, members, agents and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from scalemule.core import config, identity, tenants
from scalemule.core.access import (
    AUTHENTICATED,
    ROLES,
    KeyInfo,
    Tenant,
    check_can_grant,
    missing,
    unknown_permissions,
)
from scalemule.core.errors import InvalidArgument, NotFound, PermissionDenied
from scalemule.core.identity import KeyRecord
from scalemule.core.pages import paginate
from scalemule.core.tenants import Member
from scalemule.operations.base import (
    Args,
    Call,
    Email,
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
from scalemule.operations.registry import Resource, operation

Role = Literal["owner", "admin", "developer", "viewer", "worker"]


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

    @classmethod
    def of_record(cls, record: KeyRecord) -> KeyDetail:
        """View of ``record``."""
        info = record.info
        return cls(
            **KeyView.of(info).model_dump(),
            name=record.name,
            created_at=record.created_at,
            last_used_at=record.last_used_at,
            revoked_at=record.revoked_at,
        )


class MemberView(Result):
    """A member of a tenant."""

    principal: PrincipalView
    email: str | None
    role: str
    since: datetime

    @classmethod
    def of(cls, member: Member) -> MemberView:
        """View of ``member``."""
        return cls(
            principal=PrincipalView.of(member.principal),
            email=member.email,
            role=member.role,
            since=member.created_at,
        )


# --- whoami / access_check -------------------------------------------------------------------


class WhoamiResult(Result):
    principal: PrincipalView
    on_behalf_of: str | None
    tenant: TenantView | None
    role: str | None
    permissions: list[str]
    key: KeyView | None


@operation("whoami", permission=AUTHENTICATED, toolset="identity", read_only=True, idempotent=True)
async def whoami(call: Call, args: TenantArgs) -> WhoamiResult:
    """Who you are: principal, tenant, role, effective permissions and API key. Call it first;
    access_check tests specific permissions."""
    key = call.key
    return WhoamiResult(
        principal=PrincipalView.of(call.principal),
        on_behalf_of=call.principal.on_behalf_of,
        tenant=None if call.tenant is None else TenantView.of(call.tenant),
        role=call.role,
        permissions=sorted(call.permissions),
        key=None if key is None else KeyView.of(key),
    )


class AccessCheckArgs(TenantArgs):
    permissions: list[Identifier] = Field(min_length=1, max_length=50, description="e.g. ['secrets:reveal']")
    env: Identifier | None = Field(default=None, description="Also apply this environment's rules, e.g. 'prod'.")


class AccessCheckResult(Result):
    allowed: bool = Field(description="true when every permission asked for is held")
    granted: list[str]
    missing: list[str]
    lacking: list[str] = Field(description="what you would need for the missing ones")
    role: str | None
    env_protected: bool | None = Field(description="null without env")


@operation("access_check", permission=AUTHENTICATED, toolset="identity", read_only=True, idempotent=True)
async def access_check(call: Call, args: AccessCheckArgs) -> AccessCheckResult:
    """Check whether you hold given permissions in a tenant (and, with env, may use them there) before
    attempting a call. Use whoami for the full list."""
    if unknown := unknown_permissions(args.permissions):
        raise InvalidArgument(f"unknown permissions: {', '.join(unknown)}", hint="See docs/security.md for the list.")
    protected = None
    if args.env is not None:
        protected = (await config.get_environment(call.conn, call.tenant_id, config.check_env_name(args.env))).protected
    lacking = {p: missing(call.permissions, p, protected_env=bool(protected)) for p in args.permissions}
    return AccessCheckResult(
        allowed=not any(lacking.values()),
        granted=[p for p, lack in lacking.items() if not lack],
        missing=[p for p, lack in lacking.items() if lack],
        lacking=sorted({x for lack in lacking.values() for x in lack}),
        role=call.role,
        env_protected=protected,
    )


# --- tenants ---------------------------------------------------------------------------------


class TenantsCreateArgs(Args):
    slug: Slug = Field(description="Unique, lowercase: letters, digits, inner hyphens.")
    name: Name
    idempotency_key: IdempotencyKey | None = None


class TenantRole(Result):
    tenant: TenantView
    role: str


@operation("tenants_create", permission="tenants:create", toolset="identity", target="slug")
async def tenants_create(call: Call, args: TenantsCreateArgs) -> TenantRole:
    """Create a tenant (an isolated workspace) with you as its owner. Users only; agents ask a user.

    Use tenants_list to find tenants you already belong to.
    """
    tenant = await tenants.create_tenant(call.conn, slug=args.slug, name=args.name, owner=call.principal)
    call.audit.tenant_id = tenant.id  # the new tenant's log starts with its creation
    return TenantRole(tenant=TenantView.of(tenant), role="owner")


class TenantsPage(Result):
    items: list[TenantRole]
    next_cursor: str | None


@operation("tenants_list", permission=AUTHENTICATED, toolset="identity", read_only=True, idempotent=True)
async def tenants_list(call: Call, args: PageArgs) -> TenantsPage:
    """List the tenants you belong to, with your role in each. Use tenants_get for one tenant."""
    bound = call.key.tenant_id if call.key is not None else None

    async def fetch(after: str | None, n: int) -> list[tuple[Tenant, str]]:
        rows = await tenants.memberships_of(call.conn, principal_id=call.principal.id, after_slug=after, limit=n)
        # A tenant-bound key sees only its tenant.
        return [(t, r) for t, r in rows if bound is None or t.id == bound]

    page, next_cursor = await paginate(args.cursor, args.limit, fetch, lambda row: row[0].slug)
    return TenantsPage(items=[TenantRole(tenant=TenantView.of(t), role=r) for t, r in page], next_cursor=next_cursor)


@operation(
    "tenants_get",
    permission="tenants:read",
    toolset="identity",
    read_only=True,
    idempotent=True,
    resources=(Resource("scalemule://tenants/{tenant}", "A tenant and your role in it"),),
)
async def tenants_get(call: Call, args: TenantArgs) -> TenantRole:
    """Show a tenant and your role in it. Use tenants_list to see all your tenants."""
    assert call.tenant is not None and call.role is not None
    return TenantRole(tenant=TenantView.of(call.tenant), role=call.role)


# --- members ---------------------------------------------------------------------------------


class MembersPage(Result):
    items: list[MemberView]
    next_cursor: str | None


@operation("members_list", permission="members:read", toolset="identity", read_only=True, idempotent=True)
async def members_list(call: Call, args: TenantPageArgs) -> MembersPage:
    """List the tenant's members (users, agents, services) and their roles."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: tenants.list_members(call.conn, tenant_id=call.tenant_id, after_id=after, limit=n),
        lambda m: m.principal.id,
    )
    return MembersPage(items=[MemberView.of(m) for m in page], next_cursor=next_cursor)


class MembersAddArgs(TenantArgs):
    email: Email | None = Field(default=None, description="A user's email; the user is created if new.")
    principal_id: Identifier | None = Field(default=None, description="An existing user or this tenant's agent.")
    role: Role
    name: Name | None = Field(default=None, description="Display name for a new user (default: the email).")

    @model_validator(mode="after")
    def _one_of(self) -> MembersAddArgs:
        if (self.email is None) == (self.principal_id is None):
            raise ValueError("give exactly one of email or principal_id")
        return self


@operation("members_add", permission="members:manage", toolset="identity", target="email")
async def members_add(call: Call, args: MembersAddArgs) -> MemberView:
    """Add a user (email) or agent (principal_id) to the tenant with a role. Existing member:
    members_set_role; new agent: agents_create."""
    check_can_grant(call.permissions, args.role, action="grant")
    if args.email is not None:
        principal = await identity.find_user_by_email(call.conn, args.email)
        if principal is None:
            principal = await identity.create_principal(
                call.conn, kind="user", name=args.name or args.email, email=args.email
            )
    else:
        assert args.principal_id is not None
        found = await identity.get_principal(call.conn, args.principal_id)
        if found is None or (found.kind != "user" and found.tenant_id != call.tenant_id):
            raise NotFound(
                f"no user or agent of this tenant with id {args.principal_id!r}",
                hint="Add users by email; create agents with agents_create.",
            )
        principal = found
    await tenants.add_member(call.conn, tenant_id=call.tenant_id, principal_id=principal.id, role=args.role)
    return MemberView.of(await tenants.get_member(call.conn, tenant_id=call.tenant_id, principal_id=principal.id))


class MemberArgs(TenantArgs):
    principal_id: Identifier


class MembersSetRoleArgs(MemberArgs):
    role: Role


async def _check_manageable(call: Call, principal_id: str) -> Member:
    member = await tenants.get_member(call.conn, tenant_id=call.tenant_id, principal_id=principal_id)
    check_can_grant(call.permissions, member.role, action="change a member holding")
    return member


@operation(
    "members_set_role",
    permission="members:manage",
    toolset="identity",
    idempotent=True,
    target="principal_id",
)
async def members_set_role(call: Call, args: MembersSetRoleArgs) -> MemberView:
    """Change a member's role. The last owner cannot be demoted."""
    await _check_manageable(call, args.principal_id)
    check_can_grant(call.permissions, args.role, action="grant")
    member = await tenants.set_role(call.conn, tenant_id=call.tenant_id, principal_id=args.principal_id, role=args.role)
    return MemberView.of(member)


@operation(
    "members_remove",
    permission="members:manage",
    toolset="identity",
    destructive=True,
    target="principal_id",
)
async def members_remove(call: Call, args: MemberArgs) -> MemberView:
    """Remove a member from the tenant; its keys stop working here. The last owner cannot be removed.

    To only stop one key, use keys_revoke.
    """
    await _check_manageable(call, args.principal_id)
    return MemberView.of(
        await tenants.remove_member(call.conn, tenant_id=call.tenant_id, principal_id=args.principal_id)
    )


# --- agents ----------------------------------------------------------------------------------


class AgentsCreateArgs(TenantArgs):
    name: Name = Field(description="Unique within the tenant, e.g. 'menu-worker'.")
    role: Role
    kind: Literal["agent", "service"] = "agent"
    idempotency_key: IdempotencyKey | None = None


class AgentView(Result):
    principal: PrincipalView
    on_behalf_of: str | None
    role: str


@operation("agents_create", permission="agents:manage", toolset="identity", target="name")
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
        description="Narrow the key to these permissions (default: all you may give).",
    )
    principal_id: Identifier | None = Field(
        default=None, description="An agent or service of this tenant; default: you."
    )
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    bind_tenant: bool = Field(default=True, description="Key works only in this tenant.")
    idempotency_key: IdempotencyKey | None = None


class KeyCreated(Result):
    key: KeyView
    token: SecretText = Field(description="The API key. Shown once: store it now.")


@operation("keys_create", permission="keys:manage", toolset="identity", target="principal_id")
async def keys_create(call: Call, args: KeysCreateArgs) -> KeyCreated:
    """Issue an API key for yourself or the tenant's agent/service; the token is shown once. Scopes only
    narrow. See keys_list, keys_revoke."""
    target_id = args.principal_id or call.principal.id
    if target_id == call.principal.id:
        allowed = call.permissions
    else:
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
        allowed = ROLES[role]
    if args.scopes is not None:
        if unknown := unknown_permissions(args.scopes):
            raise InvalidArgument(
                f"unknown permissions: {', '.join(unknown)}", hint="See docs/security.md for the list."
            )
        if beyond := sorted(set(args.scopes) - allowed):
            raise PermissionDenied(
                f"scopes {', '.join(beyond)} exceed what this key's principal may be given",
                hint="Scopes can only narrow; drop those or ask an owner.",
            )
    scopes = sorted(allowed if args.scopes is None else set(args.scopes))
    info, token = await identity.create_key(
        call.conn,
        principal_id=target_id,
        tenant_id=call.tenant_id if args.bind_tenant else None,
        name=args.name,
        scopes=scopes,
        expires_at=identity.check_expiry_days(args.expires_in_days),
        created_by=call.principal.id,
    )
    return KeyCreated(key=KeyView.of(info), token=token)


class KeysListArgs(TenantPageArgs):
    principal_id: Identifier | None = None


class KeysPage(Result):
    items: list[KeyDetail]
    next_cursor: str | None


@operation("keys_list", permission="keys:manage", toolset="identity", read_only=True, idempotent=True)
async def keys_list(call: Call, args: KeysListArgs) -> KeysPage:
    """List the tenant's API keys (metadata only, never tokens), optionally for one principal."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: identity.list_keys(
            call.conn, tenant_id=call.tenant_id, principal_id=args.principal_id, after_id=after, limit=n
        ),
        lambda r: r.info.id,
    )
    return KeysPage(items=[KeyDetail.of_record(r) for r in page], next_cursor=next_cursor)


class KeysRevokeArgs(TenantArgs):
    key_id: Identifier


@operation(
    "keys_revoke",
    permission="keys:manage",
    toolset="identity",
    destructive=True,
    idempotent=True,
    target="key_id",
)
async def keys_revoke(call: Call, args: KeysRevokeArgs) -> KeyDetail:
    """Revoke an API key at once; calls made with it then fail with unauthenticated."""
    return KeyDetail.of_record(await identity.revoke_key(call.conn, tenant_id=call.tenant_id, key_id=args.key_id))
