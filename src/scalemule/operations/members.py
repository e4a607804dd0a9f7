"""Identity toolset, members: who belongs to a tenant, invitations, leaving."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, model_validator

from scalemule.core import identity, invitations, tenants
from scalemule.core.access import AUTHENTICATED, ROLE_HELP, Principal, check_can_grant
from scalemule.core.errors import NotFound
from scalemule.core.invitations import Invitation
from scalemule.core.pages import paginate
from scalemule.core.tenants import Member
from scalemule.operations.base import (
    Args,
    Call,
    Email,
    Identifier,
    Name,
    PageArgs,
    PrincipalView,
    Result,
    TenantArgs,
    TenantPageArgs,
    TenantView,
)
from scalemule.operations.registry import operation

Role = Annotated[Literal["owner", "admin", "developer", "viewer", "worker"], Field(description=ROLE_HELP)]


class PendingView(Result):
    """A pending invitation as shown in a member listing."""

    id: str
    expires_at: datetime


class MemberView(Result):
    """A member of a tenant, or a person invited who has not answered yet (``invitation`` set)."""

    principal: PrincipalView
    email: str | None
    role: str
    since: datetime
    invitation: PendingView | None

    @classmethod
    def of(cls, member: Member) -> MemberView:
        """View of ``member``."""
        pending = None
        if member.invitation_id is not None and member.expires_at is not None:
            pending = PendingView(id=member.invitation_id, expires_at=member.expires_at)
        return cls(
            principal=PrincipalView.of(member.principal),
            email=member.email,
            role=member.role,
            since=member.created_at,
            invitation=pending,
        )


class MembersPage(Result):
    items: list[MemberView]
    next_cursor: str | None


@operation(
    "members_list", title="List members", permission="members:read", toolset="identity", read_only=True, idempotent=True
)
async def members_list(call: Call, args: TenantPageArgs) -> MembersPage:
    """List the tenant's members and roles, and people invited (with their invitation)."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: tenants.list_members(call.conn, tenant_id=call.tenant_id, after_id=after, limit=n),
        lambda m: m.principal.id,
    )
    return MembersPage(items=[MemberView.of(m) for m in page], next_cursor=next_cursor)


class MembersAddArgs(TenantArgs):
    email: Email | None = Field(default=None, description="A person's email (user created if new).")
    principal_id: Identifier | None = Field(default=None, description="A user, or an agent of this tenant.")
    role: Role = Field(description="Role to grant.")
    name: Name | None = Field(default=None, description="New user's name (default: email).")

    @model_validator(mode="after")
    def _one_of(self) -> MembersAddArgs:
        if (self.email is None) == (self.principal_id is None):
            raise ValueError("give exactly one of email or principal_id")
        return self


@operation("members_add", title="Invite a member", permission="members:manage", toolset="identity", target="email")
async def members_add(call: Call, args: MembersAddArgs) -> MemberView:
    """Invite a person by email or user id; returns the invitation they accept with
    invitations_respond. Agents of this tenant (agents_create) join directly."""
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
    if principal.kind == "user":
        # A person joins only by consent; the tenant's own agents and services need none.
        invitation = await invitations.invite(
            call.conn, tenant_id=call.tenant_id, person=principal, role=args.role, invited_by=call.principal.id
        )
        return MemberView.of(_invited(principal, args.email, invitation))
    await tenants.add_member(call.conn, tenant_id=call.tenant_id, principal_id=principal.id, role=args.role)
    return MemberView.of(await tenants.get_member(call.conn, tenant_id=call.tenant_id, principal_id=principal.id))


def _invited(principal: Principal, email: str | None, invitation: Invitation) -> Member:
    return Member(
        principal=principal,
        email=email,
        role=invitation.role,
        created_at=invitation.created_at,
        invitation_id=invitation.id,
        expires_at=invitation.expires_at,
    )


class MemberArgs(TenantArgs):
    principal_id: Identifier = Field(description="Member's principal id.")


class MembersSetRoleArgs(MemberArgs):
    role: Role = Field(description="New role.")


async def _check_manageable(call: Call, principal_id: str) -> Member:
    member = await tenants.get_member(call.conn, tenant_id=call.tenant_id, principal_id=principal_id)
    check_can_grant(call.permissions, member.role, action="change a member holding")
    return member


@operation(
    "members_set_role",
    title="Change a member's role",
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
    title="Remove a member",
    permission="members:manage",
    toolset="identity",
    destructive=True,
    target="principal_id",
)
async def members_remove(call: Call, args: MemberArgs) -> MemberView:
    """Remove a member or cancel an invitation (not the last owner). Yourself: members_leave."""
    if await tenants.role_in(call.conn, principal_id=args.principal_id, tenant_id=call.tenant_id) is None:
        invitation = await invitations.cancel(call.conn, tenant_id=call.tenant_id, principal_id=args.principal_id)
        if invitation is not None:
            check_can_grant(call.permissions, invitation.role, action="cancel an invitation to")
            person = await identity.get_principal(call.conn, args.principal_id)
            assert person is not None  # invitations are deleted with their principal
            return MemberView.of(_invited(person, None, invitation))
    await _check_manageable(call, args.principal_id)
    return MemberView.of(
        await tenants.remove_member(call.conn, tenant_id=call.tenant_id, principal_id=args.principal_id)
    )


class TenantLeft(Result):
    tenant: TenantView
    role: str = Field(description="The role you had")


@operation("members_leave", title="Leave a tenant", permission=AUTHENTICATED, toolset="identity", destructive=True)
async def members_leave(call: Call, args: TenantArgs) -> TenantLeft:
    """Leave a tenant yourself; the last owner cannot. To remove others: members_remove."""
    member = await tenants.remove_member(
        call.conn, tenant_id=call.tenant_id, principal_id=call.principal.id, leaving=True
    )
    assert call.tenant is not None
    return TenantLeft(tenant=TenantView.of(call.tenant), role=member.role)


# --- invitations -----------------------------------------------------------------------------


class InvitationView(Result):
    """A pending invitation to join a tenant."""

    id: str
    tenant: TenantView
    role: str
    invited_by: str = Field(description="Name of the member who invited you")
    created_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, invitation: Invitation) -> InvitationView:
        """View of ``invitation``."""
        return cls(
            id=invitation.id,
            tenant=TenantView.of(invitation.tenant),
            role=invitation.role,
            invited_by=invitation.invited_by_name or invitation.invited_by,
            created_at=invitation.created_at,
            expires_at=invitation.expires_at,
        )


class InvitationsPage(Result):
    items: list[InvitationView]
    next_cursor: str | None


@operation(
    "invitations_list",
    title="List your invitations",
    permission="tenants:join",
    toolset="identity",
    read_only=True,
    idempotent=True,
)
async def invitations_list(call: Call, args: PageArgs) -> InvitationsPage:
    """Your pending invitations to tenants; answer with invitations_respond."""
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: invitations.pending_for(call.conn, principal_id=call.principal.id, after_id=after, limit=n),
        lambda i: i.id,
    )
    return InvitationsPage(items=[InvitationView.of(i) for i in page], next_cursor=next_cursor)


class InvitationsRespondArgs(Args):
    invitation_id: Identifier = Field(description="From invitations_list.")
    accept: bool = Field(description="false: decline")


class InvitationAnswer(Result):
    invitation: InvitationView
    accepted: bool


@operation(
    "invitations_respond",
    title="Answer an invitation",
    permission="tenants:join",
    toolset="identity",
    target="invitation_id",
)
async def invitations_respond(call: Call, args: InvitationsRespondArgs) -> InvitationAnswer:
    """Accept (join with the invited role) or decline an invitation from invitations_list."""
    invitation = await invitations.respond(
        call.conn, person=call.principal, invitation_id=args.invitation_id, accept=args.accept
    )
    call.audit.tenant_id = invitation.tenant.id  # the tenant's log shows who joined or declined
    return InvitationAnswer(invitation=InvitationView.of(invitation), accepted=args.accept)
