"""API key tokens: ``smk_`` + 32 random base62 characters + a 6-character base62 CRC32 checksum.

The fixed prefix and checksum let secret scanners recognise a leaked key and let us reject a mistyped
one without touching the database. Only the SHA-256 of a token is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import zlib

ALPHABET = string.digits + string.ascii_letters
PREFIX = "smk_"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
TOKEN_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
DISPLAY_PREFIX_LENGTH = len(PREFIX) + 8


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate() -> str:
    """A fresh token."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return PREFIX + body + _checksum(body)


def is_well_formed(token: str) -> bool:
    """True when ``token`` has the right shape and its checksum matches (no database needed)."""
    if len(token) != TOKEN_LENGTH or not token.startswith(PREFIX):
        return False
    body, check = token[len(PREFIX) : -CHECKSUM_LENGTH], token[-CHECKSUM_LENGTH:]
    if any(c not in ALPHABET for c in body):
        return False
    return hmac.compare_digest(_checksum(body), check)


def digest(token: str) -> bytes:
    """The SHA-256 under which a token is stored and looked up."""
    return hashlib.sha256(token.encode()).digest()


def display_prefix(token: str) -> str:
    """The part of a token safe to show and log: enough to tell keys apart, useless to an attacker."""
    return token[:DISPLAY_PREFIX_LENGTH]
