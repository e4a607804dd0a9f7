from __future__ import annotations

import subprocess
import sys
from typing import Any

import jsonschema
from pydantic import BaseModel, Field

from scalemule.operations import REGISTRY, Resource
from scalemule.operations.registry import compact_schema, one_paragraph, shallow_schema
from scalemule.surfaces.mcp import input_schema_of, tool_definition


class _Inner(BaseModel):
    a: int


class _Model(BaseModel):
    """Developer docs."""

    name: str = Field(max_length=10, description="shown")
    note: str | None = None
    count: int | None = Field(default=None, ge=1)
    inner: _Inner | None = None
    tags: list[str] = []


def _schema() -> dict[str, Any]:
    return compact_schema(_Model.model_json_schema())


ACCEPTED: list[dict[str, Any]] = [
    {"name": "a"},
    {"name": "abc", "note": "x", "count": 2, "inner": {"a": 1}, "tags": ["t", "u"]},
]
REFUSED: list[dict[str, Any]] = [{}, {"name": 5}, {"name": "a", "count": "2"}, {"name": "a", "tags": [1]}]


def test_compacted_schemas_drop_titles_and_length_bounds() -> None:
    text = repr(_schema())
    assert "'title'" not in text and "maxLength" not in text
    assert _schema()["properties"]["name"]["description"] == "shown"


def test_a_compacted_schema_accepts_and_refuses_what_the_model_does() -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    for instance in ACCEPTED:
        _Model.model_validate(instance)
        assert validator.is_valid(instance), instance
    for instance in REFUSED:
        assert not validator.is_valid(instance), instance


def test_a_shallow_schema_keeps_every_top_level_field_and_stays_valid() -> None:
    shallow = shallow_schema(_schema())
    assert "$defs" not in repr(shallow) and "$ref" not in repr(shallow)
    assert set(shallow["properties"]) == set(_Model.model_fields)
    validator = jsonschema.Draft202012Validator(shallow)
    assert all(validator.is_valid(instance) for instance in ACCEPTED)


def test_a_resource_uri_yields_the_operations_arguments() -> None:
    recent = Resource("scalemule://tenants/{tenant}/audit/recent", "recent", args=(("limit", 50),), name="recent")
    assert recent.match("scalemule://tenants/acme/audit/recent") == {"limit": 50, "tenant": "acme"}
    assert recent.match("scalemule://tenants/acme") is None
    assert recent.match("scalemule://tenants/a/b/audit/recent") is None


def test_a_reserved_uri_variable_spans_slashes_and_is_percent_decoded() -> None:
    objects = Resource("scalemule://tenants/{tenant}/objects/{+key}", "blob", name="object")
    assert objects.match("scalemule://tenants/acme/objects/menus/2024/a%20b.png") == {
        "tenant": "acme",
        "key": "menus/2024/a b.png",
    }


def test_a_plain_uri_variable_matches_one_path_segment_only() -> None:
    tenant = Resource("scalemule://tenants/{tenant}", "tenant", name="tenant")
    assert tenant.match("scalemule://tenants/acme/audit/recent") is None
    assert tenant.match("scalemule://tenants/acme/audit/recent?cursor=abc") is None
    assert tenant.match("scalemule://tenants/acme") == {"tenant": "acme"}


def test_a_query_string_becomes_arguments_of_the_operation() -> None:
    recent = Resource("scalemule://tenants/{tenant}/audit/recent", "recent", name="audit-recent", args=(("limit", 50),))
    assert recent.match("scalemule://tenants/acme/audit/recent?cursor=abc&limit=5") == {
        "tenant": "acme",
        "cursor": "abc",
        "limit": "5",
    }


# What clients with a single-type schema dialect need (the MCP Inspector's --strict portability rules):
# no list of types anywhere, and no subschema that constrains nothing.
_CONSTRAINING = {
    "type", "enum", "const", "anyOf", "allOf", "oneOf", "not", "$ref", "properties", "items",
    "additionalProperties", "minimum", "maximum", "pattern", "format", "required",
}  # fmt: skip
_SUBSCHEMA_MAPS = ("properties", "$defs", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "contains")


def _portability_problems(schema: Any, path: str = "") -> list[str]:
    if not isinstance(schema, dict):
        return []
    problems = []
    if isinstance(schema.get("type"), list):
        problems.append(f"{path}: type is a list {schema['type']}")
    if not _CONSTRAINING & set(schema):
        problems.append(f"{path}: constrains nothing")
    children = [(f"{path}.{k}.{n}", s) for k in _SUBSCHEMA_MAPS for n, s in schema.get(k, {}).items()]
    children += [(f"{path}.{k}[{i}]", s) for k in _SUBSCHEMA_LISTS for i, s in enumerate(schema.get(k, []))]
    children += [(f"{path}.{k}", schema[k]) for k in _SUBSCHEMAS if isinstance(schema.get(k), dict)]
    for child_path, child in children:
        problems += _portability_problems(child, child_path)
    return problems


def test_every_published_schema_is_portable_to_single_type_dialects() -> None:
    from scalemule.operations import REGISTRY

    problems = [
        f"{op.name}.{kind}{problem}"
        for op in REGISTRY.values()
        if op.tool
        for kind, schema in (("inputSchema", op.input_schema), ("outputSchema", op.output_schema))
        for problem in _portability_problems(schema)
    ]
    assert problems == []


def test_any_json_value_is_spelled_as_single_typed_branches_and_still_accepts_every_value() -> None:
    from pydantic import JsonValue

    class _Json(BaseModel):
        value: JsonValue

    schema = compact_schema(_Json.model_json_schema())
    for value in ("s", 1, 2.5, True, None, [1, "a"], {"k": [None]}):
        jsonschema.validate({"value": value}, schema)
        jsonschema.validate({"value": value}, shallow_schema(schema))
    assert _portability_problems(schema) == []
    assert _portability_problems(shallow_schema(schema)) == []


def test_a_served_description_joins_wrapped_lines_and_keeps_paragraphs() -> None:
    doc = """Store a value.
    It replaces the last one.

        Pass expected_version to guard
        a concurrent change.
    """
    assert one_paragraph(doc) == (
        "Store a value. It replaces the last one.\n\nPass expected_version to guard a concurrent change."
    )


def test_the_http_transport_finds_each_tools_input_schema_by_name_as_tools_list_advertises_it() -> None:
    # The SDK checks a tools/call's Mcp-Param-* headers against this lookup instead of running and
    # serializing the whole tools/list on every call.
    for op in REGISTRY.values():
        expected = tool_definition(op).input_schema if op.tool else None
        assert input_schema_of(op.name) == expected, op.name
    assert input_schema_of("no_such_tool") is None


# In a fresh process: other tests here build models.
_TOOL_LIST_IN_A_NEW_PROCESS = """
from scalemule.operations import REGISTRY
from scalemule.surfaces.mcp import tool_definition
tools = [tool_definition(op) for op in REGISTRY.values() if op.tool]
models = [m for op in REGISTRY.values() for m in (op.args_model, op.result_model)]
built = [m.__name__ for m in models if m.__pydantic_complete__]
print(len(tools), built)
"""


def test_a_servers_tool_list_is_read_from_the_published_schemas_without_building_a_model() -> None:
    run = subprocess.run([sys.executable, "-c", _TOOL_LIST_IN_A_NEW_PROCESS], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{sum(op.tool for op in REGISTRY.values())} []\n"


def test_the_published_schemas_are_those_the_models_give() -> None:
    for op in (op for op in REGISTRY.values() if op.tool):
        assert (op.input_schema, op.output_schema) == (op.derive_input_schema(), op.derive_output_schema()), op.name
