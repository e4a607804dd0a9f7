"""The server's instructions announce what this build serves, and nothing it does not."""

from __future__ import annotations

import re

from scalemule.dispatch import Exposure, toolsets
from scalemule.operations.prompts import PROMPTS
from scalemule.surfaces.mcp import instructions


def _named_toolsets(text: str) -> set[str]:
    found = re.search(r"(?:More tools in|Not served here): ([a-z, ]+) \(", text)
    return set(found.group(1).split(", ")) if found else set()


def test_the_default_list_says_its_other_tools_are_in_their_toolsets_not_that_they_are_absent() -> None:
    text = instructions(Exposure.parse("default"))
    assert "More tools in" in text and "Not served here" not in text
    assert _named_toolsets(text) == set(toolsets())


def test_a_chosen_toolset_names_exactly_the_toolsets_it_leaves_out() -> None:
    text = instructions(Exposure.parse("config"))
    assert _named_toolsets(text) == set(toolsets()) - {"config"}
    assert "Not served here" in text


def test_every_toolset_served_names_none_left_out_and_every_prompt_by_name() -> None:
    text = instructions(Exposure(toolsets=None))
    assert _named_toolsets(text) == set()
    assert all(name in text for name in PROMPTS)
