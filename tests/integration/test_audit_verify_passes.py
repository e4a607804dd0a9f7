"""Verification passes over a stored log: ranges, batches and progress, the head row, digest objects
found without their rows, every chain listed, and digest repair (core.audit_verify)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from scalemule.core import audit, audit_checkpoints, audit_verify
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import InvalidArgument
from scalemule.core.ids import new_id, utcnow
from scalemule.db.tables import audit_checkpoints as checkpoint_rows
from scalemule.db.tables import audit_events, audit_heads
from scalemule.db.tables.audit import AUDIT_STORED
from scalemule.runtime import Runtime

pytestmark = pytest.mark.anyio


async def _log(runtime: Runtime, events: int, *, signed: tuple[int, ...] = ()) -> str:
    """A new chain of ``events`` events, checkpointed at its first event (as every chain is) and at
    each sequence number in ``signed``."""
    chain = new_id("ten")
    await _append(runtime, chain, range(1, events + 1), signed=signed)
    return chain


async def _append(runtime: Runtime, chain: str, seqs: range, *, signed: tuple[int, ...] = ()) -> None:
    """Append the events ``seqs`` number to ``chain``, checkpointing at each one in ``signed``."""
    for seq in seqs:
        async with runtime.db.transaction() as conn:
            event = AuditEvent(
                at=utcnow(),
                operation="whoami",
                outcome="ok",
                transport="cli",
                duration_ms=0.5,
                args={},
                tenant_id=chain,
            )
            await audit.append(conn, [event])
            if seq in signed:
                await audit.checkpoint_head(conn, runtime.notary, chain)


async def _verify(runtime: Runtime, chain: str, *, digests: bool = True, **options: object) -> audit_verify.Report:
    keys = runtime.notary.keys.public_keys()
    blobs = runtime.blobs if digests else None
    return await audit_verify.verify_chain(audit_verify.reader(runtime.db), blobs, keys, chain, **options)  # type: ignore[arg-type]


async def _run(runtime: Runtime, *statements: sa.Executable) -> None:
    async with runtime.db.transaction() as conn:
        for statement in statements:
            await conn.execute(statement)


def _found(report: audit_verify.Report) -> tuple[int, str] | None:
    return None if report.problem is None else (report.problem.seq, report.problem.kind)


def _counts(report: audit_verify.Report) -> tuple[int, int, int, int, int | None, int]:
    return (report.from_seq, report.to_seq, report.events, report.checkpoints, report.last_checkpoint, report.unsigned)


async def test_a_range_is_read_on_to_the_next_checkpoint_with_or_without_digest_objects(runtime: Runtime) -> None:
    chain = await _log(runtime, 8, signed=(5, 7))
    for digests in (True, False):
        report = await _verify(runtime, chain, digests=digests, from_seq=2, to_seq=3)
        assert report.ok and _counts(report) == (2, 5, 4, 1, 5, 0), digests


async def test_a_range_after_the_last_checkpoint_ends_where_it_was_asked_to(runtime: Runtime) -> None:
    chain = await _log(runtime, 5)
    report = await _verify(runtime, chain, from_seq=2, to_seq=3)
    assert report.ok and _counts(report) == (2, 3, 2, 0, None, 2)


async def test_a_chain_without_events_verifies_empty(runtime: Runtime) -> None:
    report = await _verify(runtime, new_id("ten"))
    assert report.ok and _counts(report) == (1, 0, 0, 0, None, 0)


async def test_a_range_may_start_just_past_the_head_and_end_where_it_starts(runtime: Runtime) -> None:
    chain = await _log(runtime, 3)
    calls: list[tuple[int, int]] = []
    assert (await _verify(runtime, chain, from_seq=4, progress=lambda d, t: calls.append((d, t)))).ok
    assert calls == [(0, 0)]
    with pytest.raises(InvalidArgument):
        await _verify(runtime, chain, from_seq=5)
    report = await _verify(runtime, chain, from_seq=2, to_seq=2)
    assert report.ok and _counts(report) == (2, 2, 1, 0, None, 1)


async def test_a_chain_is_read_in_batches_and_progress_is_reported_after_each(runtime: Runtime) -> None:
    chain = await _log(runtime, 7, signed=(6,))
    calls: list[tuple[int, int]] = []
    report = await _verify(runtime, chain, batch=3, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.events == 7 and calls == [(3, 7), (6, 7), (7, 7)]
    calls.clear()
    report = await _verify(runtime, chain, from_seq=3, to_seq=4, batch=2, progress=lambda d, t: calls.append((d, t)))
    assert report.ok and _counts(report) == (3, 6, 4, 1, 6, 0) and calls == [(2, 4), (4, 4), (4, 4)]


@pytest.mark.parametrize("digests", [True, False])
async def test_a_checkpoint_signed_during_a_range_pass_does_not_stretch_it_past_the_head_it_read(
    runtime: Runtime, digests: bool
) -> None:
    chain, read, reads = await _log(runtime, 4), audit_verify.reader(runtime.db), 0

    async def read_while_appending(query: sa.Select[Any]) -> Sequence[Any]:
        nonlocal reads
        rows = await read(query)
        reads += 1
        if reads == 1:  # the head row (seq 4) was read: two more events are appended and signed now
            await _append(runtime, chain, range(5, 7), signed=(6,))
        return rows

    keys, blobs = runtime.notary.keys.public_keys(), runtime.blobs if digests else None
    report = await audit_verify.verify_chain(read_while_appending, blobs, keys, chain, from_seq=2, to_seq=3)
    assert report.ok and _counts(report) == (2, 3, 2, 0, None, 2)


async def test_the_head_row_is_checked_when_the_whole_chain_is_and_not_for_a_range(runtime: Runtime) -> None:
    chain = await _log(runtime, 5)
    await _run(runtime, audit_events.delete().where(audit_events.c.chain == chain, audit_events.c.seq == 5))
    assert _found(await _verify(runtime, chain)) == (5, "truncated")
    assert (await _verify(runtime, chain, from_seq=2, to_seq=4)).ok


async def test_a_digest_object_without_its_checkpoint_row_is_found_at_the_first_and_last_seq_read(
    runtime: Runtime,
) -> None:
    chain = await _log(runtime, 5, signed=(5,))
    await _run(runtime, checkpoint_rows.delete().where(checkpoint_rows.c.chain == chain, checkpoint_rows.c.seq == 5))
    assert _found(await _verify(runtime, chain, from_seq=5)) == (5, "checkpoint_missing")


async def test_rows_stored_out_of_sequence_order_are_read_in_sequence_order(runtime: Runtime) -> None:
    chain = await _log(runtime, 4)
    async with runtime.db.transaction() as conn:
        where = sa.and_(audit_events.c.chain == chain, audit_events.c.seq.in_([1, 2]))
        stored = [audit_events.c[name] for name in AUDIT_STORED]
        rows = [dict(r._mapping) for r in await conn.execute(sa.select(*stored).where(where))]
        await conn.execute(audit_events.delete().where(where))
        await conn.execute(audit_events.insert(), sorted(rows, key=lambda r: -int(r["seq"])))
    assert (await _verify(runtime, chain)).ok


async def test_every_chain_is_listed_even_one_known_only_from_its_digest_objects(runtime: Runtime) -> None:
    kept, cut = await _log(runtime, 2), await _log(runtime, 2)
    await _run(
        runtime,
        audit_events.delete().where(audit_events.c.chain == cut),
        audit_heads.delete().where(audit_heads.c.chain == cut),
        checkpoint_rows.delete().where(checkpoint_rows.c.chain == cut),
    )
    read = audit_verify.reader(runtime.db)
    assert {kept, cut} <= set(await audit_verify.chains(read, runtime.blobs))
    without_digests = await audit_verify.chains(read, None)
    assert kept in without_digests and cut not in without_digests
    assert _found(await _verify(runtime, cut)) == (1, "truncated")


async def _drop_digest(runtime: Runtime, chain: str, seq: int) -> None:
    await runtime.blobs.delete(audit_checkpoints.digest_ref(chain, seq))


async def _digests(runtime: Runtime, chain: str) -> set[int]:
    return await audit_checkpoints.digest_seqs(runtime.blobs, chain)


async def test_a_missing_digest_object_is_reported_and_rewritten_only_when_asked(runtime: Runtime) -> None:
    chain = await _log(runtime, 3)
    await _drop_digest(runtime, chain, 1)
    report, repaired = await audit_verify.verify_stored(runtime.db, runtime.notary, chain)
    assert (_found(report), report.from_seq, repaired) == ((1, "digest_missing"), 1, 0)
    assert await _digests(runtime, chain) == set()
    report, repaired = await audit_verify.verify_stored(runtime.db, runtime.notary, chain, repair_digests=True)
    assert report.ok and repaired == 1 and await _digests(runtime, chain) == {1}


async def test_repair_rewrites_the_missing_digest_objects_of_the_range_and_reports_the_whole_range(
    runtime: Runtime,
) -> None:
    chain = await _log(runtime, 7, signed=(3, 5, 7))
    for seq in (3, 5, 7):
        await _drop_digest(runtime, chain, seq)
    calls: list[tuple[int, int]] = []
    report, repaired = await audit_verify.verify_stored(
        runtime.db,
        runtime.notary,
        chain,
        from_seq=2,
        to_seq=4,
        progress=lambda done, total: calls.append((done, total)),
        repair_digests=True,
    )
    assert report.ok and _counts(report) == (2, 5, 4, 2, 5, 0) and repaired == 2
    # One pass per repair, each from the checkpoint it repaired; the digest past the range stays missing.
    assert calls == [(4, 4), (3, 3), (1, 1)] and await _digests(runtime, chain) == {1, 3, 5}


async def test_repair_writes_no_digest_object_past_the_first_other_problem_which_it_reports(
    runtime: Runtime,
) -> None:
    chain = await _log(runtime, 7, signed=(3, 5, 7))
    await _drop_digest(runtime, chain, 3)
    await _drop_digest(runtime, chain, 5)
    await runtime.notary.store_digests([runtime.notary.sign(chain, 5, "e" * 64)])
    await _drop_digest(runtime, chain, 7)
    report, repaired = await audit_verify.verify_stored(runtime.db, runtime.notary, chain, repair_digests=True)
    assert (_found(report), report.from_seq, repaired) == ((5, "digest_mismatch"), 1, 1)
    assert await _digests(runtime, chain) == {1, 3, 5}
