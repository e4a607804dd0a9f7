"""The per-call context handlers use (operations.base.Call): its permission checks, its grants and
its progress reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from scalemule.core.access import ROLES, Grant, Principal, Tenant
from scalemule.core.errors import PermissionDenied
from scalemule.operations.base import Call

AGENT = Principal(id="agt_1", kind="agent", name="bot", tenant_id="ten_1")
ACME = Tenant(id="ten_1", slug="acme", name="Acme", created_at=datetime(2026, 1, 1, tzinfo=UTC))


def _call(
    role: str | None,
    *,
    tenant: Tenant | None = ACME,
    grants: list[Grant] | None = None,
    progress: Any = None,
) -> Call:
    # No database: grants, when given, are taken as already read; reading them otherwise would fail.
    return Call(
        conn=cast(Any, None),
        runtime=cast(Any, None),
        principal=AGENT,
        key=None,
        tenant=tenant,
        role=role,
        permissions=ROLES[role] if role else frozenset(),
        progress=progress,
        _grants=[] if grants is None else [grants],
    )


def _denial(call: Call, permission: str, **options: Any) -> str:
    with pytest.raises(PermissionDenied) as refused:
        call.require(permission, doing="act", **options)
    return refused.value.message


def test_a_call_allows_what_its_role_holds_and_a_protected_write_only_with_envs_write_protected() -> None:
    developer, admin = _call("developer"), _call("admin")
    assert developer.allows("config:write") and developer.allows("secrets:read")
    assert not developer.allows("secrets:reveal") and not developer.allows("tenants:admin")
    assert not developer.allows("config:write", protected_env=True)
    assert developer.allows("config:read", protected_env=True)
    assert admin.allows("config:write", protected_env=True) and admin.allows("secrets:write", protected_env=True)
    assert not _call(None).allows("config:read")


def test_require_passes_what_the_role_holds_and_refuses_a_protected_write_naming_all_it_lacks() -> None:
    developer = _call("developer")
    developer.require("config:write", doing="write")
    developer.require("config:read", doing="read", protected_env=True)
    # The denial names the permissions lacking, the tenant and the role (docs/errors.md).
    assert "lacks 'envs:write_protected' in tenant 'acme' (role 'developer')" in _denial(
        developer, "config:write", protected_env=True
    )
    assert "lacks 'config:write', 'envs:write_protected' in tenant 'acme' (role 'viewer')" in _denial(
        _call("viewer"), "config:write", protected_env=True
    )
    assert "lacks 'secrets:reveal' in tenant 'acme' (role 'developer')" in _denial(developer, "secrets:reveal")
    _call("admin").require("secrets:write", doing="write", protected_env=True)


def test_a_denial_outside_any_tenant_names_no_tenant() -> None:
    assert "agent 'bot' lacks 'jobs:write' (role None) to act" in _denial(_call(None, tenant=None), "jobs:write")


@pytest.mark.anyio
async def test_require_on_passes_a_held_permission_without_reading_grants() -> None:
    admin = _call("admin")  # reading its grants would query its connection, which is None
    await admin.require_on("secrets:reveal", ("prod", "DB_PASSWORD"), doing="reveal it")


@pytest.mark.anyio
async def test_require_on_passes_a_target_a_grant_matches_and_refuses_every_other_naming_it() -> None:
    grant = Grant("grt_1", AGENT.id, None, "secrets:reveal", "prod/IMAGE_*")
    worker = _call("worker", grants=[grant])
    await worker.require_on("secrets:reveal", ("prod", "IMAGE_KEY"), doing="reveal it")
    for target in (("dev", "IMAGE_KEY"), ("prod", "DB_PASSWORD")):
        with pytest.raises(PermissionDenied) as refused:
            await worker.require_on("secrets:reveal", target, doing="reveal it")
        assert f"lacks 'secrets:reveal' on '{'/'.join(target)}' in tenant 'acme' (role 'worker'" in (
            refused.value.message
        )
    with pytest.raises(PermissionDenied) as refused:
        await _call(None, tenant=None).require_on("secrets:reveal", ("prod", "X"), doing="reveal it")
    assert "lacks 'secrets:reveal' on 'prod/X' (role None, no grant matches)" in refused.value.message


def test_a_report_is_passed_on_clamped_to_between_0_and_1_with_its_message() -> None:
    reports: list[tuple[float, str | None]] = []
    call = _call("worker", progress=lambda fraction, message: reports.append((fraction, message)))
    call.report(-0.5, "before")
    call.report(0.25)
    call.report(0.75, "most")
    call.report(1.5, "past")
    assert reports == [(0.0, "before"), (0.25, None), (0.75, "most"), (1.0, "past")]
    _call("worker").report(0.5, "nobody listens")  # an ordinary call has no progress to report to
