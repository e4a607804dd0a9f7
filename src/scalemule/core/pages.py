"""Opaque pagination cursors shared by every list operation."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from scalemule.core.errors import InvalidArgument

T = TypeVar("T")


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


async def paginate(
    cursor: str | None,
    limit: int,
    fetch: Callable[[Any, int], Awaitable[Sequence[T]]],
    position: Callable[[T], str | int],
) -> tuple[list[T], str | None]:
    """One page of a keyset-paginated list: every list operation pages through this.

    Args:
        cursor: the caller's ``next_cursor`` from the previous page, or None for the first page.
        limit: items per page.
        fetch: ``fetch(after, n)`` returns up to ``n`` items ordered after position ``after`` (None: from
            the start).
        position: the sort position of an item (a string or an integer), kept in the cursor.

    Returns:
        The page's items and the cursor of the next page (None on the last page).

    Raises:
        InvalidArgument: the cursor was not made by this server.
    """
    decoded = decode_cursor(cursor)
    after: str | int | None = None
    if decoded is not None:
        after = decoded.get("after")
        if isinstance(after, int):
            after = cursor_int(decoded, "after")
        elif not isinstance(after, str) or len(after) > 1100:
            raise InvalidArgument(
                "cursor is not one this server issued",
                hint="Pass the next_cursor from the previous page unchanged, or omit it to start over.",
            )
    items = list(await fetch(after, limit + 1))
    page = items[:limit]
    return page, encode_cursor({"after": position(page[-1])}) if len(items) > limit else None
