"""Identifiers and clocks: prefixed random ids, UTC now."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    """A random id such as ``ten_5f2c…`` (prefix says what it names; 128 random bits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def system_clock() -> datetime:
    """The machine's current time, timezone-aware UTC."""
    return datetime.now(UTC)


# The clock every ``utcnow`` reads. Tests that need exact times (key expiry, last-used resolution)
# replace it, e.g. ``monkeypatch.setattr(ids, "clock", lambda: fixed)``, instead of sleeping.
clock: Callable[[], datetime] = system_clock


def utcnow() -> datetime:
    """The current time, timezone-aware UTC, as told by ``clock``."""
    return clock()
