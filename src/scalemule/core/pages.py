"""Opaque pagination cursors shared by every list operation."""

from __future__ import annotations

import base64
import json
from typing import Any

from scalemule.core.errors import InvalidArgument


def encode_cursor(position: dict[str, Any]) -> str:
    """Wrap a position (the last item's sort key) into an opaque cursor."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> dict[str, Any] | None:
    """Unwrap a cursor made by ``encode_cursor``.

    Raises:
        InvalidArgument: the cursor was not made by this server.
    """
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        position = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeError):
        position = None
    if not isinstance(position, dict):
        raise InvalidArgument(
            "cursor is not one this server issued",
            hint="Pass the next_cursor from the previous page unchanged, or omit it to start over.",
        )
    return position


def cursor_int(position: dict[str, Any], key: str) -> int:
    """The integer ``key`` of a decoded cursor position.

    Raises:
        InvalidArgument: it is missing, not an integer, or beyond what a 64-bit column holds (a forged cursor).
    """
    value = position.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise InvalidArgument(
            "cursor is not one this server issued",
            hint="Pass the next_cursor from the previous page unchanged, or omit it to start over.",
        )
    return value
