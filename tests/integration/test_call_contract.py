"""What dispatch answers: denials, invalid arguments, empty calls, and where tenant-less calls are recorded."""

from __future__ import annotations

import pytest

from scalemule.core import tokens
from scalemule.dispatch import Dispatcher, ErrorBody, Exposure, Invocation
from scalemule.operations import REGISTRY
from tests.conftest import StoreProbe, World
from tests.integration.people import join, user_with_key

pytestmark = pytest.mark.anyio


async def _denied(world: World, operation: str, token: str, **arguments: object) -> ErrorBody:
    outcome = await world.call(operation, token, **arguments)
    assert outcome.error is not None and outcome.error.code == "permission_denied", outcome
    assert "None" not in outcome.error.message
    return outcome.error


async def test_a_denial_by_role_names_the_permission_the_tenant_and_the_role(world: World) -> None:
    _, token = await user_with_key(world, "bob@example.com")
    await join(world, token, by=world.owner, email="bob@example.com", role="viewer")
    error = await _denied(world, "config_set", token, env="dev", key="K", value="v")
    assert error.message.startswith("user 'bob@example.com' lacks 'config:write' in tenant 'acme' (")
    assert "'viewer'" in error.message and tokens.display_prefix(token) not in error.message


async def test_a_denial_by_the_keys_scopes_names_the_key_not_the_role(world: World) -> None:
    narrow = await world.ok("keys_create", world.agent, name="read only", scopes=["config:read"])
    error = await _denied(world, "config_set", narrow["token"], env="dev", key="K", value="v")
    assert error.message.startswith("agent 'acme-agent' lacks 'config:write' in tenant 'acme' (")
    assert narrow["key"]["prefix"] in error.message and "'developer'" not in error.message


async def test_a_scoped_key_denied_what_its_role_lacks_anyway_is_denied_by_the_role(world: World) -> None:
    narrow = await world.ok("keys_create", world.agent, name="read only", scopes=["config:read"])
    error = await _denied(world, "secrets_reveal", narrow["token"], env="dev", name="X")
    assert error.message.startswith("agent 'acme-agent' lacks 'secrets:reveal' in tenant 'acme' (")
    assert "'developer'" in error.message and narrow["key"]["prefix"] not in error.message


async def test_a_denial_outside_any_tenant_names_no_tenant_and_no_role(world: World) -> None:
    error = await _denied(world, "tenants_create", world.agent, slug="mine", name="Mine")
    assert error.message.startswith("agent 'acme-agent' lacks 'tenants:create' (")
    assert "role" not in error.message and "tenant '" not in error.message


async def test_a_kind_permission_denied_to_a_users_key_says_whether_its_binding_or_its_scopes_lacked_it(
    world: World,
) -> None:
    bound = await world.ok("keys_create", world.owner, tenant="acme", name="acme only")
    error = await _denied(world, "tenants_create", bound["token"], slug="mine", name="Mine")
    assert error.message == (
        "user 'alice@example.com' lacks 'tenants:create' (its key is bound to a tenant, and this acts outside it)"
        " for tenants_create"
    )
    narrow = await world.ok(
        "keys_create", world.owner, tenant="acme", name="reader", bind_tenant=False, scopes=["config:read"]
    )
    error = await _denied(world, "tenants_create", narrow["token"], slug="mine", name="Mine")
    assert error.message == (
        f"user 'alice@example.com' lacks 'tenants:create' (its key {narrow['key']['prefix']}… is not scoped for it)"
        " for tenants_create"
    )


# --- invalid arguments: up to five problems by field, and the accepted arguments ----------------------


async def _invalid(world: World, operation: str, **arguments: object) -> ErrorBody:
    outcome = await world.call(operation, world.owner, **arguments)
    assert outcome.error is not None and outcome.error.code == "invalid_argument", outcome
    return outcome.error


async def test_invalid_arguments_list_the_first_five_problems_by_field_and_count_the_rest(world: World) -> None:
    error = await _invalid(world, "whoami", **{f"extra{i}": i for i in range(1, 8)})
    problems = error.message.removeprefix("invalid arguments for whoami: ").split("; ")
    assert [p.split(":")[0] for p in problems[:5]] == [f"extra{i}" for i in range(1, 6)]
    assert problems[4].endswith(" (+2 more)")
    assert "extra6" not in error.message and "extra7" not in error.message
    assert error.hint is not None and error.hint.startswith("Accepted arguments: tenant.")


@pytest.mark.parametrize(("count", "more"), [(5, ""), (6, " (+1 more)")])
async def test_the_rest_is_counted_only_beyond_five_problems(world: World, count: int, more: str) -> None:
    error = await _invalid(world, "whoami", **{f"extra{i}": i for i in range(1, count + 1)})
    problems = error.message.removeprefix("invalid arguments for whoami: ").split("; ")
    assert [p.split(": ", 1)[0] for p in problems] == [f"extra{i}" for i in range(1, 6)]
    # Every problem reads the same ("extra forbidden"); only the last carries the count of the rest.
    assert len({p.split(": ", 1)[1] for p in problems[:4]}) == 1
    assert problems[4] == problems[0].replace("extra1", "extra5") + more


async def test_a_problem_inside_a_list_is_located_by_index_and_one_without_a_field_by_arguments(
    world: World,
) -> None:
    error = await _invalid(world, "access_check", permissions=["config:read", "not a permission"])
    assert error.message.startswith("invalid arguments for access_check: permissions.1: ")
    assert error.hint is not None and error.hint.startswith("Accepted arguments: tenant, permissions, ")
    both = await _invalid(world, "members_add", email="bob@example.com", principal_id="usr_x", role="viewer")
    assert both.message.startswith("invalid arguments for members_add: arguments: ")


# --- where a call that reached no tenant is recorded ------------------------------------------------


async def test_a_call_that_reaches_no_tenant_is_recorded_in_the_keys_tenant_else_the_owners_else_globally(
    world: World, probe: StoreProbe
) -> None:
    globex = await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    bound_elsewhere = await world.ok("keys_create", world.owner, tenant="globex", name="globex only")
    roaming = await world.ok("keys_create", world.owner, tenant="acme", name="roaming", bind_tenant=False)
    agent_roaming = await world.ok(
        "keys_create",
        world.owner,
        tenant="acme",
        name="agent roaming",
        principal_id=world.made.agent.id,
        bind_tenant=False,
    )
    expected = [
        (bound_elsewhere["token"], globex["tenant"]["id"]),  # a user's key bound to globex
        (agent_roaming["token"], world.made.tenant.id),  # an unbound key of an agent acme owns
        (roaming["token"], None),  # a user's unbound key: the global chain
    ]
    for token, tenant_id in expected:
        outcome = await world.call("tenants_get", token, tenant="nowhere")
        assert outcome.error is not None and outcome.error.code == "permission_denied"
        assert (await probe.event(outcome.event_id))["tenant_id"] == tenant_id


async def test_a_call_without_any_arguments_is_a_call_with_none(world: World) -> None:
    outcome = await world.dispatcher.call(Invocation("whoami", None, world.agent, "cli"))
    assert outcome.error is None and outcome.result is not None
    assert outcome.result["principal"]["id"] == world.made.agent.id


async def test_audit_text_is_cut_to_its_columns_and_a_non_text_target_recorded_as_text(
    world: World, probe: StoreProbe
) -> None:
    long = Invocation(
        "x" * 100,
        {},
        world.agent,
        "cli",
        client_name="n" * 300,
        client_version="v" * 300,
        session_id="s" * 300,
        request_id="r" * 300,
    )
    outcome = await world.dispatcher.call(long)
    assert outcome.error is not None and outcome.error.code == "not_found"
    event = await probe.event(outcome.event_id)
    assert (event["operation"], event["client_name"], event["client_version"]) == ("x" * 64, "n" * 200, "v" * 100)
    assert (event["session_id"], event["request_id"]) == ("s" * 100, "r" * 100)
    assert event["args"] == {}  # an unknown tool's arguments: by name and size only, and there are none
    wide = await world.call("config_get", world.agent, env="dev", key="k" * 5000)
    assert (await probe.event(wide.event_id))["target"] == "k" * 1000
    # 1,000 characters of four bytes each would pass the index's limit: cut to 2,000 bytes.
    emoji = await world.call("config_get", world.agent, env="dev", key="\U0001f600" * 1000)
    assert (await probe.event(emoji.event_id))["target"] == "\U0001f600" * 500
    odd = await world.call("config_get", world.agent, env="dev", key=["a", 1])
    assert (await probe.event(odd.event_id))["target"] == "['a', 1]"
    none = await world.call("config_get", world.agent, env="dev")
    assert (await probe.event(none.event_id))["target"] is None


async def test_a_new_tenants_log_starts_with_its_creation(world: World, probe: StoreProbe) -> None:
    outcome = await world.call("tenants_create", world.owner, slug="globex", name="Globex")
    assert outcome.result is not None
    event = await probe.event(outcome.event_id)
    tenant_id = outcome.result["tenant"]["id"]
    assert (event["tenant_id"], event["chain"], event["seq"]) == (tenant_id, tenant_id, 1)


@pytest.mark.parametrize("arguments", [["acme"], "acme", 7])
async def test_arguments_that_are_not_an_object_are_an_invalid_argument(world: World, arguments: object) -> None:
    outcome = await world.dispatcher.call(Invocation("tenants_get", arguments, world.agent, "cli"))
    assert outcome.error is not None and outcome.error.code == "invalid_argument"


async def test_the_operators_cli_reaches_operations_that_are_not_tools(world: World) -> None:
    hidden = [op for op in REGISTRY.values() if not op.tool]
    assert hidden, "expected operations served only as resources and to the CLI"
    for op in hidden:
        outcome = await world.dispatcher.call(Invocation(op.name, {}, world.owner, "cli"))
        assert outcome.error is None or outcome.error.code != "not_found", op.name


async def test_a_read_only_server_and_a_narrow_toolset_each_say_why_a_tool_is_refused(world: World) -> None:
    runtime = world.dispatcher.runtime
    read_only = Dispatcher(runtime, Exposure(toolsets=None, read_only=True))
    narrow = Dispatcher(runtime, Exposure(toolsets=frozenset({"audit"})))
    write = Invocation("config_set", {"env": "dev", "key": "k", "value": 1}, world.agent, "stdio")
    read = Invocation("config_get", {"env": "dev", "key": "k"}, world.agent, "stdio")
    refused = {
        "read-only, write": await read_only.call(write),
        "narrow, write": await narrow.call(write),
        "narrow, read": await narrow.call(read),
    }
    for outcome in refused.values():
        assert outcome.error is not None and outcome.error.code == "permission_denied"
    assert "--read-only" in refused["read-only, write"].error.message  # type: ignore[union-attr]
    for case in ("narrow, write", "narrow, read"):
        message = refused[case].error.message  # type: ignore[union-attr]
        assert "toolset 'config'" in message and "--read-only" not in message, case


async def test_an_empty_operation_name_is_recorded_empty_and_a_long_text_inside_a_target_is_cut(
    world: World, probe: StoreProbe
) -> None:
    empty = await world.dispatcher.call(Invocation("", {}, world.agent, "cli"))
    assert (await probe.event(empty.event_id))["operation"] == ""
    long = await world.call("config_get", world.agent, env="dev", key=["x" * 300])
    assert (await probe.event(long.event_id))["target"] == "['" + "x" * 256 + "…(300 chars)']"
