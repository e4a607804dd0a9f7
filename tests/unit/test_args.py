from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from scalemule.operations.base import Args, Identifier, Name


class _Paged(Args):
    version: int | None = None
    count: int = 1
    note: Any = None


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValidationError):
        _Paged.model_validate({"version": 1, "verison": 2})


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**100])
def test_an_integer_argument_beyond_64_bits_is_refused(value: int) -> None:
    with pytest.raises(ValidationError):
        _Paged.model_validate({"version": value})


def test_integer_arguments_up_to_64_bits_are_accepted() -> None:
    assert _Paged.model_validate({"version": 2**63 - 1, "count": -(2**63)}).version == 2**63 - 1
    assert _Paged.model_validate({"note": ["fine", {"k": "v"}]}).note == ["fine", {"k": "v"}]


@pytest.mark.parametrize("value", ["a\x00b", ["ok", "\x00"], {"k\x00": "v"}])
def test_nul_characters_are_refused_anywhere_in_the_arguments(value: object) -> None:
    with pytest.raises(ValidationError):
        _Paged.model_validate({"version": 1, "note": value})


class _Named(Args):
    name: Name
    ident: Identifier = "x"


@pytest.mark.parametrize("text", ["a\nb", "tab\there", "bell\x07", "\x1f", "del\x7f"])
def test_a_name_with_a_control_character_is_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        _Named.model_validate({"name": text})


@pytest.mark.parametrize("text", ["plain", " spaced ", "\x80 after DEL", "żółw ✓", "~"])
def test_a_name_of_printable_text_is_accepted_as_given(text: str) -> None:
    assert _Named.model_validate({"name": text}).name == text


@pytest.mark.parametrize("ident", ["key_1", "tenants:read", "a.b-c", "Z9"])
def test_an_identifier_of_letters_digits_and_separators_is_accepted(ident: str) -> None:
    assert _Named.model_validate({"name": "n", "ident": ident}).ident == ident


@pytest.mark.parametrize("ident", ["a b", "a/b", "a\nb", "ключ"])
def test_an_identifier_with_anything_else_is_refused(ident: str) -> None:
    with pytest.raises(ValidationError):
        _Named.model_validate({"name": "n", "ident": ident})
