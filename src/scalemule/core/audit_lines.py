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
