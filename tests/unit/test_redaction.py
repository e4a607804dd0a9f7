from __future__ import annotations

import pytest
from pydantic import BaseModel, JsonValue, ValidationError

from scalemule.operations.base import (
    REDACTED,
    SHOWN_ONCE,
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


def test_the_marker_asked_for_replaces_sensitive_fields_at_every_depth() -> None:
    data = {
        "name": "DB",
        "value": "v",
        "inner": {"label": "a", "secret": "s1"},
        "many": [{"label": "b", "secret": "s2"}, "not an object"],
    }
    assert redacted(SetArgs, data, SHOWN_ONCE) == {
        "name": "DB",
        "value": SHOWN_ONCE,
        "inner": {"label": "a", "secret": SHOWN_ONCE},
        "many": [{"label": "b", "secret": SHOWN_ONCE}, "not an object"],
    }


def test_invalid_input_is_recorded_without_its_sensitive_values() -> None:
    # Wrong types and unknown fields still go to the audit log, and must not carry the secret.
    raw = {"value": {"nested": "canary-1"}, "inner": {"secret": ["canary-2"]}, "bogus": 1}
    recorded = recorded_args(SetArgs, raw)
    assert "canary" not in repr(recorded)
    assert recorded["value"] == REDACTED and recorded["bogus"] == "[not recorded: number]"


def test_fields_the_model_does_not_declare_are_recorded_by_name_and_size_only() -> None:
    raw = {"name": "DB", "Value": "canary-1", "token": ["canary-2"], "extra": {"a": "canary-3"}}
    recorded = recorded_args(SetArgs, raw)
    assert "canary" not in repr(recorded)
    assert recorded == {
        "name": "DB",
        "Value": "[not recorded: string of 8 chars]",
        "token": "[not recorded: array of 1 items]",
        "extra": "[not recorded: object of 1 keys]",
    }


def test_unknown_fields_inside_nested_models_are_recorded_by_name_and_size_only() -> None:
    recorded = recorded_args(SetArgs, {"name": "DB", "inner": {"label": "a", "Secret": "canary"}})
    assert recorded["inner"] == {"label": "a", "Secret": "[not recorded: string of 6 chars]"}


def test_arguments_of_an_unknown_operation_are_recorded_by_name_and_size_only() -> None:
    recorded = recorded_args(None, {"value": "canary-secret", "ttl": 30, "on": True, "none": None})
    assert recorded == {
        "value": "[not recorded: string of 13 chars]",
        "ttl": "[not recorded: number]",
        "on": "[not recorded: boolean]",
        "none": "[not recorded: null]",
    }


def test_arguments_of_an_unknown_operation_are_recorded_for_fifty_names_cut_to_64_characters() -> None:
    many = {f"arg{i}": i for i in range(51)}
    assert recorded_args(None, many) == {f"arg{i}": "[not recorded: number]" for i in range(50)}
    long = {"n" * 65: "x", "\ud800name": ["a", "b"]}
    assert recorded_args(None, long) == {
        "n" * 64: "[not recorded: string of 1 chars]",
        "?name": "[not recorded: array of 2 items]",
    }


def test_arguments_that_are_not_an_object_are_recorded_as_invalid_without_their_values() -> None:
    assert recorded_args(SetArgs, ["canary", 1]) == {"_invalid": "[not recorded: array of 2 items]"}
    assert recorded_args(SetArgs, "canary") == {"_invalid": "[not recorded: string of 6 chars]"}
    assert recorded_args(None, "canary") == {"_invalid": "[not recorded: string of 6 chars]"}


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


def _nested(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = {"a": value}
    return value


def _depth(value: object) -> tuple[int, object]:
    depth = 0
    while isinstance(value, dict):
        value, depth = value["a"], depth + 1
    return depth, value


def test_strings_up_to_256_characters_are_kept_whole() -> None:
    assert bounded("x" * 256) == "x" * 256
    assert bounded("x" * 257) == "x" * 256 + "…(257 chars)"


def test_seven_levels_of_nesting_are_kept_and_the_eighth_is_cut() -> None:
    assert _depth(bounded(_nested(6))) == (6, "leaf")
    assert _depth(bounded(_nested(7))) == (7, "…")
    # Each argument of a call gets those seven levels below it.
    recorded = recorded_args(SetArgs, {"name": _nested(6)})
    assert _depth(recorded["name"]) == (6, "leaf")
    assert _depth(recorded_args(SetArgs, {"name": _nested(7)})["name"]) == (7, "…")


def test_seven_levels_of_nested_lists_are_kept_and_the_eighth_is_cut() -> None:
    def nested(levels: int) -> object:
        value: object = "leaf"
        for _ in range(levels):
            value = [value]
        return value

    assert bounded(nested(6)) == nested(6)
    assert bounded(nested(7)) == [[[[[[["…"]]]]]]]
    # Lists and objects count alike.
    assert bounded(mixed := [[[[[{"a": "leaf"}]]]]]) == mixed
    assert bounded([[[[[{"a": ["leaf"]}]]]]]) == [[[[[{"a": ["…"]}]]]]]


def test_fifty_items_are_kept_and_the_rest_counted() -> None:
    fifty = {f"k{i}": i for i in range(50)}
    assert bounded(fifty) == fifty
    assert bounded({**fifty, "k50": 50}) == {**fifty, "…": "1 more keys"}
    assert bounded(list(range(50))) == list(range(50))
    assert bounded(list(range(51))) == [*range(50), "…"]


def test_object_keys_are_cut_to_64_characters_and_other_values_kept_or_shown_as_text() -> None:
    assert bounded({"k" * 100: 1}) == {"k" * 64: 1}
    assert bounded([None, True, 3, 2.5]) == [None, True, 3, 2.5]
    assert bounded(b"x" * 300) == repr(b"x" * 300)[:256]


def test_a_field_that_holds_free_json_is_recorded_as_given() -> None:
    value = {"secret": "not a Sensitive field", "list": [{"secret": 1}]}
    assert recorded_args(_Anything, {"value": value}) == {"value": value}


def test_invalid_input_in_a_model_field_is_recorded_as_given_beside_redacted_items() -> None:
    raw = {"many": ["x", {"label": "b", "secret": "s"}], "inner": "not an object"}
    assert recorded_args(SetArgs, raw) == {
        "many": ["x", {"label": "b", "secret": REDACTED}],
        "inner": "not an object",
    }
