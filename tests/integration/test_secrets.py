from __future__ import annotations

import itertools
import secrets as random

import anyio
import anyio.lowlevel
import pytest
import sqlalchemy as sa

from scalemule.core import crypto
from scalemule.core import secrets as core_secrets
from scalemule.db.tables import secret_versions
from tests.conftest import World

pytestmark = pytest.mark.anyio

CRYPTO_FIELDS = ("ciphertext", "nonce", "wrapped_key", "key_nonce", "master_key_version")


async def test_secrets_list_shows_metadata_and_never_the_value(world: World) -> None:
    await world.ok("secrets_set", world.agent, env="dev", name="IMAGE_API_KEY", value="sk-live-abc")
    listed = await world.ok("secrets_list", world.agent, env="dev")
    assert [(s["name"], s["version"]) for s in listed["items"]] == [("IMAGE_API_KEY", 1)]
    assert "sk-live-abc" not in str(listed)


async def test_an_agent_cannot_reveal_but_an_owner_can(world: World) -> None:
    await world.ok("secrets_set", world.agent, env="dev", name="DB_PASSWORD", value="hunter2!")
    assert await world.code("secrets_reveal", world.agent, env="dev", name="DB_PASSWORD") == "permission_denied"
    assert (await world.ok("secrets_reveal", world.owner, env="dev", name="DB_PASSWORD"))["value"] == "hunter2!"


async def test_only_the_newest_versions_are_kept(world: World) -> None:
    for i in range(12):
        await world.ok("secrets_set", world.agent, env="dev", name="ROTATING", value=f"value-{i}")
    listed = (await world.ok("secrets_list", world.agent, env="dev"))["items"][0]
    assert (listed["version"], listed["versions_kept"]) == (12, 10)
    assert (await world.ok("secrets_reveal", world.owner, env="dev", name="ROTATING", version=3))["value"] == "value-2"
    assert await world.code("secrets_reveal", world.owner, env="dev", name="ROTATING", version=2) == "not_found"


async def test_deleting_a_secret_removes_every_version(world: World) -> None:
    await world.ok("secrets_set", world.agent, env="dev", name="GONE", value="x1")
    await world.ok("secrets_delete", world.agent, env="dev", name="GONE")
    assert await world.code("secrets_reveal", world.owner, env="dev", name="GONE") == "not_found"
    async with world.dispatcher.runtime.db.transaction() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(secret_versions))).scalar_one()
    assert count == 0


async def test_a_ciphertext_moved_to_any_other_row_fails_to_decrypt(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="beta", name="Beta")
    rows = [
        ("acme", "dev", "A", 1),
        ("acme", "dev", "A", 2),
        ("acme", "dev", "B", 1),
        ("acme", "staging", "A", 1),
        ("beta", "dev", "A", 1),
    ]
    for tenant, env, name, _ in rows:
        await world.ok("secrets_set", world.owner, tenant=tenant, env=env, name=name, value=f"{tenant}/{env}/{name}")
    runtime = world.dispatcher.runtime
    async with runtime.db.transaction() as conn:
        stored = {
            (r.tenant_id, r.env, r.name, r.version): {f: getattr(r, f) for f in CRYPTO_FIELDS}
            for r in await conn.execute(sa.select(secret_versions))
        }
    assert len(stored) == len(rows)
    for (target, fields_of_target), (_, fields_of_source) in itertools.permutations(stored.items(), 2):
        aad = crypto.associated_data(*target[:3], target[3])
        assert crypto.open_sealed(runtime.keyring, crypto.Sealed(**fields_of_target), aad)
        with pytest.raises(crypto.DecryptionFailed):
            crypto.open_sealed(runtime.keyring, crypto.Sealed(**fields_of_source), aad)


async def test_a_swapped_row_is_refused_through_the_tool_not_returned(world: World) -> None:
    await world.ok("secrets_set", world.owner, env="dev", name="A", value="alpha")
    await world.ok("secrets_set", world.owner, env="dev", name="B", value="bravo")
    v = secret_versions.c
    async with world.dispatcher.runtime.db.transaction() as conn:
        b = (await conn.execute(sa.select(secret_versions).where(v.name == "B"))).one()
        await conn.execute(
            secret_versions.update().where(v.name == "A").values(**{f: getattr(b, f) for f in CRYPTO_FIELDS})
        )
    outcome = await world.call("secrets_reveal", world.owner, env="dev", name="A")
    assert outcome.error is not None and outcome.error.code == "internal"
    assert "bravo" not in outcome.error.text


async def test_master_key_rotation_under_concurrent_reads_loses_nothing(world: World) -> None:
    runtime = world.dispatcher.runtime
    values = {f"S{i}": random.token_urlsafe(16) for i in range(30)}
    for name, value in values.items():
        await world.ok("secrets_set", world.owner, env="dev", name=name, value=value)
    failures: list[str] = []
    rotated = anyio.Event()

    async def reader() -> None:
        while not rotated.is_set():
            for name, value in list(values.items())[:5]:
                outcome = await world.call("secrets_reveal", world.owner, env="dev", name=name)
                if outcome.error is not None or outcome.result is None or outcome.result["value"] != value:
                    failures.append(name)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        version, count = await core_secrets.rotate_master_key(runtime.db, runtime.keyring, batch=7)
        rotated.set()
    assert failures == []
    assert (version, count) == (2, 30)
    async with runtime.db.transaction() as conn:
        versions = {r[0] for r in await conn.execute(sa.select(secret_versions.c.master_key_version))}
    assert versions == {2}
    assert list(runtime.keyring.load()) == [2]
    for name, value in values.items():
        assert (await world.ok("secrets_reveal", world.owner, env="dev", name=name))["value"] == value


@pytest.mark.parametrize(
    "arguments",
    [
        {"env": "dev", "name": "bad\x00name", "value": "v"},
        {"env": "dev", "name": "n" * 300, "value": "v"},
        {"env": "dev", "name": "ok", "value": ""},
        {"env": "dev", "name": "ok", "value": "v" * (64 * 1024 + 1)},
        {"env": "missing", "name": "ok", "value": "v"},
        {"env": "dev", "name": "ok", "value": 12},
    ],
)
async def test_bad_secret_input_is_refused_and_nothing_is_written(world: World, arguments: dict[str, object]) -> None:
    outcome = await world.call("secrets_set", world.agent, **arguments)
    assert outcome.error is not None and outcome.error.code in ("invalid_argument", "not_found")
    assert (await world.ok("secrets_list", world.agent, env="dev"))["items"] == []
