from __future__ import annotations

from typing import Any

import jsonschema
from pydantic import BaseModel, Field

from scalemule.operations import Resource
from scalemule.operations.registry import compact_schema, shallow_schema


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
    recent = Resource("scalemule://tenants/{tenant}/audit/recent", "recent", args=(("limit", 50),))
    assert recent.match("scalemule://tenants/acme/audit/recent") == {"limit": 50, "tenant": "acme"}
    assert recent.match("scalemule://tenants/acme") is None
    assert recent.match("scalemule://tenants/a/b/audit/recent") is None


def test_the_last_uri_variable_spans_slashes_and_is_percent_decoded() -> None:
    objects = Resource("scalemule://tenants/{tenant}/objects/{key}", "blob")
    assert objects.match("scalemule://tenants/acme/objects/menus/2024/a%20b.png") == {
        "tenant": "acme",
        "key": "menus/2024/a b.png",
    }
