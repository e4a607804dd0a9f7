from __future__ import annotations

import base64

import pytest

from scalemule.core.errors import InvalidArgument
from scalemule.core.pages import cursor_int, decode_cursor, encode_cursor


def _raw(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_a_cursor_decodes_to_the_position_it_was_made_from() -> None:
    position = {"seq": 41, "id": "key_ab", "slug": "acme-2"}
    cursor = encode_cursor(position)
    assert decode_cursor(cursor) == position
    assert "=" not in cursor and "{" not in cursor


def test_no_cursor_means_the_first_page() -> None:
    assert decode_cursor(None) is None


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!!", "not a cursor", "\x00", _raw("[1, 2]"), _raw('"seq"'), _raw("{not json"), _raw("null")],
)
def test_a_cursor_this_server_did_not_issue_is_an_invalid_argument(cursor: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_cursor(cursor)


def test_an_integer_position_is_read_back_as_issued() -> None:
    assert cursor_int({"seq": 0}, "seq") == 0
    assert cursor_int({"seq": 2**63 - 1}, "seq") == 2**63 - 1


@pytest.mark.parametrize("value", [None, "12", 1.5, True, [1], {"a": 1}, 2**63, -(2**63) - 1, 10**40])
def test_a_forged_integer_position_is_an_invalid_argument(value: object) -> None:
    with pytest.raises(InvalidArgument):
        cursor_int({"seq": value}, "seq")


def test_a_position_without_its_key_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        cursor_int({}, "seq")
