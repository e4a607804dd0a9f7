"""One segment of a stored audit chain, checked in a process of its own.

``audit_verify`` splits a long pass into segments and runs this module once per segment
(``python -m scalemule.core.audit_segments``), so a verification uses every CPU and leaves the
server's event loop free. A segment is checked exactly as the in-process pass checks a run of plain
events (``plain_run``): consecutive sequence numbers, each event naming the hash of the one before it
and hashing to its own. Anything else ends the segment early; the caller then verifies in process,
which names what is wrong.

The module imports only the standard library (and asyncpg for PostgreSQL), so a process starts in
tens of milliseconds. The job comes as one JSON object on standard input, so no credential shows in
the process list::

    {"store": {"sqlite": PATH} | {"postgresql": DSN, "server_settings": {...}},
     "chain": C, "from_seq": A, "to_seq": B, "link": HASH | null, "batch": N, "want": [SEQ, ...]}

``link`` is the hash the first event must name (null: not checked, the segment starts mid-chain).
Standard output carries one JSON object per line: ``{"done": N}`` after each batch, then the result
``{"through": S, "hashes": {SEQ: HASH}, "tail": [HASH, ...]}``: the last sequence number of the plain
run from ``from_seq`` (``from_seq - 1`` when none), the hash of each wanted sequence number within
it, and the hashes of its last two events.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

# An event's link to the one before it, as its canonical body spells it: the last occurrence is the
# top-level key (it sorts after every key that can hold an object, and a string escapes its quotes).
PREV_KEY = '"prev_hash":"'

_SELECT = "SELECT seq, hash, body FROM audit_events WHERE chain = {} AND seq > {} AND seq <= {} ORDER BY seq LIMIT {}"


def plain_run(rows: Sequence[Sequence[Any]], start: int, expected: int, link: str | None) -> int:
    """How many of ``rows`` (``(seq, hash, body)``) from ``start`` on are plain events: each at the next
    sequence number from ``expected``, naming the previous event's hash as its ``prev_hash`` (the
    first names ``link``; None: not checked), and hashing to its own hash."""
    sha256, key, after = hashlib.sha256, PREV_KEY, len(PREV_KEY)
    first, named = expected, None if link is None else link + '"'
    for seq, digest, body in itertools.islice(rows, start, None):
        if seq != expected or (named is not None and not body.startswith(named, body.rfind(key) + after)):
            break
        if sha256(body.encode()).hexdigest() != digest:
            break
        named = digest + '"'
        expected += 1
    return expected - first


class Segment:
    """The state of one segment's pass: fed batches in order, it keeps the plain run going."""

    def __init__(self, from_seq: int, link: str | None, want: Sequence[int]) -> None:
        self.through = from_seq - 1
        self.link = link
        self.want = sorted(want)
        self.hashes: dict[int, str] = {}
        self.tail: list[str] = []

    def feed(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Check the next batch; False once the run has ended."""
        run = plain_run(rows, 0, self.through + 1, self.link)
        if run:
            first = self.through + 1
            wanted = self.want[bisect.bisect_left(self.want, first) : bisect.bisect_left(self.want, first + run)]
            self.hashes |= {seq: rows[seq - first][1] for seq in wanted}
            self.tail = [*self.tail, *(row[1] for row in rows[max(0, run - 2) : run])][-2:]
            self.through += run
            self.link = self.tail[-1]
        return run == len(rows)

    def result(self) -> dict[str, Any]:
        """The result line's fields."""
        return {"through": self.through, "hashes": {str(k): v for k, v in self.hashes.items()}, "tail": self.tail}


def _sqlite_batches(store: dict[str, Any], query: str, args: tuple[str, int, int, int]) -> Iterator[list[Any]]:
    import sqlite3

    conn = sqlite3.connect(f"file:{store['sqlite']}?mode=ro", uri=True)
    try:
        yield from _batches(lambda *a: conn.execute(query.format("?", "?", "?", "?"), a).fetchall(), args)
    finally:
        conn.close()


def _postgresql_batches(store: dict[str, Any], query: str, args: tuple[str, int, int, int]) -> Iterator[list[Any]]:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(store["postgresql"], server_settings=store.get("server_settings")))
    try:
        prepared = loop.run_until_complete(conn.prepare(query.format("$1", "$2", "$3", "$4")))
        yield from _batches(lambda *a: [tuple(r) for r in loop.run_until_complete(prepared.fetch(*a))], args)
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def _batches(fetch: Any, args: tuple[str, int, int, int]) -> Iterator[list[Any]]:
    chain, low, high, batch = args
    while low < high:
        rows = fetch(chain, low, high, batch)
        yield rows
        if len(rows) < batch:
            return
        low = rows[-1][0]


def _say(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Check the segment ``job`` describes, saying how far it got after each batch; returns the result
    line's fields."""
    segment = Segment(job["from_seq"], job["link"], job["want"])
    store = job["store"]
    batches = _sqlite_batches if "sqlite" in store else _postgresql_batches
    done = 0
    for rows in batches(store, _SELECT, (job["chain"], job["from_seq"] - 1, job["to_seq"], job["batch"])):
        done += len(rows)
        if not segment.feed(rows):
            break
        _say({"done": done})
    return segment.result()


def main() -> int:
    """Read the job from standard input, write progress and the result to standard output."""
    _say(run(json.loads(sys.stdin.read())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
