"""The one dispatch path: authentication, tenant resolution, exposure, rollback and the error contract."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import anyio
import pytest

from scalemule.core import config, identity, tenants
from scalemule.dispatch import Dispatcher, Exposure, Invocation
from scalemule.operations import REGISTRY
from scalemule.operations.base import Call
from scalemule.operations.tasks import TaskView
from scalemule.worker.server_tasks import TaskRunner
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio


async def test_a_call_without_a_key_is_unauthenticated_with_a_next_step(world: World) -> None:
    outcome = await world.call("whoami", None)
    assert outcome.error is not None and outcome.result is None
    assert outcome.error.code == "unauthenticated" and outcome.error.hint
    assert outcome.error.text.startswith("unauthenticated: ")


async def test_a_denial_is_an_error_result_naming_the_missing_permission(world: World) -> None:
    outcome = await world.call("members_add", world.agent, email="x@example.com", role="viewer")
    assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert "members:manage" in outcome.error.message and outcome.error.hint


async def test_an_unknown_tool_is_not_found(world: World) -> None:
    assert await world.code("secrets_steal", world.agent) == "not_found"


async def test_an_operation_served_only_as_a_resource_is_not_a_tool_over_mcp(world: World) -> None:
    hidden = [op for op in REGISTRY.values() if not op.tool]
    if not hidden:
        pytest.skip("every operation is a tool")
    for op in hidden:
        outcome = await world.dispatcher.call(Invocation(op.name, {}, world.agent, "stdio"))
        assert outcome.error is not None and outcome.error.code == "not_found", op.name


async def test_a_tool_outside_the_enabled_toolsets_is_denied(world: World) -> None:
    narrow = Dispatcher(world.dispatcher.runtime, Exposure(toolsets=frozenset({"audit"})))
    outcome = await narrow.call(Invocation("whoami", {}, world.agent, "stdio"))
    assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert {op.toolset for op in narrow.exposed() if op.tool} == {"audit"}
    ok = await narrow.call(Invocation("audit_query", {}, world.agent, "stdio"))
    assert ok.error is None


async def test_read_only_mode_exposes_and_allows_only_read_only_tools(world: World, probe: StoreProbe) -> None:
    read_only = Dispatcher(world.dispatcher.runtime, Exposure(toolsets=None, read_only=True))
    assert all(op.read_only for op in read_only.exposed())
    before = await probe.rows()
    outcome = await read_only.call(Invocation("agents_create", {"name": "x", "role": "viewer"}, world.agent, "stdio"))
    assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert await probe.rows() == before
    assert (await read_only.call(Invocation("whoami", {}, world.agent, "stdio"))).error is None


def test_operations_that_are_not_tools_are_served_whatever_the_toolsets() -> None:
    narrow = Exposure(toolsets=frozenset({"audit"}))
    assert all(narrow.allows(op) for op in REGISTRY.values() if not op.tool and op.read_only)
    assert all(Exposure.parse("default").allows(op) for op in REGISTRY.values() if not op.tool)


async def test_a_bound_key_acts_in_its_tenant_without_naming_it(world: World) -> None:
    assert (await world.ok("tenants_get", world.agent))["tenant"]["slug"] == "acme"


async def test_a_user_in_one_tenant_need_not_name_it(world: World) -> None:
    assert (await world.ok("members_list", world.owner))["items"]


async def test_a_user_in_several_tenants_must_say_which(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    assert await world.code("members_list", world.owner) == "invalid_argument"
    assert (await world.ok("tenants_get", world.owner, tenant="globex"))["tenant"]["slug"] == "globex"
    # whoami needs no tenant: it answers without one.
    assert (await world.ok("whoami", world.owner))["tenant"] is None


async def test_a_bound_key_cannot_act_in_another_tenant_of_its_principal(world: World) -> None:
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    bound = (await world.ok("keys_create", world.owner, tenant="acme", name="acme only"))["token"]
    assert await world.code("members_list", bound, tenant="globex") == "permission_denied"
    assert (await world.ok("members_list", bound, tenant="acme"))["items"]


async def test_a_tenant_argument_that_is_not_a_string_is_an_invalid_argument(world: World) -> None:
    for tenant in (5, ["acme"], {"slug": "acme"}, True):
        assert await world.code("tenants_get", world.agent, tenant=tenant) == "invalid_argument", tenant


async def test_a_user_in_no_tenant_is_told_to_create_one(world: World) -> None:
    async with world.dispatcher.runtime.db.transaction() as conn:
        loner = await identity.create_principal(conn, kind="user", name="loner", email="loner@example.com")
        _, token = await identity.create_key(
            conn, principal_id=loner.id, tenant_id=None, name="t", scopes=None, expires_at=None, created_by=None
        )
    assert await world.code("members_list", token) == "failed_precondition"
    assert (await world.ok("whoami", token))["tenant"] is None
    assert (await world.ok("tenants_list", token))["items"] == []


async def test_a_handler_that_fails_after_writing_leaves_nothing_behind(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = REGISTRY["tenants_create"]

    async def write_then_fail(call: Call, args: Any) -> Any:
        await tenants.create_tenant(call.conn, slug=args.slug, name=args.name, owner=call.principal)
        raise RuntimeError("disk on fire: SELECT * FROM tenants")

    monkeypatch.setitem(REGISTRY, "tenants_create", dataclasses.replace(original, handler=write_then_fail))
    before = await probe.rows()
    count = await probe.audit_count()
    with caplog.at_level(logging.ERROR, logger="scalemule"):
        outcome = await world.call("tenants_create", world.owner, slug="globex", name="Globex")
    assert outcome.error is not None and outcome.error.code == "internal"
    assert "disk on fire" not in outcome.error.text and "SELECT" not in outcome.error.text
    assert outcome.event_id in outcome.error.text
    assert "disk on fire" in caplog.text  # the operator's log has it
    assert await probe.rows() == before
    assert await probe.audit_count() == count + 1
    event = await probe.event(outcome.event_id)
    assert (event["outcome"], event["error_code"]) == ("error", "internal")


async def test_a_domain_error_after_a_write_rolls_the_write_back(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = REGISTRY["tenants_create"]

    async def write_then_collide(call: Call, args: Any) -> Any:
        await tenants.create_tenant(call.conn, slug=args.slug, name=args.name, owner=call.principal)
        await tenants.create_tenant(call.conn, slug=args.slug, name=args.name, owner=call.principal)

    monkeypatch.setitem(REGISTRY, "tenants_create", dataclasses.replace(original, handler=write_then_collide))
    before = await probe.rows()
    assert await world.code("tenants_create", world.owner, slug="globex", name="Globex") == "already_exists"
    assert await probe.rows() == before


async def test_the_result_is_the_json_form_of_the_result_model(world: World) -> None:
    result = await world.ok("tenants_get", world.agent)
    assert isinstance(result["tenant"]["created_at"], str)
    REGISTRY["tenants_get"].result_model.model_validate(result)


async def test_a_task_aware_call_answers_the_json_form_of_its_task_and_the_run_is_recorded_as_its_clients(
    world: World, probe: StoreProbe
) -> None:
    invocation = Invocation(
        "audit_verify", {}, world.agent, "http", client_name="claude-code", client_version="2.1.0", accepts_task=True
    )
    outcome = await world.dispatcher.call(invocation)
    assert outcome.error is None and outcome.task is True and outcome.result is not None
    assert isinstance(outcome.result["created_at"], str)
    task = TaskView.model_validate(outcome.result)
    assert await TaskRunner(world.dispatcher).run_due() == 1
    run = [e for e in await probe.audit_events() if e["request_id"] == task.task_id and e["transport"] == "task"]
    assert [(e["outcome"], e["client_name"], e["client_version"]) for e in run] == [("ok", "claude-code", "2.1.0")]


# A client that takes tasks may call a read that is no task: it still runs apart from writers.
@pytest.mark.parametrize("accepts_task", [False, True])
async def test_a_read_in_progress_does_not_hold_up_a_write_and_both_are_recorded_in_the_order_they_completed(
    world: World, probe: StoreProbe, monkeypatch: pytest.MonkeyPatch, accepts_task: bool
) -> None:
    await world.ok("config_set", world.agent, env="dev", key="model", value="v1")
    entered, release = anyio.Event(), anyio.Event()
    read_entry = config.get

    async def held(*args: Any, **kwargs: Any) -> Any:
        # The read has authenticated and read its entry; it now stays open until released.
        found = await read_entry(*args, **kwargs)
        entered.set()
        await release.wait()
        return found

    monkeypatch.setattr(config, "get", held)
    read: list[Any] = []

    async def reader() -> None:
        arguments = {"env": "dev", "key": "model"}
        invocation = Invocation("config_get", arguments, world.agent, "cli", accepts_task=accepts_task)
        read.append(await world.dispatcher.call(invocation))

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await entered.wait()
        # A guard against a deadlock, not a timing assertion: the write must not wait for the read.
        with anyio.fail_after(30):
            written = await world.ok("config_set", world.agent, env="dev", key="model", value="v2")
        assert not read, "the read finished before it was released"
        release.set()
    (outcome,) = read
    assert outcome.error is None and outcome.result is not None
    assert outcome.result["value"] == "v1" and written["version"] == 2
    # Recorded when each completed: the write, then the read that began before it.
    order = [(e["operation"], e["args"].get("value")) for e in await probe.audit_events() if e["target"] == "model"]
    assert [name for name, _ in order] == ["config_set", "config_set", "config_get"]
