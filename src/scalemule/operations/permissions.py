"""The permission catalogue, served as the ``scalemule://permissions`` resource: what each permission
and role means, and what a grant can give."""

from __future__ import annotations

from scalemule.core.access import AUTHENTICATED, GRANTABLE, PERMISSIONS, ROLE_SUMMARY, ROLES
from scalemule.operations.base import Args, Call, Result
from scalemule.operations.registry import Resource, operation


class RoleView(Result):
    name: str
    summary: str
    permissions: list[str]


class Catalogue(Result):
    permissions: dict[str, str]
    roles: list[RoleView]
    grantable: dict[str, str]


@operation(
    "permissions_get",
    title="Read the permissions",
    permission=AUTHENTICATED,
    toolset="docs",
    read_only=True,
    idempotent=True,
    tool=False,
    resources=(
        Resource(
            "scalemule://permissions", "Every permission, what each role grants, what grants give", name="permissions"
        ),
    ),
)
async def permissions_get(call: Call, args: Args) -> Catalogue:
    """Every permission (for key scopes and access_check), each role's permissions, and grantable ones."""
    return Catalogue(
        permissions=dict(PERMISSIONS),
        roles=[RoleView(name=r, summary=ROLE_SUMMARY[r], permissions=sorted(ROLES[r])) for r in ROLES],
        grantable=dict(GRANTABLE),
    )
