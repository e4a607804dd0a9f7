"""Every operation in the registry, including those added later, keeps the tool contract."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from scalemule.core import identity, tenants
from scalemule.core.access import AUTHENTICATED, PERMISSIONS
from scalemule.dispatch import Exposure, Invocation
from scalemule.operations import REGISTRY, Operation
from scalemule.operations.base import TenantArgs
from scalemule.surfaces import schemas
from scalemule.surfaces.mcp import tool_definition
from tests.conftest import StoreProbe, World

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
DEFAULT_BUDGET = 24_000
ALL_BUDGET = 48_000

OPERATIONS = sorted(REGISTRY)


def _op(name: str) -> Operation:
    return REGISTRY[name]


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_declares_all_four_annotations_with_open_world_false(name: str) -> None:
    annotations = _op(name).annotations
    assert set(annotations) == {"readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"}
    assert all(isinstance(v, bool) for v in annotations.values())
    assert annotations["openWorldHint"] is False
    assert not (annotations["readOnlyHint"] and annotations["destructiveHint"])


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_requires_a_known_permission(name: str) -> None:
    assert _op(name).permission in {*PERMISSIONS, AUTHENTICATED}


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_refuses_unknown_arguments(name: str) -> None:
    assert _op(name).args_model.model_config.get("extra") == "forbid"
    assert _op(name).input_schema.get("additionalProperties") is False


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_is_described_to_the_agent(name: str) -> None:
    assert _op(name).description.strip()


# Arguments whose name says all an agent needs: the server instructions explain paging once, and an
# idempotency key is any string the caller picks.
SELF_EXPLANATORY = frozenset({"limit", "cursor", "idempotency_key"})
SENTENCES = re.compile(r"^[A-Z0-9`].*[.)]$", re.DOTALL)


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_has_a_short_title(name: str) -> None:
    title = _op(name).title
    assert title and len(title) <= 40 and title[0].isupper() and not title.endswith("."), title
    assert tool_definition(_op(name)).title == title


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_description_is_sentences_without_hard_line_breaks(name: str) -> None:
    description = _op(name).description
    assert SENTENCES.match(description), description
    assert description.rstrip(")").endswith("."), description
    assert "\n" not in description.replace("\n\n", ""), description


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_argument_an_agent_chooses_is_described(name: str) -> None:
    properties = _op(name).input_schema.get("properties", {})
    bare = [arg for arg, prop in properties.items() if arg not in SELF_EXPLANATORY and not prop.get("description")]
    assert bare == [], f"{name}: arguments without a description: {bare}"


def test_resource_templates_have_unique_names_that_are_not_tool_names() -> None:
    names = [r.name for op in REGISTRY.values() for r in op.resources]
    assert len(names) == len(set(names))
    assert not set(names) & set(REGISTRY)


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operation_name_is_short_snake_case_without_dots(name: str) -> None:
    assert NAME.match(name) and len(name) <= 64 and "." not in name
    assert _op(name).name == name


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_tenant_scoped_operation_takes_an_optional_tenant(name: str) -> None:
    op = _op(name)
    assert op.tenant_scoped == issubclass(op.args_model, TenantArgs)
    if op.tenant_scoped:
        assert "tenant" in op.input_schema["properties"]
        assert "tenant" not in op.input_schema.get("required", [])


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_operations_schemas_are_valid_json_schema(name: str) -> None:
    op = _op(name)
    jsonschema.Draft202012Validator.check_schema(op.input_schema)
    jsonschema.Draft202012Validator.check_schema(op.output_schema)
    assert op.input_schema["type"] == "object" and op.output_schema["type"] == "object"


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_list_operation_pages_with_limit_and_cursor(name: str) -> None:
    op = _op(name)
    result_fields = set(op.result_model.model_fields)
    if "next_cursor" not in result_fields:
        return
    assert "items" in result_fields
    assert {"limit", "cursor"} <= set(op.args_model.model_fields)
    limit = op.input_schema["properties"]["limit"]
    assert limit.get("maximum") is not None, "limit must be bounded"


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_target_names_an_argument_of_its_operation(name: str) -> None:
    op = _op(name)
    assert op.target is None or op.target in op.args_model.model_fields


def test_the_published_tool_schemas_match_the_registry() -> None:
    stale = schemas.drift(REPO_ROOT)
    assert stale == [], f"run `scalemule schemas` to regenerate: {[str(p) for p in stale]}"


def test_every_published_tool_schema_names_its_tool_permission_and_annotations() -> None:
    for op in REGISTRY.values():
        if op.tool:
            published = json.loads((REPO_ROOT / "tool_schemas" / f"{op.name}.json").read_text())
            assert published["permission"] == op.permission
            assert published["annotations"] == op.annotations
            assert published["inputSchema"] == op.input_schema


def _tools_list_size(exposure: Exposure) -> int:
    tools = [
        tool_definition(op).model_dump(by_alias=True, exclude_none=True, mode="json")
        for op in REGISTRY.values()
        if op.tool and exposure.allows(op)
    ]
    assert tools
    return len(json.dumps({"tools": tools}, separators=(",", ":"), ensure_ascii=False))


def test_the_default_tool_list_stays_under_its_size_budget() -> None:
    size = _tools_list_size(Exposure.parse("default"))
    assert size < DEFAULT_BUDGET, f"default tools/list is {size} characters (budget {DEFAULT_BUDGET})"


def test_the_tool_list_with_every_toolset_stays_under_its_size_budget() -> None:
    size = _tools_list_size(Exposure(toolsets=None))
    assert size < ALL_BUDGET, f"--toolsets all tools/list is {size} characters (budget {ALL_BUDGET})"


# --- One audit event per call, over the whole registry -------------------------------------------


def _invocation(op: Operation, arguments: Any, token: str | None) -> Invocation:
    # Resource-only operations are reached through a resource read, tools through a tool call.
    resource = None if op.tool else f"scalemule://test/{op.name}"
    return Invocation(op.name, arguments, token, "cli", client_name="tests", resource=resource)


async def _call_each(world: World, probe: StoreProbe, arguments: Any, token: str | None) -> dict[str, tuple[str, str]]:
    """Call every operation once; returns {name: (error code or 'ok', outcome)} and checks one event each.

    A refused credential is tallied rather than recorded alone: its outcome reads ``tallied``.
    """
    seen: dict[str, tuple[str, str]] = {}
    for op in REGISTRY.values():
        tallied = await probe.tallied()
        before = await probe.audit_count()
        outcome = await world.dispatcher.call(_invocation(op, arguments, token))
        if outcome.event_id is None:
            assert outcome.error is not None and await probe.tallied() == tallied + 1, op.name
            seen[op.name] = (outcome.error.code, "tallied")
            continue
        assert await probe.audit_count() == before + 1, f"{op.name} did not record exactly one audit event"
        event = await probe.event(outcome.event_id)
        assert event["operation"] == op.name
        seen[op.name] = (outcome.error.code if outcome.error else "ok", event["outcome"])
    return seen


@pytest.mark.anyio
async def test_every_operation_called_without_a_key_is_unauthenticated_and_tallied_once(
    world: World, probe: StoreProbe
) -> None:
    seen = await _call_each(world, probe, {}, None)
    assert seen == {name: ("unauthenticated", "tallied") for name in REGISTRY}


@pytest.mark.anyio
async def test_every_operation_called_with_a_revoked_key_is_unauthenticated_and_tallied_once(
    world: World, probe: StoreProbe
) -> None:
    made = await world.ok("keys_create", world.owner, name="short-lived")
    await world.ok("keys_revoke", world.owner, key_id=made["key"]["id"])
    seen = await _call_each(world, probe, {}, made["token"])
    assert seen == {name: ("unauthenticated", "tallied") for name in REGISTRY}


@pytest.mark.anyio
async def test_every_operation_a_key_is_not_scoped_for_is_denied_and_audited_once(
    world: World, probe: StoreProbe
) -> None:
    nothing = (await world.ok("keys_create", world.owner, name="no scopes", scopes=[]))["token"]
    seen = await _call_each(world, probe, {}, nothing)
    for name, (code, outcome) in seen.items():
        if REGISTRY[name].permission != AUTHENTICATED:
            assert (code, outcome) == ("permission_denied", "denied"), name


@pytest.mark.anyio
async def test_every_operation_given_an_unknown_argument_is_invalid_and_audited_once(
    world: World, probe: StoreProbe
) -> None:
    seen = await _call_each(world, probe, {"no_such_argument": 1}, world.owner)
    assert seen == {name: ("invalid_argument", "error") for name in REGISTRY}


@pytest.mark.anyio
async def test_every_operation_given_arguments_that_are_not_an_object_is_invalid_and_audited_once(
    world: World, probe: StoreProbe
) -> None:
    for arguments in (["a"], "text", 7):
        seen = await _call_each(world, probe, arguments, world.owner)
        assert seen == {name: ("invalid_argument", "error") for name in REGISTRY}, arguments


@pytest.mark.anyio
async def test_naming_another_tenant_is_denied_alike_whether_or_not_it_exists(world: World, probe: StoreProbe) -> None:
    async with world.dispatcher.runtime.db.transaction() as conn:
        bob = await identity.create_principal(conn, kind="user", name="bob", email="bob@example.com")
        await tenants.create_tenant(conn, slug="globex", name="Globex", owner=bob)
    for token in (world.agent, world.owner):
        for op in REGISTRY.values():
            if not op.tenant_scoped:
                continue
            messages = []
            for slug in ("globex", "no-such-tenant"):
                before = await probe.audit_count()
                outcome = await world.dispatcher.call(_invocation(op, {"tenant": slug}, token))
                assert await probe.audit_count() == before + 1, op.name
                assert outcome.error is not None and outcome.error.code == "permission_denied", (op.name, slug)
                messages.append((outcome.error.message.replace(slug, "<slug>"), outcome.error.hint))
            assert messages[0] == messages[1], op.name


@pytest.mark.anyio
async def test_an_unknown_tool_is_not_found_and_audited_once(world: World, probe: StoreProbe) -> None:
    for name in ("no_such_tool", "x" * 10_000, ""):
        before = await probe.audit_count()
        outcome = await world.dispatcher.call(Invocation(name, {}, world.agent, "cli"))
        assert outcome.error is not None and outcome.error.code == "not_found"
        assert await probe.audit_count() == before + 1
        event = await probe.event(outcome.event_id)
        assert event["outcome"] == "error" and event["error_code"] == "not_found"
        assert len(event["operation"]) <= 64


def test_every_tool_of_the_default_list_is_a_tool_of_the_registry() -> None:
    from scalemule.dispatch import DEFAULT_TOOLS

    assert sorted(name for name in DEFAULT_TOOLS if name not in REGISTRY or not REGISTRY[name].tool) == []
