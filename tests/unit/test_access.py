from __future__ import annotations

import getpass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scalemule.core.access import (
    KIND_PERMISSIONS,
    PERMISSIONS,
    PROTECTED_WRITE,
    ROLES,
    Grant,
    KeyInfo,
    KeyTerms,
    Principal,
    Tenant,
    advice,
    allowed,
    check_can_give,
    check_can_grant,
    check_grant_pattern,
    child_key_terms,
    did_you_mean,
    effective_permissions,
    grantable_roles,
    grants_reach,
    key_audience,
    may_reach,
    missing,
    needs,
    operator,
    roles_holding,
    unknown_permissions,
)
from scalemule.core.errors import InvalidArgument, PermissionDenied

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
    assert all(not {"tenants:create", "tenants:join"} & granted for granted in ROLES.values())


def test_secret_values_are_revealed_to_owners_and_admins_only() -> None:
    holders = {role for role, granted in ROLES.items() if "secrets:reveal" in granted}
    assert holders == {"owner", "admin"}


def test_a_principal_without_a_role_holds_only_what_its_kind_grants() -> None:
    assert effective_permissions(AGENT, None, None) == frozenset()
    assert effective_permissions(USER, None, None) == {"tenants:create", "tenants:join"}


def test_a_tenant_bound_key_holds_its_role_in_the_tenant_and_nothing_of_its_kind() -> None:
    assert effective_permissions(USER, "owner", None, bound=True) == ROLES["owner"]
    assert effective_permissions(USER, None, None, bound=True) == frozenset()
    assert effective_permissions(USER, "viewer", None) == ROLES["viewer"] | {"tenants:create", "tenants:join"}


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


# --- keys: what a key may mint, whose keys a caller may manage -----------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _key(tenant_id: str | None, expires_at: datetime | None = None) -> KeyInfo:
    return KeyInfo(
        id="key_p", prefix="smk_x", principal_id="usr_1", tenant_id=tenant_id, scopes=None, expires_at=expires_at
    )


def _terms(parent: KeyInfo | None, **overrides: object) -> KeyTerms:
    arguments: dict[str, object] = {
        "tenant_id": "ten_1",
        "bind_tenant": True,
        "allowed": ROLES["developer"],
        "scopes": None,
        "expires_in_days": None,
        "now": NOW,
    }
    return child_key_terms(parent, **{**arguments, **overrides})  # type: ignore[arg-type]


def test_a_bound_key_mints_only_keys_bound_to_its_tenant() -> None:
    with pytest.raises(PermissionDenied):
        _terms(_key("ten_1"), bind_tenant=False)
    assert _terms(_key("ten_1")).tenant_id == "ten_1"
    assert _terms(_key(None), bind_tenant=False).tenant_id is None


def test_a_minted_keys_scopes_stay_within_what_the_call_may_give() -> None:
    assert _terms(_key(None)).scopes == ROLES["developer"]
    assert _terms(_key(None), scopes=["config:read"]).scopes == {"config:read"}
    with pytest.raises(PermissionDenied):
        _terms(_key(None), scopes=["secrets:reveal"])
    with pytest.raises(InvalidArgument):
        _terms(_key(None), scopes=["secrets:steal"])


def test_a_minted_key_expires_no_later_than_its_parent() -> None:
    limit = NOW + timedelta(days=7)
    assert _terms(_key(None, limit)).expires_at == limit
    assert _terms(_key(None, limit), expires_in_days=7).expires_at == limit
    with pytest.raises(PermissionDenied):
        _terms(_key(None, limit), expires_in_days=8)
    assert _terms(_key(None)).expires_at is None
    assert _terms(None, expires_in_days=30).expires_at == NOW + timedelta(days=30)


def test_a_minted_key_lives_between_one_and_3650_days() -> None:
    assert _terms(None, expires_in_days=1).expires_at == NOW + timedelta(days=1)
    assert _terms(None, expires_in_days=3650).expires_at == NOW + timedelta(days=3650)
    for days in (0, 3651):
        with pytest.raises(InvalidArgument):
            _terms(None, expires_in_days=days)


def test_key_managers_reach_the_keys_of_roles_they_could_grant() -> None:
    tenant = Tenant(id="ten_1", slug="acme", name="Acme", created_at=NOW)
    developer = key_audience(AGENT, _key("ten_1"), tenant, ROLES["developer"])
    assert developer.tenant_id == "ten_1" and developer.own_tenant_id == "ten_1"
    assert developer.roles == {"developer", "viewer", "worker"}
    assert grantable_roles(ROLES["owner"]) == set(ROLES)
    viewer = key_audience(USER, _key(None), tenant, ROLES["viewer"])
    assert viewer.tenant_id is None and viewer.roles == frozenset() and viewer.own_tenant_id is None
    keyless = key_audience(USER, None, tenant, ROLES["owner"])
    assert keyless.own_tenant_id is None and keyless.tenant_id == "ten_1" and keyless.roles == set(ROLES)


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
    admin = develop | {"members:manage", "secrets:reveal", "envs:write_protected"}
    assert {
        "owner": admin | {"tenants:admin"},
        "admin": admin,
        "developer": develop,
        "viewer": read,
        "worker": {"tenants:read", "config:read", "storage:read", "storage:write", "jobs:read", "jobs:work"},
    } == ROLES
    assert {
        "user": {"tenants:create", "tenants:join"},
        "agent": set(),
        "service": set(),
        "operator": set(PERMISSIONS),
    } == KIND_PERMISSIONS


def test_the_operator_is_the_os_user_and_holds_every_permission_without_a_role() -> None:
    local = operator()
    assert (local.id, local.kind, local.name, local.tenant_id) == ("operator", "operator", getpass.getuser(), None)
    assert effective_permissions(local, None, None) == set(PERMISSIONS)


def test_a_role_and_the_kind_add_up_before_the_scopes_narrow_them() -> None:
    assert effective_permissions(USER, "viewer", None) == ROLES["viewer"] | {"tenants:create", "tenants:join"}
    assert effective_permissions(USER, "viewer", ["tenants:create", "audit:read", "jobs:write"]) == {
        "tenants:create",
        "audit:read",
    }


def test_a_grant_matches_its_env_and_name_globs_and_only_its_permission() -> None:
    grant = Grant("grt_1", "agt_1", None, "secrets:reveal", "prod/IMAGE_*")
    assert grant.matches("secrets:reveal", ("prod", "IMAGE_API_KEY"))
    assert not grant.matches("secrets:reveal", ("dev", "IMAGE_API_KEY"))
    assert not grant.matches("secrets:reveal", ("prod", "image_api_key"))
    assert not grant.matches("secrets:write", ("prod", "IMAGE_API_KEY"))


def test_a_grant_decides_only_for_a_named_target() -> None:
    grants = [Grant("grt_1", "agt_1", None, "secrets:reveal", "prod/IMAGE_API_KEY")]
    assert allowed(frozenset(), grants, "secrets:reveal", target=("prod", "IMAGE_API_KEY"))
    assert not allowed(frozenset(), grants, "secrets:reveal")
    assert not allowed(frozenset(), grants, "secrets:reveal", target=("prod", "DB_PASSWORD"))
    assert may_reach(frozenset(), grants, "secrets:reveal") and not may_reach(frozenset(), [], "secrets:reveal")


def test_a_key_grant_reaches_only_its_key() -> None:
    key = KeyInfo("key_1", "smk_", "agt_1", None, None, None)
    other = KeyInfo("key_2", "smk_", "agt_1", None, None, None)
    assert grants_reach(Grant("grt_1", "agt_1", "key_1", "secrets:reveal", "prod/*"), key)
    assert not grants_reach(Grant("grt_1", "agt_1", "key_1", "secrets:reveal", "prod/*"), other)
    assert grants_reach(Grant("grt_2", "agt_1", None, "secrets:reveal", "prod/*"), other)


def test_a_granter_needs_member_authority_and_the_permission_itself() -> None:
    check_can_give(frozenset({"members:manage", "secrets:reveal"}), "secrets:reveal")
    with pytest.raises(PermissionDenied):
        check_can_give(frozenset({"members:manage"}), "secrets:reveal")
    with pytest.raises(PermissionDenied):
        check_can_give(frozenset({"secrets:reveal"}), "secrets:reveal")
    with pytest.raises(InvalidArgument):
        check_can_give(ROLES["owner"], "secrets:write")


@pytest.mark.parametrize("pattern", ["IMAGE_API_KEY", "prod/", "/X", "Prod/X", "prod/a b", "prod/[ab]"])
def test_a_grant_pattern_must_be_env_slash_name(pattern: str) -> None:
    with pytest.raises(InvalidArgument):
        check_grant_pattern(pattern)


def test_a_grant_pattern_splits_at_its_first_slash_so_a_secret_name_may_hold_slashes() -> None:
    assert check_grant_pattern("prod/team/*") == "prod/team/*"
    grant = Grant("grt_1", "agt_1", None, "secrets:reveal", "prod/team/*")
    assert grant.matches("secrets:reveal", ("prod", "team/API_KEY"))
    assert not grant.matches("secrets:reveal", ("prod", "other/API_KEY"))
    assert not grant.matches("secrets:reveal", ("prod/team", "API_KEY"))


# --- what an action needs, and what a denial names -------------------------------------------------


def test_a_write_into_a_protected_environment_also_needs_the_protected_write_permission() -> None:
    assert needs("config:write") == ("config:write",)
    assert needs("config:write", protected_env=True) == ("config:write", PROTECTED_WRITE)
    assert needs("secrets:write", protected_env=True) == ("secrets:write", PROTECTED_WRITE)
    assert needs("config:read", protected_env=True) == ("config:read",)
    developer = ROLES["developer"]
    assert missing(developer, "secrets:write") == []
    assert missing(developer, "secrets:write", protected_env=True) == [PROTECTED_WRITE]
    assert missing(developer, "secrets:reveal", protected_env=True) == ["secrets:reveal"]
    assert allowed(developer, [], "secrets:write")
    assert not allowed(developer, [], "secrets:write", protected_env=True)
    assert allowed(ROLES["admin"], [], "secrets:write", protected_env=True)


@pytest.mark.parametrize(
    ("lacking", "permission", "tool"),
    [
        pytest.param([PROTECTED_WRITE], "secrets:write", "secrets_set", id="protected-secret"),
        pytest.param([PROTECTED_WRITE], "config:write", "config_promote", id="protected-config"),
        pytest.param(["secrets:write"], "secrets:write", "access_check", id="unprotected-secret"),
        pytest.param(["secrets:reveal"], "secrets:reveal", "access_check", id="other"),
    ],
)
def test_a_denial_names_the_one_tool_that_is_the_next_step(lacking: list[str], permission: str, tool: str) -> None:
    # A protected secret is set there by an owner or admin, never promoted from another environment.
    hint = advice(lacking, permission)
    assert {t for t in ("secrets_set", "config_promote", "access_check") if t in hint} == {tool}


def test_an_unknown_name_is_answered_with_the_nearest_known_one_or_with_nothing() -> None:
    assert "'secrets:reveal'" in did_you_mean("secrets:reveel", PERMISSIONS)
    assert did_you_mean("zzzzzzzz", PERMISSIONS) == ""


def test_the_roles_holding_some_permissions_are_listed_in_role_order() -> None:
    assert roles_holding(ROLES["worker"]) == ["owner", "admin", "developer", "worker"]
    assert roles_holding(["secrets:reveal", PROTECTED_WRITE]) == ["owner", "admin"]
    assert roles_holding(["tenants:create"]) == []
