"""Verification split across segment processes (core.audit_verify.Segments): on a clean chain the
processes check every event and the report is the one the in-process pass gives; on a tampered
chain they find something that is not plain and the in-process pass names it, so the report is
again the same. Tamperings are committed (the processes read committed rows) and undone after.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from scalemule.core import audit, audit_checkpoints, audit_export, audit_verify
from scalemule.core.audit import AuditEvent
from scalemule.core.ids import new_id, utcnow
from scalemule.db.engine import driver_target
from scalemule.db.tables import audit_checkpoints as checkpoint_rows
from scalemule.db.tables import audit_events, audit_heads
from scalemule.db.tables.audit import AUDIT_STORED
from scalemule.runtime import Runtime

pytestmark = pytest.mark.anyio

EVENTS = 2400


class Chain:
    """A stored chain of ``EVENTS`` events, and what it takes to put it back after a tampering."""

    def __init__(self, runtime: Runtime, chain: str) -> None:
        self.runtime, self.chain = runtime, chain
        self.rows: list[dict[str, Any]] = []
        self.signed: list[audit_checkpoints.Checkpoint] = []
        self.signed_rows: list[dict[str, Any]] = []

    async def snapshot(self) -> None:
        async with self.runtime.db.transaction() as conn:
            query = sa.select(*(audit_events.c[name] for name in AUDIT_STORED)).where(
                audit_events.c.chain == self.chain
            )
            self.rows = [dict(row._mapping) for row in await conn.execute(query.order_by(audit_events.c.seq))]
            found = list(await conn.execute(audit_checkpoints.select_checkpoints(self.chain)))
            self.signed = [audit_checkpoints.of_row(row) for row in found]
            self.signed_rows = [dict(row._mapping) for row in found]

    async def run(self, *statements: Any) -> None:
        async with self.runtime.db.transaction() as conn:
            for statement in statements:
                await conn.execute(statement)

    async def restore(self) -> None:
        last = self.rows[-1]
        await self.run(
            audit_events.delete().where(audit_events.c.chain == self.chain),
            audit_events.insert().values(self.rows),
            checkpoint_rows.delete().where(checkpoint_rows.c.chain == self.chain),
            checkpoint_rows.insert().values(self.signed_rows),
            audit_heads.update().where(audit_heads.c.chain == self.chain).values(seq=last["seq"], hash=last["hash"]),
        )
        for checkpoint in self.signed:
            await self.runtime.blobs.delete(checkpoint.digest_ref)
        await self.runtime.notary.store_digests(self.signed)

    def where(self, *conditions: Any) -> Any:
        return sa.and_(audit_events.c.chain == self.chain, *conditions)

    async def verify(self, segments: audit_verify.Segments | None, **options: Any) -> audit_verify.Report:
        keys = self.runtime.notary.keys.public_keys()
        read = audit_verify.reader(self.runtime.db)
        return await audit_verify.verify_chain(read, self.runtime.blobs, keys, self.chain, segments=segments, **options)


async def _chain(runtime: Runtime) -> Chain:
    chain = new_id("ten")
    for start in range(0, EVENTS, 400):
        events = [
            AuditEvent(
                at=utcnow(),
                operation="config_get",
                outcome="ok",
                transport="cli",
                duration_ms=0.5,
                args={"key": f"k{start + i}"},
                tenant_id=chain,
                target=f"k{start + i}",
            )
            for i in range(400)
        ]
        async with runtime.db.transaction() as conn:
            await audit.append(conn, events)
    async with runtime.db.transaction() as conn:
        await audit.checkpoint_head(conn, runtime.notary, chain)
    made = Chain(runtime, chain)
    await made.snapshot()
    return made


def _segments(runtime: Runtime) -> audit_verify.Segments:
    # Three segments of 800 events: [1, 800], [801, 1600], [1601, 2400].
    return audit_verify.Segments(driver_target(runtime.db.url), processes=3, least=500)


def _event(row: dict[str, Any]) -> AuditEvent:
    return AuditEvent.from_body(row["body"], row["hash"])


async def test_a_clean_chain_is_checked_by_the_segments_with_the_in_process_report(runtime: Runtime) -> None:
    chain, segments = await _chain(runtime), _segments(runtime)
    assert segments.bounds(1, EVENTS) == [(1, 800), (801, 1600), (1601, 2400)]
    signed = [c.seq for c in chain.signed]
    run = await segments.check(chain.chain, 1, EVENTS, signed, None)
    assert run is not None and run.hashes == {c.seq: c.hash for c in chain.signed}
    assert run.tail == [chain.rows[-2]["hash"], chain.rows[-1]["hash"]]
    alone = await chain.verify(None)
    together = await chain.verify(segments)
    assert alone.ok and together == alone and together.checkpoints == len(signed) >= 3
    ranged = await chain.verify(segments, from_seq=700, to_seq=1700)
    assert ranged.ok and ranged == await chain.verify(None, from_seq=700, to_seq=1700)


async def test_progress_across_segments_rises_to_the_total(runtime: Runtime) -> None:
    chain, calls = await _chain(runtime), []
    report = await chain.verify(_segments(runtime), batch=500, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and calls[-1] == (EVENTS, EVENTS) and len(calls) > 3
    assert all(a[0] <= b[0] and a[1] == EVENTS for a, b in itertools.pairwise(calls))


async def _edit_first_of_a_segment(chain: Chain) -> None:
    row = chain.rows[800]
    body = str(replace(_event(row), outcome="denied").row()["body"])
    await chain.run(audit_events.update().where(chain.where(audit_events.c.seq == 801)).values(body=body))


async def _delete_the_last_of_a_segment(chain: Chain) -> None:
    await chain.run(audit_events.delete().where(chain.where(audit_events.c.seq == 800)))


async def _swap_across_a_boundary(chain: Chain) -> None:
    a, b = chain.rows[1599], chain.rows[1600]
    await chain.run(
        audit_events.delete().where(chain.where(audit_events.c.seq.in_([1600, 1601]))),
        audit_events.insert().values([{**b, "seq": 1600}, {**a, "seq": 1601}]),
    )


async def _rehash_the_tail(chain: Chain) -> None:
    prev, updates = chain.rows[1698]["hash"], []
    for row in chain.rows[1699:]:
        event = replace(_event(row), prev_hash=prev)
        if event.seq == 1700:
            event = replace(event, outcome="denied")
        event = replace(event, hash=event.digest())
        updates.append({"s": event.seq, "h": event.hash, "b": event.row()["body"]})
        prev = event.hash
    where = chain.where(audit_events.c.seq == sa.bindparam("s"))
    async with chain.runtime.db.transaction() as conn:
        await conn.execute(
            audit_events.update().where(where).values(hash=sa.bindparam("h"), body=sa.bindparam("b")), updates
        )
        head = audit_heads.update().where(audit_heads.c.chain == chain.chain)
        await conn.execute(head.values(hash=prev))


async def _truncate(chain: Chain) -> None:
    await chain.run(audit_events.delete().where(chain.where(audit_events.c.seq > 2300)))


async def _forge_a_checkpoint(chain: Chain) -> None:
    middle = next(c for c in chain.signed if 1 < c.seq < EVENTS)
    where = sa.and_(checkpoint_rows.c.chain == chain.chain, checkpoint_rows.c.seq == middle.seq)
    await chain.run(checkpoint_rows.update().where(where).values(hash="f" * 64))


async def _lose_a_digest_object(chain: Chain) -> None:
    await chain.runtime.blobs.delete(chain.signed[-2].digest_ref)


# Each: the tampering, the problem kind, and whether the segments still find every event plain.
TAMPERINGS = [
    (_edit_first_of_a_segment, "edited", False),
    (_delete_the_last_of_a_segment, "missing", False),
    (_swap_across_a_boundary, "reordered", False),
    (_rehash_the_tail, "rewritten", True),  # linked throughout: the signed hash tells
    (_truncate, "truncated", False),
    (_forge_a_checkpoint, "bad_signature", True),
    (_lose_a_digest_object, "digest_missing", True),
]


async def test_a_tampered_chain_gets_the_report_of_the_in_process_pass(runtime: Runtime) -> None:
    chain, segments = await _chain(runtime), _segments(runtime)
    signed = [c.seq for c in chain.signed]
    for tamper, kind, plain in TAMPERINGS:
        await tamper(chain)
        try:
            alone = await chain.verify(None)
            together = await chain.verify(segments)
            run = await segments.check(chain.chain, 1, EVENTS, signed, None)
        finally:
            await chain.restore()
        assert alone.problem is not None and alone.problem.kind == kind, (tamper.__name__, alone.problem)
        assert together == alone, tamper.__name__
        assert (run is not None) == plain, tamper.__name__
    assert (await chain.verify(segments)).ok


async def test_a_segment_process_that_fails_leaves_the_pass_to_the_process_itself(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    chain = await _chain(runtime)
    broken = audit_verify.Segments({"sqlite": str(runtime.settings.data_dir / "absent" / "db")}, processes=2, least=500)
    with caplog.at_level(logging.WARNING, logger="scalemule"):
        assert await broken.check(chain.chain, 1, EVENTS, [], None) is None
        report = await chain.verify(broken)
    assert report.ok and report == await chain.verify(None)
    assert "audit segment process failed" in caplog.text and "unable to open database file" in caplog.text


async def test_a_segment_process_that_cannot_start_leaves_the_pass_to_the_process_itself(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    chain = await _chain(runtime)
    monkeypatch.setattr(sys, "executable", str(runtime.settings.data_dir / "no-python-here"))
    with caplog.at_level(logging.WARNING, logger="scalemule"):
        report = await chain.verify(_segments(runtime))
    monkeypatch.undo()
    assert report.ok and report == await chain.verify(None)
    assert "FileNotFoundError" in caplog.text


async def test_a_short_range_or_a_single_process_is_not_split(runtime: Runtime) -> None:
    segments = _segments(runtime)
    assert segments.bounds(1, 999) == []
    assert replace(segments, processes=1).bounds(1, EVENTS) == []
    assert segments.bounds(1, 1000) == [(1, 500), (501, 1000)]
    assert audit_verify.Segments.of(runtime.db) is None or audit_verify.Segments.of(runtime.db).processes >= 2  # type: ignore[union-attr]


async def _export(chain: Chain, path: Path) -> list[str]:
    window = audit_export.Window(chain.chain, "acme")
    lines = [line async for line in audit_export.export(chain.runtime.db, chain.runtime.notary, window)]
    await anyio.Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def _in_process(path: Path, keys: Any) -> audit_verify.Report:
    with path.open(encoding="utf-8") as first, path.open(encoding="utf-8") as second:
        return audit_export.verify_lines(first, second, keys)


def _events_from(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith('{"body":'))


def _edit_an_event_line(lines: list[str]) -> list[str]:
    at = _events_from(lines) + 1200
    return [*lines[:at], lines[at].replace('"outcome":"ok"', '"outcome":"denied"'), *lines[at + 1 :]]


def _swap_event_lines(lines: list[str]) -> list[str]:
    at = _events_from(lines) + 1599
    return [*lines[:at], lines[at + 1], lines[at], *lines[at + 2 :]]


def _move_a_checkpoint_line_to_the_end(lines: list[str]) -> list[str]:
    return [lines[0], *lines[2:], lines[1]]


def _cut_the_last_events(lines: list[str]) -> list[str]:
    return lines[:-100]


def _drop_a_line(lines: list[str]) -> list[str]:
    at = _events_from(lines) + 800
    return [*lines[:at], *lines[at + 1 :]]


FILE_TAMPERINGS = [
    (_edit_an_event_line, "edited"),
    (_swap_event_lines, "reordered"),
    (_move_a_checkpoint_line_to_the_end, None),
    (_cut_the_last_events, "truncated"),
    (_drop_a_line, "missing"),
]


async def test_an_export_file_is_checked_in_segments_with_the_in_process_report(
    runtime: Runtime, tmp_path: Path
) -> None:
    chain, path = await _chain(runtime), tmp_path / "export.jsonl"
    lines = await _export(chain, path)
    keys = runtime.notary.keys.public_keys()
    segments = audit_verify.Segments({"file": str(path)}, processes=3, least=1)
    start = sum(len(line.encode()) + 1 for line in lines[: _events_from(lines)])
    signed = [c.seq for c in chain.signed]
    run = await segments.check_lines(start, (await anyio.Path(path).stat()).st_size, signed)
    assert run is not None and (run.first, run.through) == (1, EVENTS) and set(run.hashes) == set(signed)
    report = await audit_export.verify_file(str(path), keys, segments)
    assert report.ok and report == _in_process(path, keys) and report.events == EVENTS
    for tamper, kind in FILE_TAMPERINGS:
        await anyio.Path(path).write_text("\n".join(tamper(lines)) + "\n", encoding="utf-8")
        alone = _in_process(path, keys)
        assert (alone.problem and alone.problem.kind) == kind, (tamper.__name__, alone.problem)
        assert await audit_export.verify_file(str(path), keys, segments) == alone, tamper.__name__


def _segment_children() -> list[int]:
    """Our child processes running a segment (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"audit_segments" in command:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
async def test_a_cancelled_verification_leaves_no_segment_process_behind(runtime: Runtime) -> None:
    chain = await _chain(runtime)
    with anyio.CancelScope() as scope:
        await chain.verify(_segments(runtime), batch=100, progress=lambda done, total: scope.cancel())
    assert scope.cancelled_caught
    assert _segment_children() == []


async def test_a_scalemule_folder_in_the_working_directory_does_not_stand_in_for_the_package(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    chain, impostor = await _chain(runtime), tmp_path / "cwd" / "scalemule"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise SystemExit('not the package')\n")
    monkeypatch.chdir(impostor.parent)
    assert await _segments(runtime).check(chain.chain, 1, EVENTS, [c.seq for c in chain.signed], None) is not None
