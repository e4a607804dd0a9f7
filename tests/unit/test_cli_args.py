from __future__ import annotations

from pathlib import Path

import pytest

from scalemule.core.errors import InvalidArgument
from scalemule.dispatch import Exposure
from scalemule.operations import REGISTRY
from scalemule.surfaces.cli import app, first_sentence, parse_pairs
from scalemule.surfaces.cli_call import field_kind, read_json_source


def test_pair_values_are_read_as_json_when_they_are_json() -> None:
    args = parse_pairs(["limit=10", "dry_run=false", 'scopes=["config:read"]', "name=menu bot", "empty="], None)
    assert args == {"limit": 10, "dry_run": False, "scopes": ["config:read"], "name": "menu bot", "empty": ""}


def test_a_value_may_itself_contain_an_equals_sign() -> None:
    assert parse_pairs(["value=a=b"], None) == {"value": "a=b"}


def test_pairs_override_the_json_object() -> None:
    assert parse_pairs(["name=b"], '{"name": "a", "limit": 2}') == {"name": "b", "limit": 2}


@pytest.mark.parametrize("pair", ["novalue", "=value"])
def test_a_pair_that_is_not_key_equals_value_is_an_invalid_argument(pair: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_pairs([pair], None)


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', "[" * 100_000 + "]" * 100_000])
def test_json_arguments_must_be_one_json_object(raw: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_pairs([], raw)


def test_a_pair_nested_deeper_than_the_parser_allows_is_kept_as_text() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert parse_pairs([f"value={deep}"], None) == {"value": deep}


def test_toolsets_are_all_default_or_a_list_of_known_names() -> None:
    assert Exposure.parse("all").toolsets is None
    assert Exposure.parse("default").toolsets == {"default"}
    assert Exposure.parse("identity, audit").toolsets == {"identity", "audit"}
    assert Exposure.parse("default,audit", read_only=True) == Exposure(frozenset({"default", "audit"}), True)


@pytest.mark.parametrize("name", ["docs", "prompts", "nonsense", ""])
def test_a_name_that_is_no_toolset_is_an_invalid_argument(name: str) -> None:
    with pytest.raises(InvalidArgument):
        Exposure.parse(f"identity,{name}" if name else " , ")


def test_a_mistyped_toolset_gets_a_suggestion() -> None:
    with pytest.raises(InvalidArgument) as refused:
        Exposure.parse("identiy")
    assert refused.value.hint is not None and "Did you mean 'identity'?" in refused.value.hint


def test_serve_defaults_to_stdio_with_the_default_toolsets() -> None:
    defaults = app.commands["serve"].make_context("serve", []).params
    assert (defaults["transport"], defaults["toolsets"], defaults["read_only"]) == ("stdio", "default", False)


def test_a_pair_for_a_text_argument_is_taken_as_written() -> None:
    args = parse_pairs(["name=123", "value=123", 'label="x"'], None, text_fields=frozenset({"name", "label"}))
    assert args == {"name": "123", "value": 123, "label": '"x"'}


def test_json_arguments_may_come_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "args.json"
    path.write_text('{"limit": 3}')
    assert parse_pairs([], f"@{path}") == {"limit": 3}


def test_json_from_a_missing_file_is_an_invalid_argument_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as refused:
        read_json_source(f"@{tmp_path}/absent.json")
    assert "absent.json" in refused.value.message


def test_argument_kinds_follow_the_args_model() -> None:
    fields = REGISTRY["config_set"].args_model.model_fields
    assert [field_kind(fields[n])[0] for n in ("env", "key", "value", "expected_version")] == [
        "text",
        "text",
        "json",
        "integer",
    ]
    promote = REGISTRY["config_promote"].args_model.model_fields
    assert field_kind(promote["dry_run"])[0] == "flag" and field_kind(promote["keys"])[0] == "json"


@pytest.mark.parametrize(
    ("description", "sentence"),
    [
        ("Set a value. Use config_get to read it.", "Set a value."),
        ("List objects, e.g. uploads/. Paginated.", "List objects, e.g. uploads/."),
        ("Read a key\nacross lines. Then more.", "Read a key across lines."),
        ("No full stop here", "No full stop here"),
    ],
)
def test_a_summary_is_the_whole_first_sentence(description: str, sentence: str) -> None:
    assert first_sentence(description) == sentence
