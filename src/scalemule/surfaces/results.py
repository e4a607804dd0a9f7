"""What a tool call answers: its CallToolResult, ordinary or large, successful or failed.

An ordinary result is structured content plus the same JSON as text, as the MCP specification asks
"for backwards compatibility". A large one (its strings hold more than ``TEXT_LIMIT`` characters: in
practice an object read inline) carries its JSON once, in ``structuredContent``; its text says so and
repeats the JSON with every long string replaced by a note of its length. Sending the bytes twice would
double what every client reads and, with the official SDK client whose stdio reader is quadratic in a
message's size, quadruple its time (docs/decisions.md, "Large results").
"""

from __future__ import annotations

import json
from typing import Any

from scalemule.dispatch import ErrorBody

# Characters of text (every string of the result, keys included) above which a result is large.
TEXT_LIMIT = 1 << 20
# In a large result's text, strings longer than this many characters are replaced by a note.
SHOWN_CHARS = 1024


def error_result(error: ErrorBody) -> dict[str, Any]:
    """The CallToolResult of a failed call."""
    return {
        "content": [{"type": "text", "text": error.text}],
        "structuredContent": {"error": {"code": error.code, "message": error.message, "hint": error.hint}},
        "isError": True,
    }


def ok_result(value: dict[str, Any]) -> dict[str, Any]:
    """The CallToolResult of a call that produced ``value``: structured, with the same JSON as text,
    or for a large result a text that summarises it (``summary``)."""
    chars = text_size(value)
    text = summary(value, chars) if chars > TEXT_LIMIT else _json(value)
    return {"content": [{"type": "text", "text": text}], "structuredContent": value, "isError": False}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def text_size(value: Any) -> int:
    """How many characters the strings of ``value`` hold, at any depth, keys included."""
    size = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return size


def summary(value: dict[str, Any], chars: int) -> str:
    """The text of a large result: where the whole of it is, then its JSON with long strings noted."""
    shown = _json(_shortened(value))
    return (
        f"This result holds {chars:,} characters of text, more than the {TEXT_LIMIT:,} repeated as text: it is "
        f"sent once, whole, in structuredContent. Below is its JSON with each string over {SHOWN_CHARS:,} "
        "characters replaced by its length; to read such a value as text, ask for less per call (e.g. a "
        f"smaller max_bytes).\n{shown}"
    )


def _shortened(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= SHOWN_CHARS else f"[{len(value):,} characters: in structuredContent]"
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    return value
