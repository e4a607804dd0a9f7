from __future__ import annotations

import anyio
import pytest

from tests.conftest import World

pytestmark = pytest.mark.anyio


async def test_every_tenant_starts_with_dev_staging_and_a_protected_prod(world: World) -> None:
    envs = (await world.ok("envs_list", world.agent))["items"]
    assert {e["name"]: e["protected"] for e in envs} == {"dev": False, "staging": False, "prod": True}


async def test_each_write_makes_a_new_version_and_history_keeps_them_all(world: World) -> None:
    first = await world.ok("config_set", world.agent, env="dev", key="model", value="small")
    second = await world.ok("config_set", world.agent, env="dev", key="model", value={"name": "large", "n": 2})
    assert (first["version"], second["version"]) == (1, 2)
    assert (await world.ok("config_get", world.agent, env="dev", key="model"))["value"] == {"name": "large", "n": 2}
    assert (await world.ok("config_get", world.agent, env="dev", key="model", version=1))["value"] == "small"
    await world.ok("config_delete", world.agent, env="dev", key="model")
    assert await world.code("config_get", world.agent, env="dev", key="model") == "not_found"
    history = (await world.ok("config_history", world.agent, env="dev", key="model"))["items"]
    assert [(h["version"], h["deleted"]) for h in history] == [(3, True), (2, False), (1, False)]
    revived = await world.ok("config_set", world.agent, env="dev", key="model", value="again")
    assert revived["version"] == 4


async def test_a_null_value_is_stored_and_read_back_as_null(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="unset", value=None)
    await world.ok("config_set", world.agent, env="dev", key="unset", value=None)
    assert (await world.ok("config_get", world.agent, env="dev", key="unset"))["value"] is None
    assert (await world.ok("config_get", world.agent, env="dev", key="unset", version=1))["value"] is None


async def test_a_stale_expected_version_is_a_conflict_naming_the_current_version(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="flag", value=True, expected_version=0)
    outcome = await world.call("config_set", world.agent, env="dev", key="flag", value=False, expected_version=0)
    assert outcome.error is not None and outcome.error.code == "conflict"
    assert "current version is 1" in outcome.error.message
    await world.ok("config_set", world.agent, env="dev", key="flag", value=False, expected_version=1)


async def test_32_concurrent_sets_with_the_same_expected_version_have_exactly_one_winner(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="counter", value=0)
    codes: list[str | None] = []

    async def attempt(i: int) -> None:
        outcome = await world.call("config_set", world.agent, env="dev", key="counter", value=i, expected_version=1)
        codes.append(None if outcome.error is None else outcome.error.code)

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(attempt, i)
    assert codes.count(None) == 1
    assert codes.count("conflict") == 31
    assert (await world.ok("config_get", world.agent, env="dev", key="counter"))["version"] == 2


async def test_list_pages_through_keys_under_a_prefix(world: World) -> None:
    for i in range(5):
        await world.ok("config_set", world.agent, env="dev", key=f"features.f{i}", value=i)
    await world.ok("config_set", world.agent, env="dev", key="other", value=1)
    seen: list[str] = []
    cursor = None
    while True:
        page = await world.ok("config_list", world.agent, env="dev", prefix="features.", limit=2, cursor=cursor)
        seen += [item["key"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"features.f{i}" for i in range(5)]


async def test_writing_to_a_protected_environment_needs_admin_or_owner(world: World) -> None:
    assert await world.code("config_set", world.agent, env="prod", key="k", value=1) == "permission_denied"
    await world.ok("config_set", world.owner, env="prod", key="k", value=1)
    assert await world.code("envs_create", world.agent, name="qa2", protected=True) == "permission_denied"
    created = await world.ok("envs_create", world.agent, name="qa")
    assert created == {**created, "name": "qa", "protected": False}
    assert await world.code("envs_create", world.agent, name="qa") == "already_exists"


async def test_access_check_with_an_environment_applies_the_protected_environment_rule(world: World) -> None:
    asked = ["config:read", "config:write", "secrets:write"]
    prod = await world.ok("access_check", world.agent, permissions=asked, env="prod")
    assert prod == {
        "allowed": False,
        "granted": ["config:read"],
        "missing": ["config:write", "secrets:write"],
        "lacking": ["envs:write_protected"],
        "role": "developer",
        "env_protected": True,
        "grants": [],
    }
    dev = await world.ok("access_check", world.agent, permissions=asked, env="dev")
    assert (dev["allowed"], dev["env_protected"], dev["lacking"]) == (True, False, [])
    owner = await world.ok("access_check", world.owner, tenant="acme", permissions=asked, env="prod")
    assert owner["allowed"] is True
    assert await world.code("access_check", world.agent, permissions=asked, env="nope") == "not_found"


async def test_a_key_scoped_without_envs_write_protected_cannot_write_to_a_protected_environment(
    world: World,
) -> None:
    made = await world.ok(
        "keys_create", world.owner, tenant="acme", name="no-prod", scopes=["config:read", "config:write"]
    )
    narrow = made["token"]
    assert await world.code("config_set", narrow, env="prod", key="k", value=1) == "permission_denied"
    check = await world.ok("access_check", narrow, permissions=["config:write"], env="prod")
    assert (check["allowed"], check["lacking"]) == (False, ["envs:write_protected"])
    await world.ok("config_set", narrow, env="dev", key="k", value=1)


async def test_a_refused_protected_write_says_what_is_lacking_and_what_to_do(world: World) -> None:
    outcome = await world.call("secrets_set", world.agent, env="prod", name="API_KEY", value="v")
    assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert "envs:write_protected" in outcome.error.message
    assert outcome.error.hint is not None and "secrets_set" in outcome.error.hint


async def test_diff_lists_keys_only_in_one_side_and_changed_values(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="a", value=1)
    await world.ok("config_set", world.agent, env="dev", key="b", value=2)
    await world.ok("config_set", world.agent, env="staging", key="b", value=3)
    await world.ok("config_set", world.agent, env="staging", key="c", value=4)
    await world.ok("secrets_set", world.agent, env="dev", name="TOKEN", value="s3cr3t-value")
    diff = await world.ok("config_diff", world.agent, from_env="dev", to_env="staging")
    assert {c["name"] for c in diff["only_in_from"]} == {"a", "TOKEN"}
    assert [c["name"] for c in diff["only_in_to"]] == ["c"]
    assert [c["name"] for c in diff["changed"]] == ["b"]
    assert "s3cr3t-value" not in str(diff)


async def test_promote_returns_a_plan_by_default_and_applies_it_on_request(world: World) -> None:
    await world.ok("config_set", world.agent, env="dev", key="model", value="v2")
    await world.ok("secrets_set", world.agent, env="dev", name="API_KEY", value="k-123")
    plan = await world.ok("config_promote", world.agent, from_env="dev", to_env="staging")
    assert plan["dry_run"] is True and plan["applied"] is False
    assert {(s["name"], s["kind"]) for s in plan["steps"]} == {("model", "config"), ("API_KEY", "secret")}
    assert await world.code("config_get", world.agent, env="staging", key="model") == "not_found"
    applied = await world.ok("config_promote", world.agent, from_env="dev", to_env="staging", dry_run=False)
    assert applied["applied"] is True
    assert (await world.ok("config_get", world.agent, env="staging", key="model"))["value"] == "v2"
    revealed = await world.ok("secrets_reveal", world.owner, env="staging", name="API_KEY")
    assert revealed["value"] == "k-123"


async def test_promoting_into_a_protected_environment_needs_admin_or_owner(world: World) -> None:
    await world.ok("config_set", world.agent, env="staging", key="model", value="v2")
    plan = await world.ok("config_promote", world.agent, from_env="staging", to_env="prod")
    assert [s["name"] for s in plan["steps"]] == ["model"]
    code = await world.code("config_promote", world.agent, from_env="staging", to_env="prod", dry_run=False)
    assert code == "permission_denied"
    await world.ok("config_promote", world.owner, from_env="staging", to_env="prod", dry_run=False)
    assert (await world.ok("config_get", world.owner, env="prod", key="model"))["value"] == "v2"


@pytest.mark.parametrize(
    "arguments",
    [
        {"env": "nope", "key": "k", "value": 1},
        {"env": "dev", "key": "bad\nkey", "value": 1},
        {"env": "dev", "key": "tab\tkey", "value": 1},
        {"env": "dev", "key": "k" * 257, "value": 1},
        {"env": "dev", "key": "", "value": 1},
        {"env": "dev", "key": "k", "value": "x" * (64 * 1024 + 1)},
        {"env": "dev", "key": "k", "value": float("nan")},
        {"env": "dev", "key": "k", "value": float("inf")},
        {"env": "dev", "key": "k"},
        {"env": "Dev!", "key": "k", "value": 1},
    ],
)
async def test_bad_config_input_is_refused_with_a_clear_code_and_nothing_is_written(
    world: World, arguments: dict[str, object]
) -> None:
    outcome = await world.call("config_set", world.agent, **arguments)
    assert outcome.error is not None
    assert outcome.error.code in ("invalid_argument", "not_found")
    assert outcome.error.hint
    listed = await world.ok("config_list", world.agent, env="dev")
    assert listed["items"] == []
