from __future__ import annotations

import pytest
from pydantic import BaseModel, JsonValue, ValidationError

from scalemule.operations.base import (
    REDACTED,
    Args,
    SecretText,
    bounded,
    encodable,
    recorded_args,
    redacted,
)


class Credential(BaseModel):
    label: str
    secret: SecretText


class _Anything(Args):
    value: JsonValue


class SetArgs(Args):
    name: str
    value: SecretText
    inner: Credential | None = None
    many: list[Credential] = []


def test_sensitive_fields_are_replaced_at_the_top_level() -> None:
    assert redacted(SetArgs, {"name": "DB", "value": "hunter2"}) == {"name": "DB", "value": REDACTED}


def test_sensitive_fields_are_replaced_inside_nested_models_and_lists() -> None:
    data = {
        "name": "DB",
        "value": "v",
        "inner": {"label": "a", "secret": "s1"},
        "many": [{"label": "b", "secret": "s2"}, {"label": "c", "secret": "s3"}],
    }
    out = redacted(SetArgs, data)
    assert out["inner"] == {"label": "a", "secret": REDACTED}
    assert out["many"] == [{"label": "b", "secret": REDACTED}, {"label": "c", "secret": REDACTED}]
    assert "s1" not in repr(out) and "s2" not in repr(out) and "s3" not in repr(out)


def test_invalid_input_is_recorded_without_its_sensitive_values() -> None:
    # Wrong types and unknown fields still go to the audit log, and must not carry the secret.
    raw = {"value": {"nested": "canary-1"}, "inner": {"secret": ["canary-2"]}, "bogus": 1}
    recorded = recorded_args(SetArgs, raw)
    assert "canary" not in repr(recorded)
    assert recorded["value"] == REDACTED and recorded["bogus"] == 1


def test_arguments_that_are_not_an_object_are_recorded_as_invalid() -> None:
    assert recorded_args(SetArgs, ["a", 1]) == {"_invalid": ["a", 1]}
    assert recorded_args(SetArgs, "text") == {"_invalid": "text"}


def test_long_strings_are_cut_and_say_how_long_they_were() -> None:
    cut = bounded("x" * 1_000_000)
    assert cut.startswith("x" * 256) and cut.endswith("(1000000 chars)") and len(cut) < 300


def test_deep_nesting_is_cut_to_a_few_levels() -> None:
    value: object = "leaf"
    for _ in range(500):
        value = {"a": value}
    cut = bounded(value)
    depth = 0
    while isinstance(cut, dict):
        cut, depth = cut["a"], depth + 1
    assert cut == "…" and depth <= 8


def test_wide_objects_and_lists_are_cut_and_say_how_much_was_left_out() -> None:
    wide = bounded({f"k{i}": i for i in range(80)})
    assert len(wide) == 51 and wide["…"] == "30 more keys"
    assert bounded(list(range(80)))[-1] == "…"


def test_values_json_cannot_hold_are_recorded_as_text() -> None:
    assert bounded(float("nan")) == "nan" and bounded(float("inf")) == "inf"
    assert bounded(b"raw") == "b'raw'"


def test_lone_surrogates_are_replaced_so_the_event_can_be_stored_and_hashed() -> None:
    recorded = bounded({"\ud800key": "a\udcffb"})
    assert recorded == {"?key": "a?b"}
    assert encodable("żółw ✓") == "żółw ✓"


@pytest.mark.parametrize("value", [{"a": [{"b": "\ud800"}]}, {"\udcff": 1}, ["ok", "\x00"], {"k\x00": 1}])
def test_lone_surrogates_and_nul_are_refused_at_any_depth_and_in_keys(value: object) -> None:
    with pytest.raises(ValidationError):
        _Anything.model_validate({"value": value})


def test_other_text_at_any_depth_is_accepted() -> None:
    value = {"a": ["żółw", 1, None, {"✓": 2.5}]}
    assert _Anything.model_validate({"value": value}).value == value
