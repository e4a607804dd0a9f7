"""An export's event line (core.audit_lines): written, then read back without parsing JSON."""

from __future__ import annotations

import hashlib

import pytest

from scalemule.core.audit_lines import event_line, parse_event_line

BODY = '{"args":{"key":"a,\\"hash\\":\\"b"},"prev_hash":"' + "0" * 64 + '","seq":12}'
DIGEST = hashlib.sha256(BODY.encode()).hexdigest()
LINE = event_line(12, DIGEST, BODY)


@pytest.mark.parametrize("ending", ["", "\n", "  \r\n"])
def test_a_written_line_reads_back(ending: str) -> None:
    assert parse_event_line(LINE + ending) == (12, DIGEST, BODY)


@pytest.mark.parametrize(
    "line",
    [
        LINE.replace('"seq":12,"type"', '"seq":+12,"type"'),
        LINE.replace('"seq":12,"type"', '"seq":١٢,"type"'),
        LINE.replace('"seq":12,"type"', '"seq":,"type"'),
        LINE.replace(DIGEST, DIGEST.upper()),
        LINE.replace(DIGEST, DIGEST[:-1]),
        LINE.replace('"type":"event"}', '"type":"event","x":1}'),
        LINE[1:],
        LINE.replace(',"hash":"', ', "hash":"'),
    ],
)
def test_a_line_written_otherwise_is_not_read_as_one(line: str) -> None:
    assert parse_event_line(line) is None
