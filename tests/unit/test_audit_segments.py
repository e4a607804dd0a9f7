"""A segment's pass (core.audit_segments): how far a run of plain events goes, what it reports, and
that the module a segment process runs stays light."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from scalemule.core.audit import GENESIS_HASH
from scalemule.core.audit_segments import Segment, named_link, plain_run, run


def _chain(count: int, first: int = 1, link: str = GENESIS_HASH) -> list[tuple[int, str, str]]:
    """``count`` linked rows ``(seq, hash, body)``; each body names its link the way an event's does,
    after an ``args`` object that spells the same key."""
    rows = []
    for seq in range(first, first + count):
        body = json.dumps(
            {"args": {"prev_hash": "f" * 64}, "prev_hash": link, "seq": seq}, sort_keys=True, separators=(",", ":")
        )
        link = hashlib.sha256(body.encode()).hexdigest()
        rows.append((seq, link, body))
    return rows


def test_a_linked_run_is_plain_throughout() -> None:
    rows = _chain(5)
    assert plain_run(rows, 0, 1, GENESIS_HASH) == 5
    assert plain_run(rows, 2, 3, rows[1][1]) == 3


def test_a_run_stops_at_a_gap_a_wrong_link_or_a_wrong_hash() -> None:
    rows = _chain(6)
    assert plain_run([*rows[:3], *rows[4:]], 0, 1, GENESIS_HASH) == 3
    assert plain_run(rows, 0, 1, "e" * 64) == 0
    tampered = [*rows[:2], (3, rows[2][1], rows[2][2].replace('"seq":3', '"seq":30')), *rows[3:]]
    assert plain_run(tampered, 0, 1, GENESIS_HASH) == 2
    rehashed = [*rows[:2], (3, hashlib.sha256(tampered[2][2].encode()).hexdigest(), tampered[2][2]), *rows[3:]]
    assert plain_run(rehashed, 0, 1, GENESIS_HASH) == 3  # the next event still names the old hash


def test_the_link_is_read_from_the_top_level_key_not_from_inside_args() -> None:
    rows = _chain(2)
    assert plain_run(rows, 0, 1, "f" * 64) == 0


def _result(
    first: int | None, link: str | None, through: int, complete: bool, hashes: dict[str, str], tail: list[str]
) -> dict[str, object]:
    return {"first": first, "link": link, "through": through, "complete": complete, "hashes": hashes, "tail": tail}


def test_a_segment_reports_how_far_it_got_the_wanted_hashes_and_its_tail() -> None:
    rows = _chain(12)
    segment = Segment(1, want=[3, 7, 12])
    assert segment.feed(rows[:5]) and segment.feed(rows[5:10])
    assert not segment.feed([*rows[10:11], _chain(1, first=12, link="c" * 64)[0]])
    hashes = {"3": rows[2][1], "7": rows[6][1]}
    assert segment.result() == _result(1, GENESIS_HASH, 11, False, hashes, [rows[9][1], rows[10][1]])


def test_a_segment_starts_where_it_was_told_or_at_its_first_event() -> None:
    rows = _chain(4, first=20, link="a" * 64)
    told = Segment(20, want=[])
    assert told.feed(rows) and told.result() == _result(20, "a" * 64, 23, True, {}, [rows[2][1], rows[3][1]])
    anywhere = Segment(None, want=[21])
    assert (
        anywhere.feed(rows) and anywhere.result()["through"] == 23 and anywhere.result()["hashes"] == {"21": rows[1][1]}
    )
    late = Segment(19, want=[])
    assert not late.feed(rows) and late.result() == _result(20, "a" * 64, 19, False, {}, [])


def test_a_segment_without_events_is_complete_and_names_nothing() -> None:
    segment = Segment(None, want=[])
    assert segment.feed([]) and segment.result() == _result(None, None, -1, True, {}, [])


def test_the_link_named_is_the_top_level_one_and_must_be_a_whole_hash() -> None:
    rows = _chain(1, link="d" * 64)
    assert named_link(rows[0][2]) == "d" * 64
    assert named_link('{"prev_hash":"abc"}') is None
    assert named_link('{"n":1}') is None


HEAVY = ("sqlalchemy", "anyio", "mcp", "pydantic", "cryptography")
PROBE = f"""
import json, sys
import scalemule.core.audit_segments
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m.startswith("scalemule."))))
"""


def test_the_segment_module_starts_without_sqlalchemy_or_the_server() -> None:
    # A segment process starts per verification: it must load in tens of milliseconds.
    loaded = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == ["scalemule.core", "scalemule.core.audit_lines", "scalemule.core.audit_segments"]


def test_a_segment_reads_a_sqlite_file_whose_path_needs_quoting(tmp_path: Path) -> None:
    folder = tmp_path / "odd ?#% name"
    folder.mkdir()
    database = folder / "scalemule.db"
    rows = _chain(30)
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE audit_events (chain TEXT, seq INTEGER, hash TEXT, body TEXT)")
        conn.executemany("INSERT INTO audit_events VALUES ('c', ?, ?, ?)", rows)
    job = {"source": {"sqlite": str(database)}, "chain": "c", "from_seq": 11, "to_seq": 30, "batch": 7, "want": [20]}
    result = run(job)
    assert result == _result(11, rows[9][1], 30, True, {"20": rows[19][1]}, [rows[28][1], rows[29][1]])
