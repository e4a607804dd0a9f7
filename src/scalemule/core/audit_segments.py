"""One segment of an audit chain, checked in a process of its own.

``audit_verify.Segments`` splits a long verification into segments and runs this module once per
segment (``python -P -m scalemule.core.audit_segments``), so a verification uses every CPU and leaves
the server's event loop free. A segment is checked exactly as the in-process pass checks a run of
plain events (``plain_run``): consecutive sequence numbers, each event naming the hash of the one
before it and hashing to its own. Anything else ends the segment's run early; the caller then
verifies in process, which names what is wrong.

The module imports only the standard library (and asyncpg for PostgreSQL), so a process starts in
tens of milliseconds. The job comes as one JSON object on standard input, so no credential shows in
the process list. It reads a stored chain's events ``from_seq`` through ``to_seq``::

    {"source": {"sqlite": PATH} | {"postgresql": DSN, "server_settings": {...}},
     "chain": C, "from_seq": A, "to_seq": B, "batch": N, "want": [SEQ, ...]}

or the event lines of an export file (``audit_lines``) that start in bytes ``[start, end)``::

    {"source": {"file": PATH}, "start": X, "end": Y, "batch": N, "want": [SEQ, ...]}

``batch`` is how many events a PostgreSQL query reads and how often progress is said. Standard output
carries one JSON object per line: ``{"done": N}`` every ``batch`` events, then the result
``{"first": S, "link": H, "through": T, "complete": BOOL, "hashes": {SEQ: HASH}, "tail": [HASH, ...]}``:
the first event's sequence number and the hash it names as its ``prev_hash`` (null: no event), the
last sequence number of the plain run from it, whether every event read was in that run (and, for a
stored chain, it reached ``to_seq``), the hash of each wanted sequence number within the run, and the
hashes of its last two events. The caller checks that consecutive segments join up.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scalemule.core.audit_lines import parse_event_line

# An event's link to the one before it, as its canonical body spells it: the last occurrence is the
# top-level key (it sorts after every key that can hold an object, and a string escapes its quotes).
PREV_KEY = '"prev_hash":"'

_SELECT = "SELECT seq, hash, body FROM audit_events WHERE chain = {} AND seq > {} AND seq <= {} ORDER BY seq LIMIT {}"

# Rows checked at a time: few enough to stay in the CPU's caches from the read to the hash (larger
# batches read measurably slower).
CHUNK = 200

Rows = Sequence[Sequence[Any]]


def plain_run(rows: Rows, start: int, expected: int, link: str) -> int:
    """How many of ``rows`` (``(seq, hash, body)``) from ``start`` on are plain events: each at the next
    sequence number from ``expected``, naming the previous event's hash as its ``prev_hash`` (the
    first names ``link``), and hashing to its own hash."""
    sha256, key, after = hashlib.sha256, PREV_KEY, len(PREV_KEY)
    first, named = expected, link + '"'
    for seq, digest, body in itertools.islice(rows, start, None):
        if seq != expected or not body.startswith(named, body.rfind(key) + after):
            break
        if sha256(body.encode()).hexdigest() != digest:
            break
        named = digest + '"'
        expected += 1
    return expected - first


def named_link(body: str) -> str | None:
    """The hash ``body`` names as its ``prev_hash``, or None when it names none."""
    at = body.rfind(PREV_KEY) + len(PREV_KEY)
    link = body[at : at + 64]
    return link if at >= len(PREV_KEY) and body.startswith('"', at + 64) and len(link) == 64 else None


class Segment:
    """The state of one segment's pass: fed chunks of rows in order, it keeps the plain run going.

    Args:
        expected: the first event's sequence number (None: whatever the first event says).
        want: the sequence numbers whose hashes to report.
    """

    def __init__(self, expected: int | None, want: Sequence[int]) -> None:
        self.expected = expected
        self.want = sorted(want)
        self.first: int | None = None
        self.link: str | None = None
        self.through = -1 if expected is None else expected - 1
        self.hashes: dict[int, str] = {}
        self.tail: list[str] = []
        self.complete = True

    def feed(self, rows: Rows) -> bool:
        """Check the next chunk; False once the run has ended."""
        if not rows:
            return True
        if self.first is None:
            self.first, self.link = rows[0][0], named_link(rows[0][2])
            self.through = self.first - 1
            if self.link is None or (self.expected is not None and self.first != self.expected):
                self.complete = False
                return False
        first, link = self.through + 1, self.tail[-1] if self.tail else self.link
        assert link is not None
        run = plain_run(rows, 0, first, link)
        wanted = self.want[bisect.bisect_left(self.want, first) : bisect.bisect_left(self.want, first + run)]
        self.hashes |= {seq: rows[seq - first][1] for seq in wanted}
        self.tail = [*self.tail, *(row[1] for row in rows[max(0, run - 2) : run])][-2:]
        self.through += run
        self.complete = run == len(rows)
        return self.complete

    def result(self) -> dict[str, Any]:
        """The result line's fields."""
        return {
            "first": self.first,
            "link": self.link,
            "through": self.through,
            "complete": self.complete,
            "hashes": {str(seq): digest for seq, digest in self.hashes.items()},
            "tail": self.tail,
        }


def _sqlite_chunks(job: dict[str, Any]) -> Iterator[list[Any]]:
    import sqlite3

    conn = sqlite3.connect(Path(job["source"]["sqlite"]).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        # One query for the whole segment (no limit: -1), read a chunk at a time.
        rows = conn.execute(_SELECT.format("?", "?", "?", "?"), (job["chain"], job["from_seq"] - 1, job["to_seq"], -1))
        while chunk := rows.fetchmany(CHUNK):
            yield chunk
    finally:
        conn.close()


def _postgresql_chunks(job: dict[str, Any]) -> Iterator[list[Any]]:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    source, loop = job["source"], asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(source["postgresql"], server_settings=source["server_settings"]))
    try:
        query = loop.run_until_complete(conn.prepare(_SELECT.format("$1", "$2", "$3", "$4")))
        chain, low, high, batch = job["chain"], job["from_seq"] - 1, job["to_seq"], job["batch"]
        while low < high:
            rows = loop.run_until_complete(query.fetch(chain, low, high, batch))
            yield from (rows[at : at + CHUNK] for at in range(0, len(rows), CHUNK))
            if len(rows) < batch:
                return
            low = rows[-1][0]
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


class NotPlain(Exception):
    """A line of an export file that is not an event line: the segment's run ends there."""


def _file_chunks(job: dict[str, Any]) -> Iterator[list[Any]]:
    """The export file's event lines that start in ``[start, end)``, as rows, blank lines skipped.

    Raises:
        NotPlain: a line is neither (after the rows before it).
    """
    with open(job["source"]["file"], "rb") as lines:
        start, end = job["start"], job["end"]
        if start > 0:
            lines.seek(start - 1)
            start += len(lines.readline()) - 1  # to the first line that starts at or after start
        rows: list[Any] = []
        while start < end:
            line = lines.readline()
            if not line:
                break
            start += len(line)
            row = parse_event_line(line.decode("utf-8", "replace"))
            if row is None and line.strip():
                yield rows
                raise NotPlain
            if row is not None:
                rows.append(row)
            if len(rows) == CHUNK:
                yield rows
                rows = []
        yield rows


def _say(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Check the segment ``job`` describes, saying how far it got every ``batch`` events; returns the
    result line's fields."""
    source = job["source"]
    stored = "file" not in source
    segment = Segment(job["from_seq"] if stored else None, job["want"])
    chunks = _sqlite_chunks if "sqlite" in source else _postgresql_chunks if stored else _file_chunks
    done = said = 0
    try:
        for rows in chunks(job):
            done += len(rows)
            if not segment.feed(rows):
                break
            if done - said >= job["batch"]:
                _say({"done": done})
                said = done
    except NotPlain:
        segment.complete = False
    if stored and segment.through != job["to_seq"]:
        segment.complete = False
    return segment.result()


def main() -> int:
    """Read the job from standard input, write progress and the result to standard output."""
    _say(run(json.loads(sys.stdin.read())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
