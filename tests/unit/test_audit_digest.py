from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

from scalemule.core.audit import GENESIS_HASH, GLOBAL_CHAIN, AuditEvent


def _event(**changes: Any) -> AuditEvent:
    base = AuditEvent(
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        operation="whoami",
        outcome="ok",
        transport="stdio",
        duration_ms=1.5,
        args={"tenant": "acme"},
        tenant_id="ten_1",
        actor_id="agt_1",
        actor_kind="agent",
        actor_name="bot",
        key_id="key_1",
        on_behalf_of="usr_1",
        client_name="claude",
        client_version="1.0",
        session_id="s",
        request_id="7",
        permission="authenticated",
        target="acme",
        id="evt_1",
        seq=3,
        prev_hash="a" * 64,
    )
    return replace(base, **changes)


def _other(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(microsecond=1)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return f"{value}x"


def test_the_digest_is_stable_for_the_same_event() -> None:
    assert _event().digest() == _event().digest()
    assert len(_event().digest()) == 64


def test_changing_any_recorded_field_changes_the_digest() -> None:
    original = _event()
    for f in fields(AuditEvent):
        if f.name == "hash":
            continue
        changed = replace(original, **{f.name: _other(getattr(original, f.name))})
        assert changed.digest() != original.digest(), f.name


def test_the_digest_does_not_cover_the_hash_it_is_stored_in() -> None:
    assert _event(hash="b" * 64).digest() == _event(hash="").digest()


def test_events_without_a_tenant_go_to_the_global_chain() -> None:
    assert _event(tenant_id=None).chain == GLOBAL_CHAIN
    assert _event().chain == "ten_1"
    assert (
        AuditEvent(at=datetime.now(UTC), operation="x", outcome="ok", transport="cli", duration_ms=0, args={}).prev_hash
        == GENESIS_HASH
    )
