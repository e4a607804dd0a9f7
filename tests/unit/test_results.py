"""What a tool call answers: ordinary results carry their JSON twice, large ones once (surfaces.results)."""

from __future__ import annotations

import json

from scalemule.surfaces.results import SHOWN_CHARS, TEXT_LIMIT, ok_result, text_size


def test_an_ordinary_result_is_structured_content_and_the_same_json_as_text() -> None:
    value = {"key": "menus/week-1.json", "size": 12, "content": 'héllo "menu"', "truncated": False}

    result = ok_result(value)

    assert result["structuredContent"] is value and result["isError"] is False
    (content,) = result["content"]
    assert content["type"] == "text" and json.loads(content["text"]) == value


def test_a_result_just_under_the_limit_is_still_repeated_as_text() -> None:
    value = {"content": "x" * (TEXT_LIMIT - len("content"))}

    assert json.loads(ok_result(value)["content"][0]["text"]) == value


def test_a_large_result_carries_its_bytes_once_and_its_text_says_where_they_are() -> None:
    content = "QUJD" * (TEXT_LIMIT // 4 + 1)
    value = {
        "key": "big.bin",
        "size": 3 * len(content) // 4,
        "encoding": "base64",
        "content": content,
        "next_offset": None,
    }

    result = ok_result(value)

    assert result["structuredContent"] is value
    text = result["content"][0]["text"]
    assert content not in text and len(text) < 2 * SHOWN_CHARS
    assert "structuredContent" in text.splitlines()[0]
    shown = json.loads(text.splitlines()[-1])
    assert {k: v for k, v in shown.items() if k != "content"} == {k: v for k, v in value.items() if k != "content"}
    assert shown["content"] == f"[{len(content):,} characters: in structuredContent]"


def test_a_result_large_by_many_strings_keeps_its_short_ones_in_its_text() -> None:
    items = [{"name": f"item-{i}", "value": "v" * (SHOWN_CHARS + 1)} for i in range(TEXT_LIMIT // SHOWN_CHARS + 1)]

    shown = json.loads(ok_result({"items": items})["content"][0]["text"].splitlines()[-1])

    assert [item["name"] for item in shown["items"]] == [item["name"] for item in items]
    assert all(item["value"].endswith("characters: in structuredContent]") for item in shown["items"])


def test_text_size_counts_every_string_at_any_depth_keys_included() -> None:
    assert text_size({"ab": ["cd", {"e": "fgh"}], "i": 1, "j": None}) == 2 + 2 + 1 + 3 + 1 + 1
