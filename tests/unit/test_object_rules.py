from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalemule.core.errors import InvalidArgument
from scalemule.core.object_rules import (
    check_content_type,
    check_key,
    check_metadata,
    guess_content_type,
    is_textual,
)
from scalemule.core.storage import successor
from scalemule.surfaces.blobs_http import _Unsatisfiable, byte_range

# Printable segments: no '/', no backslash, no control or line-separator characters, no surrogates.
segment = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="/\\"), min_size=1, max_size=20
).filter(lambda s: s not in (".", ".."))
keys = st.lists(segment, min_size=1, max_size=6).map("/".join).filter(lambda k: len(k.encode()) <= 1024)


@given(keys)
def test_every_valid_key_is_accepted_exactly_as_given(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("a/../b", "'..'"),
        ("/etc", "absolute"),
        ("a\\b", "backslash"),
        ("a\u2028b", "U+2028"),
        ("a//b", "empty segment"),
        ("x" * 1025, "1,025 bytes"),
    ],
)
def test_a_bad_key_is_refused_naming_its_problem_and_the_allowed_form(key: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_key(key)
    assert problem in refused.value.message
    assert refused.value.hint is not None and "'/'-separated" in refused.value.hint


@given(st.text(max_size=8), st.text(max_size=8))
def test_the_successor_of_a_prefix_bounds_every_string_that_starts_with_it(prefix: str, rest: str) -> None:
    bound = successor(prefix)
    if bound is not None:
        assert prefix + rest < bound
        assert not bound.startswith(prefix)


def test_content_types_are_guessed_from_the_extension_and_told_apart_as_text() -> None:
    assert guess_content_type("menus/week.json", text=True) == "application/json"
    assert guess_content_type("notes.md", text=True) == "text/markdown; charset=utf-8"
    assert guess_content_type("photo.PNG", text=False) == "image/png"
    assert guess_content_type("README", text=True) == "text/plain; charset=utf-8"
    assert guess_content_type("blob", text=False) == "application/octet-stream"
    assert is_textual("application/ld+json") and is_textual("text/csv; charset=utf-8")
    assert not is_textual("image/svg") and not is_textual("application/octet-stream")


def test_media_types_and_metadata_are_checked() -> None:
    assert check_content_type("text/csv; charset=utf-8") == "text/csv; charset=utf-8"
    for bad in ("text", "text/csv\n", "a/b; c"):
        with pytest.raises(InvalidArgument):
            check_content_type(bad)
    assert check_metadata({"alt": "a pie"}) == {"alt": "a pie"}
    for bad in ({"bad name": "x"}, {"n": "line\nbreak"}, {"n": "é" * 1100}):
        with pytest.raises(InvalidArgument):
            check_metadata(bad)


def test_ranges_follow_http_byte_range_rules() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-9", 100) == (0, 10)
    assert byte_range("bytes=90-", 100) == (90, 100)
    assert byte_range("bytes=-5", 100) == (95, 100)
    assert byte_range("bytes=50-1000", 100) == (50, 100)
    assert byte_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole object
    with pytest.raises(_Unsatisfiable):
        byte_range("bytes=100-", 100)
