from __future__ import annotations

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
