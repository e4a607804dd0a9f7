from __future__ import annotations

from pathlib import Path

import pytest

from scalemule.core.access import (
    KIND_PERMISSIONS,
    PERMISSIONS,
    ROLES,
    Principal,
    check_can_grant,
    effective_permissions,
    unknown_permissions,
)
from scalemule.core.errors import PermissionDenied

USER = Principal(id="usr_1", kind="user", name="alice@example.com")
AGENT = Principal(id="agt_1", kind="agent", name="bot", tenant_id="ten_1", on_behalf_of="usr_1")


def test_every_role_and_kind_grants_only_known_permissions() -> None:
    for granted in [*ROLES.values(), *KIND_PERMISSIONS.values()]:
        assert granted <= set(PERMISSIONS)


def test_roles_nest_from_viewer_up_to_owner() -> None:
    assert ROLES["viewer"] < ROLES["developer"] < ROLES["admin"] < ROLES["owner"]
    assert ROLES["worker"] < ROLES["owner"]


def test_only_users_may_create_tenants_and_no_role_grants_it() -> None:
    assert "tenants:create" in KIND_PERMISSIONS["user"]
    assert "tenants:create" not in KIND_PERMISSIONS["agent"] | KIND_PERMISSIONS["service"]
    assert all("tenants:create" not in granted for granted in ROLES.values())


def test_secret_values_are_revealed_to_owners_and_admins_only() -> None:
    holders = {role for role, granted in ROLES.items() if "secrets:reveal" in granted}
    assert holders == {"owner", "admin"}


def test_a_principal_without_a_role_holds_only_what_its_kind_grants() -> None:
    assert effective_permissions(AGENT, None, None) == frozenset()
    assert effective_permissions(USER, None, None) == {"tenants:create"}


def test_key_scopes_narrow_the_role_and_never_widen_it() -> None:
    scopes = ["config:read", "secrets:reveal", "tenants:admin"]
    assert effective_permissions(AGENT, "viewer", scopes) == {"config:read"}
    assert effective_permissions(AGENT, "developer", None) == ROLES["developer"]


def test_an_empty_scope_list_grants_nothing() -> None:
    assert effective_permissions(USER, "owner", []) == frozenset()


def test_granting_a_role_that_carries_more_than_the_caller_holds_is_denied() -> None:
    with pytest.raises(PermissionDenied):
        check_can_grant(ROLES["admin"], "owner", action="grant")
    with pytest.raises(PermissionDenied):
        check_can_grant(ROLES["developer"], "admin", action="grant")
    with pytest.raises(PermissionDenied):
        check_can_grant(ROLES["worker"], "developer", action="grant")


def test_granting_a_role_within_the_callers_permissions_is_allowed() -> None:
    check_can_grant(ROLES["owner"], "owner", action="grant")
    check_can_grant(ROLES["admin"], "admin", action="grant")
    check_can_grant(ROLES["developer"], "viewer", action="grant")


def test_unknown_permissions_are_reported_in_the_order_given() -> None:
    assert unknown_permissions(["config:read", "nope:x", "secrets:reveal", "Config:Read"]) == ["nope:x", "Config:Read"]


def _documented_roles() -> dict[str, set[str]]:
    """The roles table of docs/concepts.md: role -> the permissions ticked in its column."""
    text = (Path(__file__).parents[2] / "docs" / "concepts.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = next(r for r in rows if r.startswith("| permission | allows | owner"))
    roles = [cell.strip() for cell in header.strip("|").split("|")][2:]
    table: dict[str, set[str]] = {role: set() for role in roles}
    start = rows.index(header) + 1
    for row in rows[start:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) != len(roles) + 2 or not cells[0].startswith("`"):
            break
        for role, mark in zip(roles, cells[2:], strict=True):
            if mark == "✓":
                table[role].add(cells[0].strip("`"))
    return table


def test_every_role_grants_exactly_the_permissions_its_documented_column_ticks() -> None:
    documented = _documented_roles()
    assert set(documented) == set(ROLES) == {"owner", "admin", "developer", "viewer", "worker"}
    for role, granted in ROLES.items():
        assert set(granted) == documented[role], role


def test_the_roles_table_is_the_documented_one_written_out() -> None:
    # The same table, literal, so a change to the docs and the code together still has to change a test.
    read = {"tenants:read", "members:read", "config:read", "secrets:read", "storage:read", "jobs:read", "audit:read"}
    develop = read | {
        "agents:manage",
        "keys:manage",
        "config:write",
        "secrets:write",
        "storage:write",
        "jobs:write",
        "jobs:work",
    }
    admin = develop | {"members:manage", "secrets:reveal"}
    assert {
        "owner": admin | {"tenants:admin"},
        "admin": admin,
        "developer": develop,
        "viewer": read,
        "worker": {"tenants:read", "config:read", "storage:read", "storage:write", "jobs:read", "jobs:work"},
    } == ROLES
    assert {
        "user": {"tenants:create"},
        "agent": set(),
        "service": set(),
        "operator": set(PERMISSIONS),
    } == KIND_PERMISSIONS


def test_the_operator_holds_every_permission_without_a_role() -> None:
    operator = Principal(id="operator", kind="operator", name="root")
    assert effective_permissions(operator, None, None) == set(PERMISSIONS)


def test_a_role_and_the_kind_add_up_before_the_scopes_narrow_them() -> None:
    assert effective_permissions(USER, "viewer", None) == ROLES["viewer"] | {"tenants:create"}
    assert effective_permissions(USER, "viewer", ["tenants:create", "audit:read", "jobs:write"]) == {
        "tenants:create",
        "audit:read",
    }
