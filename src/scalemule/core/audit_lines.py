"""An export's event line: the stored body as it was hashed, with its hash and sequence number.

Written and read without parsing JSON (the body is then checked by its hash). Standard library only:
segment processes (``audit_segments``) read export files too.
"""

from __future__ import annotations

import re

EVENT_OPEN = '{"body":'
_HASH_KEY = ',"hash":"'
_SEQ_KEY = '","seq":'
_TYPE_TAIL = ',"type":"event"}'
# Where the sequence number starts after the hash key: the key, 64 hex digits, the seq key.
_SEQ_AT = len(_HASH_KEY) + 64 + len(_SEQ_KEY)
_TAIL = re.compile(r',"hash":"([0-9a-f]{64})","seq":([0-9]{1,19}),"type":"event"}\s*')


def event_line(seq: int, digest: str, body: str) -> str:
    """A ``jsonl`` event line. It is the JSON a sorted-keys dump makes of the same record, written so
    that ``parse_event_line`` can take the body out without parsing the line."""
    return f"{EVENT_OPEN}{body}{_HASH_KEY}{digest}{_SEQ_KEY}{seq}{_TYPE_TAIL}"


def parse_event_line(line: str) -> tuple[int, str, str] | None:
    """``(seq, hash, body)`` of a line as ``event_line`` writes it (trailing whitespace allowed); None
    for any other line."""
    if not line.startswith(EVENT_OPEN):
        return None
    at = line.rfind(_HASH_KEY)
    tail = _TAIL.fullmatch(line, at) if at > 0 else None
    return None if tail is None else (int(tail[2]), tail[1], line[len(EVENT_OPEN) : at])


def exact_event(line: str) -> tuple[int, str, str] | None:
    """``(seq, hash, body)`` of a line exactly as ``event_line`` writes it, a newline allowed after it;
    None for any other line. About twice as fast as ``parse_event_line``, and stricter: what this
    accepts with a SHA-256 hex digest as its hash, ``parse_event_line`` reads the same way. The line
    is taken apart, then rebuilt and compared."""
    at = line.rfind(_HASH_KEY)
    close = line.find(_TYPE_TAIL, at)
    if at <= 0 or close < 0:
        return None
    seq, digest, body = (
        line[at + _SEQ_AT : close],
        line[at + len(_HASH_KEY) : at + _SEQ_AT - len(_SEQ_KEY)],
        line[len(EVENT_OPEN) : at],
    )
    if not (seq.isascii() and seq.isdigit()):
        return None
    row = int(seq), digest, body
    made = event_line(*row)
    return row if line == made or (line.endswith("\n") and line[:-1] == made) else None
