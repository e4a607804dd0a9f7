"""Secret versions with a lifecycle: destroyed for good, kept per secret, rotated with a grace period."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from scalemule.core import secrets as core_secrets
from scalemule.core.ids import utcnow
from scalemule.db.tables import secret_versions
from scalemule.settings import Settings
from tests.conftest import World
from tests.integration.test_canary import _all_rows_text

pytestmark = pytest.mark.anyio


async def _stored(world: World, name: str, version: int) -> bytes:
    v = secret_versions.c
    async with world.dispatcher.runtime.db.transaction() as conn:
        row = (await conn.execute(sa.select(v.ciphertext).where(v.name == name, v.version == version))).one()
    return bytes(row.ciphertext)


async def test_a_destroyed_version_cannot_be_revealed_by_anyone_and_its_bytes_are_gone(
    world: World, store: Settings
) -> None:
    await world.ok("secrets_set", world.owner, env="dev", name="API", value="old-value")
    await world.ok("secrets_set", world.owner, env="dev", name="API", value="new-value")
    ciphertext = await _stored(world, "API", 1)
    destroyed = await world.ok("secrets_destroy_version", world.agent, env="dev", name="API", version=1)
    assert destroyed["destroyed_at"] is not None and destroyed["destroyed_by"] is not None
    assert await world.code("secrets_reveal", world.owner, env="dev", name="API", version=1) == "failed_precondition"
    assert (await world.ok("secrets_reveal", world.owner, env="dev", name="API"))["value"] == "new-value"
    listed = await world.ok("secrets_versions", world.agent, env="dev", name="API")
    assert [(v["version"], v["destroyed_at"] is not None) for v in listed["items"]] == [(2, False), (1, True)]
    rows = await _all_rows_text(store.url)
    assert repr(ciphertext) not in rows and ciphertext.hex() not in rows


async def test_the_audit_shows_who_destroyed_which_version(world: World) -> None:
    await world.ok("secrets_set", world.owner, env="dev", name="API", value="v1")
    await world.ok("secrets_destroy_version", world.agent, env="dev", name="API", version=1)
    events = await world.ok("audit_query", world.owner, operation="secrets_destroy_version", response_format="detailed")
    (event,) = events["items"]
    assert (event["actor"]["name"], event["target"], event["args"]["version"]) == ("acme-agent", "API", 1)


async def test_a_secret_keeps_only_its_own_max_versions(world: World) -> None:
    for i in range(4):
        await world.ok("secrets_set", world.owner, env="dev", name="SHORT", value=f"v{i}", max_versions=2)
    await world.ok("secrets_set", world.owner, env="dev", name="SHORT", value="v4")  # the setting stays
    listed = await world.ok("secrets_versions", world.agent, env="dev", name="SHORT")
    assert [v["version"] for v in listed["items"]] == [5, 4]
    assert await world.code("secrets_set", world.owner, env="dev", name="SHORT", value="x", max_versions=0) == (
        "invalid_argument"
    )


async def test_rotating_with_no_grace_destroys_the_previous_version_at_once(world: World) -> None:
    await world.ok("secrets_set", world.owner, env="dev", name="ROT", value="first")
    rotated = await world.ok(
        "secrets_rotate", world.agent, env="dev", name="ROT", value="second", destroy_previous_after_seconds=0
    )
    assert rotated["version"] == 2
    assert await world.code("secrets_reveal", world.owner, env="dev", name="ROT", version=1) == "failed_precondition"


async def test_a_scheduled_destruction_is_refused_once_due_and_purged_by_maintenance(world: World) -> None:
    await world.ok("secrets_set", world.owner, env="dev", name="ROT", value="first")
    await world.ok(
        "secrets_rotate", world.agent, env="dev", name="ROT", value="second", destroy_previous_after_seconds=3600
    )
    assert (await world.ok("secrets_reveal", world.owner, env="dev", name="ROT", version=1))["value"] == "first"
    listed = await world.ok("secrets_versions", world.agent, env="dev", name="ROT")
    assert listed["items"][1]["destroy_after"] is not None
    async with world.dispatcher.runtime.db.transaction() as conn:
        assert await core_secrets.purge_due(conn, now=utcnow()) == 0
        assert await core_secrets.purge_due(conn, now=utcnow() + timedelta(hours=2)) == 1
    assert await world.code("secrets_reveal", world.owner, env="dev", name="ROT", version=1) == "failed_precondition"
    assert (await world.ok("secrets_reveal", world.owner, env="dev", name="ROT"))["value"] == "second"


async def test_a_refused_secret_write_in_prod_advises_secrets_not_promotion(world: World) -> None:
    outcome = await world.call("secrets_set", world.agent, env="prod", name="API", value="x")
    assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert outcome.error.hint is not None and "config_promote" not in outcome.error.hint
    assert "secrets_set" in outcome.error.hint
