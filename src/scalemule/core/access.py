"""Who may do what: permissions, built-in roles, principals and the rules that combine them.

Effective permissions = (role permissions in the tenant + the principal kind's own), narrowed to key scopes.
An action needs its operation's permission, plus more where it lands matters (``needs``). Anything not
granted is denied. Every rule is here, as data, so ``access_check`` reports exactly the decision a call
gets.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

PrincipalKind = Literal["user", "agent", "service", "operator"]

# Marks operations any authenticated caller may run (whoami, access_check, tenants_list).
AUTHENTICATED = "authenticated"

PERMISSIONS: dict[str, str] = {
    "tenants:create": "create new tenants (users only)",
    "tenants:read": "read the tenant's profile",
    "tenants:admin": "change or delete the tenant itself",
    "members:read": "list members and their roles",
    "members:manage": "add, remove and change the role of members",
    "agents:manage": "create agents and service accounts owned by the tenant",
    "keys:manage": "create, list and revoke API keys for the tenant's principals",
    "config:read": "read configuration values",
    "config:write": "set, delete and promote configuration",
    "secrets:read": "read secret metadata (names, versions), never values",
    "secrets:write": "set and delete secrets",
    "secrets:reveal": "read secret values",
    "storage:read": "read and list objects",
    "storage:write": "write and delete objects",
    "jobs:read": "read and list jobs",
    "jobs:write": "enqueue, cancel and retry jobs",
    "jobs:work": "claim and finish jobs as a worker",
    "audit:read": "read the tenant's audit log",
    "envs:write_protected": "write config and secrets in protected environments, and create them",
}

# Where an action lands can ask for more than its operation's permission: these writes into a
# protected environment (prod by default) also need PROTECTED_WRITE.
PROTECTED_WRITE = "envs:write_protected"
GUARDED_BY_PROTECTION = frozenset({"config:write", "secrets:write"})

_READ = {
    "tenants:read",
    "members:read",
    "config:read",
    "secrets:read",
    "storage:read",
    "jobs:read",
    "audit:read",
}
_DEVELOP = _READ | {
    "agents:manage",
    "keys:manage",
    "config:write",
    "secrets:write",
    "storage:write",
    "jobs:write",
    "jobs:work",
}
_TENANT_PERMISSIONS = set(PERMISSIONS) - {"tenants:create"}

ROLES: dict[str, frozenset[str]] = {
    "owner": frozenset(_TENANT_PERMISSIONS),
    "admin": frozenset(_TENANT_PERMISSIONS - {"tenants:admin"}),
    "developer": frozenset(_DEVELOP),
    "viewer": frozenset(_READ),
    "worker": frozenset({"tenants:read", "config:read", "storage:read", "storage:write", "jobs:read", "jobs:work"}),
}

# Permissions a principal holds by its kind, outside any tenant.
KIND_PERMISSIONS: dict[str, frozenset[str]] = {
    "user": frozenset({"tenants:create"}),
    "agent": frozenset(),
    "service": frozenset(),
    "operator": frozenset(PERMISSIONS),
}


@dataclass(frozen=True)
class Principal:
    """An authenticated actor: a user, an agent, a service account or the local operator."""

    id: str
    kind: PrincipalKind
    name: str
    tenant_id: str | None = None
    on_behalf_of: str | None = None


@dataclass(frozen=True)
class KeyInfo:
    """The API key a call was made with (never the token itself)."""

    id: str
    prefix: str
    principal_id: str
    tenant_id: str | None
    scopes: frozenset[str] | None
    expires_at: datetime | None


@dataclass(frozen=True)
class Tenant:
    """A tenant: the unit of isolation."""

    id: str
    slug: str
    name: str
    created_at: datetime


def operator() -> Principal:
    """The local operator: whoever runs the CLI with direct access to the store."""
    return Principal(id="operator", kind="operator", name=getpass.getuser())


def effective_permissions(principal: Principal, role: str | None, scopes: Iterable[str] | None) -> frozenset[str]:
    """The permissions a call may use: role and kind permissions, narrowed to key scopes (None: no narrowing)."""
    granted = KIND_PERMISSIONS[principal.kind] | (ROLES[role] if role else frozenset())
    return granted if scopes is None else granted & frozenset(scopes)


def needs(permission: str, *, protected_env: bool = False) -> tuple[str, ...]:
    """Every permission an action needs: ``permission`` itself, and PROTECTED_WRITE for a write that
    lands in a protected environment."""
    if protected_env and permission in GUARDED_BY_PROTECTION:
        return (permission, PROTECTED_WRITE)
    return (permission,)


def missing(held: frozenset[str], permission: str, *, protected_env: bool = False) -> list[str]:
    """The permissions an action needs that ``held`` lacks; empty when it is allowed."""
    return [p for p in needs(permission, protected_env=protected_env) if p not in held]


def advice(lacking: Iterable[str]) -> str:
    """What to do about lacking ``lacking``: the next step a denial names."""
    if PROTECTED_WRITE in lacking:
        return (
            "Writes to a protected environment need an owner or admin: prepare the change in another "
            "environment and ask one to apply it (config_promote for config; secrets_set for a secret)."
        )
    return "Use access_check or whoami to see what you may do, or ask an owner or admin."


def unknown_permissions(names: Iterable[str]) -> list[str]:
    """The names in ``names`` that are not permissions, in order."""
    return [n for n in names if n not in PERMISSIONS]


def check_can_grant(caller: frozenset[str], role: str, *, action: str) -> None:
    """Refuse to hand out a role that carries permissions the caller does not hold itself.

    Raises:
        PermissionDenied: the role would escalate the caller's own rights.
    """
    from scalemule.core.errors import PermissionDenied

    missing = sorted(ROLES[role] - caller)
    if missing:
        raise PermissionDenied(
            f"cannot {action} role '{role}': it carries {', '.join(missing)}, which you do not hold",
            hint="Pick a role within your own permissions, or ask an owner.",
        )
