"""Concurrent writers of one key: blind writes all land, each as its own version; expected versions
still arbitrate. Run on SQLite and PostgreSQL through the dispatch path, as clients call it."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import anyio
import pytest

from scalemule.core import audit_verify
from tests.conftest import World

pytestmark = pytest.mark.anyio

WRITERS = 16

# The versioned writes of a key, by tool: the argument naming the key, and how a value is written.
WRITES = {
    "config_set": ("key", lambda i: {"n": i}),
    "secrets_set": ("name", lambda i: f"value-{i}"),
}


async def _concurrently(world: World, calls: list[tuple[str, dict[str, Any]]]) -> list[tuple[dict[str, Any], Any]]:
    """Start every call at once; returns (arguments, outcome) pairs in the order they were given."""
    # A key's first call of the minute refreshes its last-used time, locking its row till commit:
    # used once before, the key lets its calls run side by side as they do under sustained load.
    await world.ok("whoami", world.owner)
    outcomes: list[Any] = [None] * len(calls)

    async def one(i: int, operation: str, arguments: dict[str, Any]) -> None:
        outcomes[i] = await world.call(operation, world.owner, **arguments)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for i, (operation, arguments) in enumerate(calls):
                group.start_soon(one, i, operation, arguments)
    return [(arguments, outcome) for (_, arguments), outcome in zip(calls, outcomes, strict=True)]


async def _chain_verifies(world: World) -> None:
    runtime = world.dispatcher.runtime
    report, _ = await audit_verify.verify_stored(runtime.db, runtime.notary, world.made.tenant.id)
    assert report.ok, report


@pytest.mark.parametrize("tool", list(WRITES))
async def test_sixteen_blind_writers_of_one_key_all_succeed_each_with_its_own_version(world: World, tool: str) -> None:
    field, value = WRITES[tool]
    calls = [(tool, {"env": "dev", field: "shared", "value": value(i)}) for i in range(WRITERS)]
    done = await _concurrently(world, calls)
    assert [outcome.error for _, outcome in done] == [None] * WRITERS
    by_version = {outcome.result["version"]: arguments["value"] for arguments, outcome in done}
    assert sorted(by_version) == list(range(1, WRITERS + 1))
    if tool == "config_set":
        history = await world.ok("config_history", world.owner, env="dev", key="shared", limit=100)
        assert [(h["version"], h["value"]) for h in history["items"]] == sorted(by_version.items(), reverse=True)
        current = await world.ok("config_get", world.owner, env="dev", key="shared")
        assert (current["version"], current["value"]) == (WRITERS, by_version[WRITERS])
    else:
        kept = await world.ok("secrets_versions", world.owner, env="dev", name="shared")
        newest = [v["version"] for v in kept["items"]]
        assert newest == list(range(WRITERS, WRITERS - len(newest), -1))
        for version in newest:
            revealed = await world.ok("secrets_reveal", world.owner, env="dev", name="shared", version=version)
            assert revealed["value"] == by_version[version]
    await _chain_verifies(world)


@pytest.mark.parametrize("tool", list(WRITES))
async def test_sixteen_blind_writers_of_sixteen_keys_of_one_tenant_all_succeed(world: World, tool: str) -> None:
    field, value = WRITES[tool]
    calls = [(tool, {"env": "dev", field: f"key-{i}", "value": value(i)}) for i in range(WRITERS)]
    done = await _concurrently(world, calls)
    assert [(outcome.error, outcome.result["version"]) for _, outcome in done] == [(None, 1)] * WRITERS
    await _chain_verifies(world)


@pytest.mark.parametrize("tool", list(WRITES))
async def test_sixteen_creators_expecting_no_key_have_exactly_one_winner(world: World, tool: str) -> None:
    field, value = WRITES[tool]
    calls = [(tool, {"env": "dev", field: "fresh", "value": value(i), "expected_version": 0}) for i in range(WRITERS)]
    done = await _concurrently(world, calls)
    codes = [None if outcome.error is None else outcome.error.code for _, outcome in done]
    assert (codes.count(None), codes.count("conflict")) == (1, WRITERS - 1)
    assert [outcome.result["version"] for _, outcome in done if outcome.error is None] == [1]


async def test_concurrent_sets_and_deletes_of_one_key_leave_a_gapless_history(world: World) -> None:
    calls = [
        ("config_set", {"env": "dev", "key": "flip", "value": i})
        if i % 2 == 0
        else ("config_delete", {"env": "dev", "key": "flip"})
        for i in range(WRITERS)
    ]
    done = await _concurrently(world, calls)
    # A delete that finds the key already deleted is the only failure there may be.
    failed = [(arguments, outcome.error.code) for arguments, outcome in done if outcome.error is not None]
    assert all(code == "not_found" and "value" not in arguments for arguments, code in failed), failed
    written = len(done) - len(failed)
    history = await world.ok("config_history", world.owner, env="dev", key="flip", limit=100)
    assert [h["version"] for h in history["items"]] == list(range(written, 0, -1))
    # The history alternates as the calls landed: never a delete of a deleted key.
    deleted = [h["deleted"] for h in reversed(history["items"])]
    assert not any(a and b for a, b in pairwise(deleted))
    await _chain_verifies(world)
