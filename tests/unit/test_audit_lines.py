"""An export's event line (core.audit_lines): written, read, and read exactly."""

from __future__ import annotations

import hashlib
import random

import pytest

from scalemule.core.audit_lines import event_line, exact_event, parse_event_line

BODY = '{"args":{"key":"a,\\"hash\\":\\"b"},"prev_hash":"' + "0" * 64 + '","seq":12}'
DIGEST = hashlib.sha256(BODY.encode()).hexdigest()
LINE = event_line(12, DIGEST, BODY)


@pytest.mark.parametrize("ending", ["", "\n"])
def test_a_written_line_reads_back_both_ways(ending: str) -> None:
    assert parse_event_line(LINE + ending) == exact_event(LINE + ending) == (12, DIGEST, BODY)


@pytest.mark.parametrize(
    "line",
    [
        LINE.replace('"seq":12,"type"', '"seq":012,"type"'),
        LINE.replace('"seq":12,"type"', '"seq":+12,"type"'),
        LINE.replace('"seq":12,"type"', '"seq":١٢,"type"'),
        LINE + "  ",
        LINE + "\r\n",
        LINE.replace('"type":"event"}', '"type":"event","x":1}'),
        LINE[1:],
        LINE.replace(',"hash":"', ', "hash":"'),
    ],
)
def test_a_line_written_otherwise_is_not_read_exactly(line: str) -> None:
    assert exact_event(line) is None


def test_what_is_read_exactly_is_read_the_same_by_the_parser() -> None:
    rng, alphabet = random.Random(7), '0123456789abcdefAF",:{}\\ \n+'
    accepted = 0
    for _ in range(20_000):
        line, at = LINE, rng.randrange(len(LINE) - 110, len(LINE))
        line = line[:at] + rng.choice(alphabet) + line[at + rng.randint(0, 1) :]
        row = exact_event(line)
        if row is not None and set(row[1]) <= set("0123456789abcdef") and len(row[1]) == 64:
            accepted += 1
            assert parse_event_line(line) == row, line[-100:]
    assert accepted > 100
