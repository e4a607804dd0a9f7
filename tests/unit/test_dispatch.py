"""The error contract's text as dispatch writes it, and how audit text is clipped."""

from __future__ import annotations

import json

import pytest

from scalemule.dispatch import ErrorBody, _clip, canonical_json


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
