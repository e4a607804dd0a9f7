"""The error contract's text as dispatch writes it, how audit text is clipped, and what is exposed."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast

import pytest

from scalemule.core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from scalemule.dispatch import (
    DEFAULT_TOOLS,
    Dispatcher,
    ErrorBody,
    Exposure,
    Invocation,
    RecordedKey,
    _clip,
    canonical_json,
)
from scalemule.operations import REGISTRY
from scalemule.runtime import Runtime


@pytest.mark.parametrize(
    ("message", "hint", "text"),
    [
        ("no key was given", "Create one.", "unauthenticated: no key was given. Create one."),
        ("it ended.", "Retry.", "unauthenticated: it ended. Retry."),
        ("really?", None, "unauthenticated: really?"),
        ("stop!", None, "unauthenticated: stop!"),
        ("no hint", None, "unauthenticated: no hint."),
    ],
)
def test_an_error_reads_code_then_one_sentence_then_the_next_step(message: str, hint: str | None, text: str) -> None:
    assert ErrorBody("unauthenticated", message, hint).text == text


def test_audit_text_is_cut_to_its_column_with_nul_made_visible() -> None:
    assert _clip(None, 10) is None
    assert _clip("abcdef", 4) == "abcd"
    assert _clip("a\x00b", 10) == "a\\x00b"
    # Made visible, then cut again: the escape never overflows the column.
    assert _clip("ab\x00", 4) == "ab\\x"
    assert _clip("\ud800x", 5) == "?x"


def test_audit_text_with_a_byte_budget_is_cut_to_it_never_inside_a_character() -> None:
    assert _clip("🍝" * 1000, 1000, max_bytes=2000) == "🍝" * 500
    assert _clip("a" + "🍝" * 3, 10, max_bytes=6) == "a🍝"
    assert _clip("abcdef", 10, max_bytes=4) == "abcd"
    assert _clip("abcdef", 10, max_bytes=None) == "abcdef"


@pytest.mark.parametrize(
    "value",
    [
        ["storage_put_object", {"key": "k", "content": "QUJD" * (1 << 19), "metadata": {"b": "2", "a": "1"}}],
        ["config_set", {"value": {"z": [1, 2.5, None, True], "é": '🍝 "quoted"\n'}, "env": "prod"}],
        ["x", {"text": ('a "quoted" line\\ with é and 🍝\t\n' * 40_000), "n": -(2**63)}],
        [],
        "",
    ],
    ids=["long-base64", "nested", "long-escaped", "empty-list", "empty-string"],
)
def test_canonical_json_in_pieces_is_the_sorted_compact_json_of_the_value(value: object) -> None:
    assert "".join(canonical_json(value)) == json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- Exposure: which operations a server, or one client's choice, serves --------------------------

AUDIT, CONFIG = frozenset({"audit"}), frozenset({"config"})
NOT_TOOLS = {op.name for op in REGISTRY.values() if not op.tool}


def _server(exposure: Exposure) -> Dispatcher:
    # Choosing what to serve reads no store.
    return Dispatcher(cast(Runtime, None), exposure)


def _tool(name: str, **fields: Any) -> Invocation:
    return Invocation(name, {}, "smk_token", "stdio", **fields)


def test_toolsets_are_all_or_a_comma_list_of_known_names_and_keep_the_read_only_flag() -> None:
    assert Exposure.parse(" all ") == Exposure(None, False)
    assert Exposure.parse("all", read_only=True) == Exposure(None, True)
    assert Exposure.parse(" identity , audit,,") == Exposure(frozenset({"identity", "audit"}), False)
    assert Exposure.parse("default,audit", read_only=True) == Exposure(frozenset({"default", "audit"}), True)


@pytest.mark.parametrize(
    ("value", "nearest"),
    [("identiy", "identity"), ("zzz,identiy", "identity"), ("audit,defualt", "default"), ("alll", "all")],
)
def test_an_unknown_toolset_is_an_invalid_argument_suggesting_the_nearest_name(value: str, nearest: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        Exposure.parse(value)
    assert refused.value.hint is not None and f"Did you mean '{nearest}'?" in refused.value.hint


@pytest.mark.parametrize("value", ["", " , ", "docs", "prompts", "identity,nonsense"])
def test_no_toolset_or_one_that_serves_no_tool_is_an_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument):
        Exposure.parse(value)


def test_the_default_toolset_serves_exactly_the_default_tools_and_every_operation_that_is_no_tool() -> None:
    served = {op.name for op in REGISTRY.values() if Exposure.parse("default").allows(op)}
    assert served == DEFAULT_TOOLS | NOT_TOOLS
    with_audit = {op.name for op in REGISTRY.values() if Exposure.parse("default,audit").allows(op)}
    assert with_audit == served | {op.name for op in REGISTRY.values() if op.toolset == "audit"}


def test_read_only_serves_exactly_the_read_only_operations() -> None:
    assert [op for op in REGISTRY.values() if Exposure(None, True).allows(op)] == [
        op for op in REGISTRY.values() if op.read_only
    ]


def test_a_client_s_choice_of_toolsets_replaces_the_server_s_but_never_lifts_read_only() -> None:
    locked, open_ = _server(Exposure(AUDIT, read_only=True)), _server(Exposure(AUDIT))
    assert locked.exposure_for(None) == Exposure(AUDIT, True)
    assert locked.exposure_for(Exposure(CONFIG)) == Exposure(CONFIG, True)
    assert open_.exposure_for(Exposure(CONFIG, True)) == Exposure(CONFIG, True)
    assert open_.exposure_for(Exposure(CONFIG)) == Exposure(CONFIG, False)
    # In registry order: the tool list a client is shown.
    assert [op.name for op in open_.exposed(Exposure(CONFIG))] == [
        op.name for op in REGISTRY.values() if op.toolset == "config" or not op.tool
    ]
    assert [op.name for op in open_.exposed()] == [
        op.name for op in REGISTRY.values() if op.toolset == "audit" or not op.tool
    ]


def test_a_call_outside_its_exposure_is_denied_saying_how_to_enable_it_or_where_to_read_it() -> None:
    server = _server(Exposure(None))
    assert server._exposed(_tool("config_set")) is REGISTRY["config_set"]
    with pytest.raises(PermissionDenied) as refused:
        server._exposed(_tool("config_set", exposure=Exposure(AUDIT)))
    assert refused.value.hint is not None and "X-MCP-Toolsets: default,config" in refused.value.hint
    assert "resources/read" not in refused.value.hint
    with pytest.raises(PermissionDenied) as refused:
        _server(Exposure(AUDIT))._exposed(_tool("tenants_get"))
    assert refused.value.hint is not None and "scalemule://tenants/{tenant} (resources/read)" in refused.value.hint
    # Read as a resource, it is served whatever the toolsets.
    read = _tool("tenants_get", resource="scalemule://tenants/acme", via="resource")
    assert _server(Exposure(AUDIT))._exposed(read) is REGISTRY["tenants_get"]


def test_an_unknown_tool_is_not_found_with_the_nearest_tool_named() -> None:
    with pytest.raises(NotFound) as refused:
        _server(Exposure(None))._exposed(_tool("confg_set"))
    assert refused.value.hint is not None and "Did you mean 'config_set'?" in refused.value.hint
    with pytest.raises(NotFound):
        _server(Exposure(None))._exposed(_tool("confg_set", resource="scalemule://nowhere", via="resource"))


def test_only_a_task_operation_runs_with_a_recorded_key() -> None:
    server = _server(Exposure(None))
    task = Invocation("audit_verify", {}, RecordedKey("key_1"), "task", via="task")
    assert server._exposed(task) is REGISTRY["audit_verify"]
    with pytest.raises(FailedPrecondition):
        server._exposed(replace(task, operation="audit_query"))
