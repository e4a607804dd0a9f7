"""Identifiers and clocks: prefixed random ids, UTC now."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_id(prefix: str) -> str:
    """A random id such as ``ten_5f2c…`` (prefix says what it names; 128 random bits)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
