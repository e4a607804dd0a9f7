"""Who may do what: permissions, built-in roles, principals and the rules that combine them.

Effective permissions = (role permissions in the tenant + the principal kind's own), narrowed to key scopes.
An action needs its operation's permission, plus more where it lands matters (``needs``). Anything not
granted is denied. Every rule is here, as data, so ``access_check`` reports exactly the decision a call
gets.
"""

from __future__ import annotations

import difflib
import getpass
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Literal

from scalemule.core.errors import InvalidArgument, PermissionDenied

PrincipalKind = Literal["user", "agent", "service", "operator"]

# Marks operations any authenticated caller may run (whoami, access_check, tenants_list).
AUTHENTICATED = "authenticated"

PERMISSIONS: dict[str, str] = {
    "tenants:create": "create new tenants (users only)",
    "tenants:join": "see and answer invitations to join tenants (users only)",
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
# Held by a user itself, outside any tenant: never part of a role.
_PERSONAL = frozenset({"tenants:create", "tenants:join"})
_TENANT_PERMISSIONS = set(PERMISSIONS) - _PERSONAL

ROLES: dict[str, frozenset[str]] = {
    "owner": frozenset(_TENANT_PERMISSIONS),
    "admin": frozenset(_TENANT_PERMISSIONS - {"tenants:admin"}),
    "developer": frozenset(_DEVELOP),
    "viewer": frozenset(_READ),
    "worker": frozenset({"tenants:read", "config:read", "storage:read", "storage:write", "jobs:read", "jobs:work"}),
}

# What each role is for, in a line: shown where a role is chosen (the full lists: scalemule://permissions).
ROLE_SUMMARY: dict[str, str] = {
    "owner": "everything, the tenant itself included",
    "admin": "everything but changing or deleting the tenant; writes protected envs (prod), reveals secrets",
    "developer": "reads; writes config, secrets, storage and jobs outside protected envs; agents and keys",
    "viewer": "reads only (never secret values)",
    "worker": "claims and runs jobs, reads config, reads and writes storage",
}
ROLE_HELP = "; ".join(f"{role}: {text}" for role, text in ROLE_SUMMARY.items())

# Permissions a principal holds by its kind, outside any tenant.
KIND_PERMISSIONS: dict[str, frozenset[str]] = {
    "user": _PERSONAL,
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


def effective_permissions(
    principal: Principal, role: str | None, scopes: Iterable[str] | None, *, bound: bool = False
) -> frozenset[str]:
    """The permissions a call may use: role and kind permissions, narrowed to key scopes (None: no narrowing).

    A key bound to a tenant acts only inside it, so it holds no kind permission: those act outside any
    tenant (creating one, answering invitations to others).
    """
    granted = (frozenset() if bound else KIND_PERMISSIONS[principal.kind]) | (ROLES[role] if role else frozenset())
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


def advice(lacking: Iterable[str], permission: str | None = None) -> str:
    """What to do about lacking ``lacking`` for an action needing ``permission``: the next step a
    denial names."""
    if PROTECTED_WRITE in lacking and permission == "secrets:write":
        # Never promote a secret: that would copy another environment's credential into this one.
        return (
            "Secrets in a protected environment are set by an owner or admin: ask one to call secrets_set "
            "there with the production value (it is never copied from another environment)."
        )
    if PROTECTED_WRITE in lacking:
        return (
            "Writes to a protected environment need an owner or admin: prepare the change in another "
            "environment and ask one to apply it with config_promote."
        )
    return "Use access_check or whoami to see what you may do, or ask an owner or admin."  # pragma: no mutate


def unknown_permissions_error(unknown: list[str]) -> InvalidArgument:
    """The refusal of unknown permission names, with the nearest known one."""
    return InvalidArgument(
        f"unknown permissions: {', '.join(unknown)}",
        hint=f"{did_you_mean(unknown[0], PERMISSIONS)}Read scalemule://permissions for the list.",
    )


def unknown_permissions(names: Iterable[str]) -> list[str]:
    """The names in ``names`` that are not permissions, in order."""
    return [n for n in names if n not in PERMISSIONS]


def can_grant(caller: frozenset[str], role: str) -> bool:
    """True when the caller holds every permission ``role`` carries: it may grant that role, and
    manage members holding it and their keys."""
    return ROLES[role] <= caller


def grantable_roles(caller: frozenset[str]) -> frozenset[str]:
    """The roles the caller could grant (see ``can_grant``)."""
    return frozenset(role for role in ROLES if can_grant(caller, role))


def check_can_grant(caller: frozenset[str], role: str, *, action: str) -> None:
    """Refuse to hand out a role that carries permissions the caller does not hold itself.

    Raises:
        PermissionDenied: the role would escalate the caller's own rights.
    """
    missing = sorted(ROLES[role] - caller)
    if missing:
        allowed = [r for r in ROLES if can_grant(caller, r)]
        raise PermissionDenied(
            f"cannot {action} role '{role}': it carries {', '.join(missing)}, which you do not hold",
            hint=f"Roles you may give: {', '.join(allowed) or 'none'}; or ask an owner.",
        )


# --- API keys: who may see and stop a key, and what a key may mint ------------------------------


@dataclass(frozen=True)
class KeyAudience:
    """The keys a caller may list and revoke.

    Attributes:
        principal_id: the caller; its own keys are always in the audience.
        own_tenant_id: the caller's key binding. A tenant-bound key reaches only its principal's keys
            bound to that tenant, so a leaked bound key cannot stop its owner's personal key.
        tenant_id: the tenant whose keys the caller manages (it holds ``keys:manage`` there), or None.
        roles: there, the member roles whose keys it may manage: those it could grant. Keys of the
            tenant's principals that are not members (any more) are manageable too.
    """

    principal_id: str
    own_tenant_id: str | None
    tenant_id: str | None
    roles: frozenset[str]


def key_audience(
    principal: Principal, key: KeyInfo | None, tenant: Tenant | None, permissions: frozenset[str]
) -> KeyAudience:
    """Whose keys the caller may list and revoke: its own, and with ``keys:manage`` in the tenant the
    keys of the tenant's principals whose role it could grant (what creating their keys needs)."""
    manages = tenant is not None and "keys:manage" in permissions
    return KeyAudience(
        principal_id=principal.id,
        own_tenant_id=key.tenant_id if key is not None else None,
        tenant_id=tenant.id if manages and tenant is not None else None,
        roles=grantable_roles(permissions) if manages else frozenset(),
    )


@dataclass(frozen=True)
class KeyTerms:
    """What a new key may be: its binding, scopes and expiry, never beyond the key that mints it."""

    tenant_id: str | None
    scopes: frozenset[str]
    expires_at: datetime | None


def child_key_terms(
    parent: KeyInfo | None,
    *,
    tenant_id: str,
    bind_tenant: bool,
    allowed: frozenset[str],
    scopes: Iterable[str] | None,
    expires_in_days: int | None,
    now: datetime,
) -> KeyTerms:
    """The terms of a key minted by ``parent`` (None: the operator) in ``tenant_id``.

    A key never has more reach than the key that minted it: bound at least as tightly, scoped within
    ``allowed`` (the minting call's effective permissions, or the target's role within them), and
    expiring no later. Without ``expires_in_days`` it inherits the parent's expiry.

    Raises:
        PermissionDenied: an unbound key asked of a tenant-bound key, scopes beyond ``allowed``, or an
            expiry after the parent's.
        InvalidArgument: unknown scope names, or days outside 1..3650.
    """
    if parent is not None and parent.tenant_id is not None and not bind_tenant:
        raise PermissionDenied(
            "a tenant-bound key can only mint keys bound to the same tenant",
            hint="Drop bind_tenant=false, or use a key that is not bound to a tenant.",
        )
    if scopes is not None:
        if unknown := unknown_permissions(scopes):
            raise unknown_permissions_error(unknown)
        if beyond := sorted(set(scopes) - allowed):
            raise PermissionDenied(
                f"scopes {', '.join(beyond)} exceed what this key's principal may be given",
                hint=f"Scopes can only narrow: pick from {', '.join(sorted(allowed)) or 'nothing'}; or ask an owner.",
            )
    limit = parent.expires_at if parent is not None else None
    expires_at = limit
    if expires_in_days is not None:
        if not 1 <= expires_in_days <= 3650:
            raise InvalidArgument(
                "expires_in_days must be between 1 and 3650", hint="Omit it for a key that never expires."
            )
        expires_at = now + timedelta(days=expires_in_days)
        if limit is not None and expires_at > limit:
            raise PermissionDenied(
                f"a key cannot outlive the key that mints it, which expires at {limit.isoformat()}",
                hint="Omit expires_in_days to inherit that expiry, or ask for fewer days.",
            )
    return KeyTerms(
        tenant_id=tenant_id if bind_tenant else None,
        scopes=allowed if scopes is None else frozenset(scopes),
        expires_at=expires_at,
    )


# --- Grants: one permission on named targets, narrower than any role -----------------------------

# The permissions a grant may carry. A grant gives its permission on the targets its pattern names
# (``env/name`` for a secret), where a role gives it everywhere.
GRANTABLE: dict[str, str] = {"secrets:reveal": "env/name of secrets, e.g. prod/IMAGE_* (wildcards * ? allowed)"}
# Who may grant: members:manage (the authority over others' reach) and the permission itself, held
# outright through role and key, so a granted permission is never passed on and never widened.
GRANT_AUTHORITY = "members:manage"
_PATTERN_PART = re.compile(r"^[A-Za-z0-9_.:/*?-]{1,256}$")
_ENV_PART = re.compile(r"^[a-z*?][a-z0-9*?-]{0,31}$")


@dataclass(frozen=True)
class Grant:
    """A permission given to a principal (or one of its keys) on the targets ``pattern`` names.

    Attributes:
        id: the grant's id.
        principal_id: who holds it.
        key_id: the one key it reaches, or None: every key of the principal. Grants are not key
            scopes: a key's scopes narrow its role, a grant adds one permission on named targets.
        permission: one of GRANTABLE.
        pattern: ``env/name`` glob, matched case-sensitively (``*`` and ``?``).
    """

    id: str
    principal_id: str
    key_id: str | None
    permission: str
    pattern: str

    def matches(self, permission: str, target: tuple[str, str]) -> bool:
        """True when this grant gives ``permission`` on ``target`` (env, name)."""
        env_glob, name_glob = self.pattern.split("/", 1)
        env, name = target
        return permission == self.permission and fnmatchcase(env, env_glob) and fnmatchcase(name, name_glob)


def grants_reach(grant: Grant, key: KeyInfo | None) -> bool:
    """True when ``grant`` applies to calls made with ``key``."""
    return grant.key_id is None or (key is not None and key.id == grant.key_id)


def allowed(
    held: frozenset[str],
    grants: Iterable[Grant],
    permission: str,
    *,
    target: tuple[str, str] | None = None,
    protected_env: bool = False,
) -> bool:
    """The decision for one action: ``held`` covers it, or (for a grantable permission on ``target``)
    a grant does. Without a target only ``held`` counts."""
    if not missing(held, permission, protected_env=protected_env):
        return True
    return target is not None and any(g.matches(permission, target) for g in grants)


def may_reach(held: frozenset[str], grants: Iterable[Grant], permission: str) -> bool:
    """True when a call needing ``permission`` may reach its handler, which decides per target: it is
    held, or some grant gives it somewhere."""
    return permission in held or any(g.permission == permission for g in grants)


def check_grant_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid ``env/name`` glob.

    Raises:
        InvalidArgument: no ``/``, or characters an environment or secret name cannot hold.
    """
    env, _, name = pattern.partition("/")
    if not (_ENV_PART.match(env) and name and _PATTERN_PART.match(name)):
        raise InvalidArgument(
            f"grant pattern {pattern[:80]!r} is not valid",
            hint="Write env/name with * or ? wildcards, e.g. 'prod/IMAGE_API_KEY' or 'prod/IMAGE_*'.",
        )
    return pattern


def check_can_give(held: frozenset[str], permission: str) -> None:
    """Refuse a grant its granter could not make: never more than the granter holds.

    Raises:
        InvalidArgument: the permission cannot be granted (with a did-you-mean).
        PermissionDenied: the granter lacks GRANT_AUTHORITY or the permission itself.
    """
    if permission not in GRANTABLE:
        raise InvalidArgument(
            f"{permission!r} cannot be granted on named targets",
            hint=f"{did_you_mean(permission, GRANTABLE)}Grantable: {', '.join(GRANTABLE)}. "
            "For wider reach give a role (members_set_role).",
        )
    if lacking := [p for p in (GRANT_AUTHORITY, permission) if p not in held]:
        raise PermissionDenied(
            f"cannot grant {permission!r}: you lack {', '.join(lacking)}",
            hint="A granter needs members:manage and the permission itself (owner or admin); "
            "a permission held only through a grant cannot be passed on. See scalemule://docs/security.",
        )


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``Did you mean 'x'? `` for the known name nearest ``name``, else an empty string."""
    near = difflib.get_close_matches(name, list(known), n=1)
    return f"Did you mean '{near[0]}'? " if near else ""


def roles_holding(permissions: Iterable[str]) -> list[str]:
    """The built-in roles that carry every one of ``permissions``, in ROLES order."""
    wanted = frozenset(permissions)
    return [role for role, held in ROLES.items() if wanted <= held]
