"""Screening a request's credential before a surface reads it (Dispatcher.screen, used by surfaces/http.py)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from scalemule import dispatch
from scalemule.core import tokens
from scalemule.core.errors import InvalidArgument, PermissionDenied, ScaleMuleError
from scalemule.core.ids import utcnow
from scalemule.db.tables import api_keys
from scalemule.dispatch import ErrorBody, Invocation
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio

SOURCE = "203.0.113.7"
OVERSIZED = InvalidArgument("the request body is over the limit", hint="Upload it with a signed URL.")


def _request(credential: str | None, operation: str = "storage_put_object") -> Invocation:
    """A request as the HTTP surface hands it over before reading its body."""
    return Invocation(
        operation,
        {"request_size": "over 1 bytes"},
        credential,
        "http",
        client_name="screened",
        source=SOURCE,
    )


async def _last_used(world: World) -> list[Any]:
    async with world.dispatcher.runtime.db.transaction() as conn:
        return [row.last_used_at for row in await conn.execute(sa.select(api_keys).order_by(api_keys.c.id))]


async def test_a_live_key_is_let_on_and_nothing_is_recorded_or_touched(world: World, probe: StoreProbe) -> None:
    # Never used yet: a screen that refreshed last_used_at would show here.
    assert await _last_used(world) == [None, None]
    before, count = await probe.rows(), await probe.audit_count()
    assert await world.dispatcher.screen(_request(world.agent)) is None
    assert await world.dispatcher.screen(_request(world.owner, "mcp_request")) is None
    assert await probe.rows() == before
    assert await probe.audit_count() == count
    assert await probe.tallied() == 0


async def test_a_refused_credential_is_unauthenticated_and_tallied_under_the_request_s_source(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked = (await world.ok("keys_create", world.owner, name="gone"))["token"]
    key_id = (await world.ok("whoami", revoked))["key"]["id"]
    await world.ok("keys_revoke", world.owner, key_id=key_id)
    mistyped = world.agent[:-1] + ("x" if world.agent[-1] != "x" else "y")
    refused = [None, "", "smk_not-a-key", mistyped, tokens.generate(), revoked]
    count = await probe.audit_count()
    # Refusals recorded at one instant: a loop straddling a minute would fold the first minute's.
    refused_at = utcnow()
    monkeypatch.setattr(dispatch, "utcnow", lambda: refused_at)
    for credential in refused:
        # What the surface would refuse (the body) is never told to a caller it does not know.
        for refusal in (None, OVERSIZED):
            error = await world.dispatcher.screen(_request(credential), refusal)
            assert error is not None and error.code == "unauthenticated", credential
            assert error.hint, credential
    assert await probe.audit_count() == count
    assert await probe.tallied() == 2 * len(refused)
    folded = [e for e in await probe.audit_events() if e["error_code"] == "unauthenticated"]
    assert {(e["operation"], e["transport"], e["outcome"], e["actor_id"]) for e in folded} == {
        ("storage_put_object", "http", "denied", None)
    }
    assert {e["args"]["source"] for e in folded} == {SOURCE}


@pytest.mark.parametrize(
    ("refusal", "outcome"),
    [(OVERSIZED, "error"), (PermissionDenied("not over this surface", hint="Use stdio."), "denied")],
)
async def test_a_live_key_s_refused_request_is_recorded_as_the_caller_s_event_with_the_refusal_s_code(
    world: World, probe: StoreProbe, refusal: ScaleMuleError, outcome: str
) -> None:
    count = await probe.audit_count()
    error = await world.dispatcher.screen(_request(world.agent), refusal)
    assert error == ErrorBody.of(refusal)
    assert await probe.audit_count() == count + 1
    assert await probe.tallied() == 0
    me = await world.ok("whoami", world.agent)
    (event,) = [e for e in await probe.audit_events() if e["client_name"] == "screened"]
    assert {k: event[k] for k in ("operation", "outcome", "error_code", "transport", "permission")} == {
        "operation": "storage_put_object",
        "outcome": outcome,
        "error_code": refusal.code,
        "transport": "http",
        "permission": "storage:write",
    }
    assert (event["actor_id"], event["key_id"]) == (me["principal"]["id"], me["key"]["id"])
    assert event["tenant_id"] == me["tenant"]["id"]
    assert set(event["args"]) == {"request_size"}


async def test_a_refused_request_naming_no_operation_is_recorded_under_the_request(
    world: World, probe: StoreProbe
) -> None:
    error = await world.dispatcher.screen(_request(world.owner, "mcp_request"), OVERSIZED)
    assert error is not None and error.code == "invalid_argument"
    (event,) = [e for e in await probe.audit_events() if e["client_name"] == "screened"]
    assert (event["operation"], event["permission"], event["actor_name"]) == ("mcp_request", None, "alice@example.com")
