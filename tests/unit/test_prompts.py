from __future__ import annotations

import pytest

from scalemule.core.errors import InvalidArgument
from scalemule.operations import REGISTRY
from scalemule.operations.prompts import PROMPTS, placeholders


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_every_tool_a_prompt_names_is_a_tool_of_the_registry(name: str) -> None:
    tools = PROMPTS[name].tools()
    assert tools
    assert sorted(t for t in tools if t not in REGISTRY or not REGISTRY[t].tool) == []


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_every_placeholder_of_a_prompt_is_one_of_its_arguments(name: str) -> None:
    prompt = PROMPTS[name]
    assert placeholders(prompt.template) == {a.name for a in prompt.arguments}


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_a_prompt_renders_with_only_its_required_arguments(name: str) -> None:
    prompt = PROMPTS[name]
    given = {a.name: f"<{a.name}>" for a in prompt.arguments if a.required}
    text = prompt.render(given)
    assert all(value in text for value in given.values())
    assert "{" not in text.replace("{}", "")


def test_a_prompt_refuses_an_unknown_argument_and_a_missing_required_one() -> None:
    prompt = PROMPTS["set_up_app_backend"]
    with pytest.raises(InvalidArgument):
        prompt.render({"app": "menugen", "colour": "blue"})
    with pytest.raises(InvalidArgument):
        prompt.render({})
