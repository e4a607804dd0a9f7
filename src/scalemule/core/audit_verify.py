"""The audit verifier: one streaming pass over a chain's events by sequence number, plus its checkpoints.

``ChainVerifier`` is pure: it is fed events in stored order and holds only the last few hashes, so
the same code checks the database (``verify_chain``, reading bounded batches) and an export file
(``audit_export.verify_file``) in bounded memory, whatever the chain's length. It stops at the first
problem and names its sequence number and kind:

- ``edited``: an event's content no longer matches its hash, or its ``prev_hash`` is not the previous
  event's hash;
- ``missing``: a sequence number is absent (deleted, or the rest renumbered);
- ``inserted``: an event that was never appended sits in the chain (the rest renumbered around it);
- ``reordered``: events appear out of sequence order (an export file whose lines moved);
- ``truncated``: the chain ends before a checkpoint or the head row says it should;
- ``rewritten``: a signed checkpoint names another hash than the event at its sequence number: the
  chain was recomputed after an edit (the edit lies after the previous good checkpoint);
- ``bad_signature`` / ``unknown_key``: a checkpoint does not verify under the trusted public keys;
- ``digest_missing`` / ``digest_mismatch``: a checkpoint's digest object is absent or different;
- ``checkpoint_missing``: a digest object exists for a checkpoint the database no longer holds.

A long range is first checked by ``Segments``, processes of their own that can only confirm that
its events form one plain run (``audit_segments``); the checkpoints and the head are then checked
here. Whenever they cannot confirm it, the pass reads the range itself, so the report is the same.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import sqlalchemy as sa
from anyio import lowlevel
from anyio.streams.buffered import BufferedByteReceiveStream

from scalemule.blobs import BlobStore
from scalemule.core import audit_checkpoints, audit_segments
from scalemule.core.audit import GENESIS_HASH, AuditEvent
from scalemule.core.audit_checkpoints import Checkpoint, Notary
from scalemule.core.audit_segments import plain_run
from scalemule.core.errors import InvalidArgument
from scalemule.db.engine import Database, driver_target, plain_rows
from scalemule.db.tables import audit_events, audit_heads

BATCH = 5000
# A range this long or longer is split across processes, one per CPU up to MAX_PROCESSES (Segments).
SEGMENT_EVENTS = 25_000
MAX_PROCESSES = 8
# The least an export file's event line takes, in bytes: splits a file by size into segments.
LINE_BYTES = 512
# The longest line a segment process writes: its result, with a hash per checkpoint in its segment.
_RESULT_BYTES = 1 << 28
# How far past a gap the verifier looks for the absent sequence number before calling it missing
# rather than reordered (bounded: memory stays constant).
REORDER_WINDOW = 100
# Renumbering shifts tried on an event whose hash does not match: finds deletions and insertions.
_SHIFTS = (1, -1, 2, -2, 3, -3)
_EVENT_FIELDS = frozenset(AuditEvent.__dataclass_fields__)

Progress = Callable[[int, int], None]
log = logging.getLogger("scalemule")
# Runs a query and returns its rows. The event batches are read by position only: a reader may return
# the rows of a query carrying the execution option ``plain_rows`` as the driver gives them (``reader``).
Reader = Callable[[sa.Select[Any]], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a chain: where, what, and in words."""

    seq: int
    kind: str
    detail: str


@dataclass(frozen=True)
class Evidence:
    """What backs a checkpoint: its database row and its digest object (None: absent).

    ``digest_checked`` is False where digest objects are out of reach (an export file)."""

    row: Checkpoint | None
    digest: Checkpoint | None = None
    digest_checked: bool = False


@dataclass
class Report:
    """The outcome of verifying one chain (or a range of it).

    Attributes:
        events: events checked.
        checkpoints: checkpoints checked (signature, digest object, hash).
        last_checkpoint: the highest signed sequence number checked, if any.
        unsigned: events after the last checkpoint: linked and hashed correctly, but not yet signed,
            so a cut there would not be detectable yet.
    """

    chain: str
    from_seq: int
    to_seq: int = 0
    events: int = 0
    checkpoints: int = 0
    last_checkpoint: int | None = None
    unsigned: int = 0
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        problem = None if self.problem is None else self.problem.__dict__
        body = {k: v for k, v in self.__dict__.items() if k != "problem"}
        return {**body, "ok": self.ok, "problem": problem}


@dataclass
class _Suspect:
    """A problem found at ``seq`` whose kind depends on what follows: if the event of ``seq`` turns up
    within the window (by its sequence number, or by content that hashes right under ``seq``), the
    events were reordered; otherwise it is ``otherwise``."""

    seq: int
    otherwise: str
    by_content: bool
    detail: str = ""
    left: int = REORDER_WINDOW

    def __post_init__(self) -> None:
        self.detail = self.detail or f"no event with seq {self.seq}"


@dataclass
class ChainVerifier:
    """Push-style verifier of one chain: ``feed`` events in stored order, then ``finish``.

    Args:
        chain: the chain checked.
        checkpoints: evidence per sequence number, for every checkpoint in the range.
        keys: trusted public keys (key id -> raw 32 bytes).
        from_seq: the first sequence number expected; 1 also checks the genesis link.
    """

    chain: str
    checkpoints: Mapping[int, Evidence]
    keys: Mapping[str, bytes]
    from_seq: int = 1
    report: Report = field(init=False)
    _expected: int = field(init=False)
    _hashes: list[str] = field(init=False)
    _suspect: _Suspect | None = field(default=None, init=False)
    _checkpoint_seqs: list[int] = field(init=False)
    # What is wrong with each checkpoint's signature (None: nothing), once checked.
    _signatures: dict[Checkpoint, str | None] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._checkpoint_seqs = sorted(self.checkpoints)
        self.report = Report(self.chain, self.from_seq, self.from_seq - 1)
        self._expected = self.from_seq
        # The last two verified hashes (None: unknown, the range starts after genesis).
        self._hashes = [GENESIS_HASH] if self.from_seq == 1 else []

    @property
    def failed(self) -> bool:
        """True once a problem was found (further events are ignored)."""
        return self.report.problem is not None

    def _fail(self, seq: int, kind: str, detail: str) -> bool:
        self.report.problem = Problem(seq, kind, detail)
        return False

    def feed(self, event: AuditEvent) -> bool:
        """Check the next event as stored; False once the chain is known bad."""
        if self.failed:
            return False
        if self._suspect is not None:
            return self._look_for(event)
        expected = self._expected
        if event.seq > expected:
            # Absent here: missing, or moved further down (reordered). Look a bounded way ahead.
            self._suspect = _Suspect(expected, "missing", by_content=False)
            return True
        if event.seq < expected:
            kind = "reordered" if event.hash not in self._hashes else "inserted"
            detail = f"event {event.id} with seq {event.seq} appears after seq {expected - 1}"
            return self._fail(event.seq, kind, detail)
        if event.digest() != event.hash:
            return self._content_mismatch(event)
        if self._hashes and event.prev_hash != self._hashes[-1]:
            if len(self._hashes) == 2 and event.prev_hash == self._hashes[0]:
                return self._fail(expected - 1, "inserted", f"seq {expected} links past seq {expected - 1}")
            return self._fail(expected, "edited", f"prev_hash of seq {expected} is not the hash of seq {expected - 1}")
        self._hashes = [*self._hashes[-1:], event.hash]
        self._reach(event.seq)
        evidence = self.checkpoints.get(event.seq)
        return True if evidence is None else self._checkpoint(event.seq, event.hash, evidence)

    def feed_stored(self, rows: Sequence[Any]) -> bool:
        """Check the next stored events, given as ``(seq, hash, body)`` rows in stored order; False once
        the chain is known bad.

        The common case, a run of events each right after the last, whose body is the bytes its hash
        covers and names the last event's hash as its ``prev_hash`` (``plain_run``), is checked on the
        stored text without building the events. Anything else (a gap, a mismatch) goes through ``feed``
        as an event, which finds out what is wrong exactly as it would for an event read any other way.
        """
        count, done = len(rows), 0
        while done < count:
            if self.failed:
                return False
            known = self._suspect is None and self._hashes
            run = plain_run(rows, done, self._expected, self._hashes[-1]) if known else 0
            if run:
                first, last = self._expected, done + run
                hashes = {seq: rows[done + seq - first][1] for seq in self._signed(first, first + run - 1)}
                self.accept(first + run - 1, hashes, [row[1] for row in rows[max(done, last - 2) : last]])
                done = last
                continue
            seq, digest, body = rows[done]
            done += 1
            event = _stored_event(seq, digest, body)
            if event is None:
                # Not the bytes any event was hashed as: an edit here, unless an earlier problem awaits.
                suspect = self._suspect
                if suspect is not None:
                    return self._fail(suspect.seq, suspect.otherwise, suspect.detail)
                return self._fail(seq, "edited", f"the body stored at seq {seq} is not what its hash covers")
            if not self.feed(event):
                return False
        return not self.failed

    def follows(self, run: Run) -> bool:
        """True when ``run`` starts at the next expected sequence number, naming the last hash (when
        it is known): it can be taken as it is (``accept``)."""
        return run.first == self._expected and (not self._hashes or run.link == self._hashes[-1])

    def accept(self, through: int, hashes: Mapping[int, str], tail: Sequence[str]) -> bool:
        """Take the events from the next expected sequence number through ``through`` as a plain run
        (``plain_run`` passed them, here or in a process of its own), checking every checkpoint among
        them; False once the chain is known bad.

        Args:
            hashes: the hash of each event among them that a checkpoint signs.
            tail: the hashes of the last one or two.
        """
        for seq in self._signed(self._expected, through):
            self._reach(seq)
            if not self._checkpoint(seq, hashes[seq], self.checkpoints[seq]):
                return False
        self._reach(through)
        self._hashes = [*self._hashes, *tail][-2:]
        return True

    def _reach(self, seq: int) -> None:
        self.report.events += seq - self._expected + 1
        self.report.to_seq = seq
        self._expected = seq + 1

    def _signed(self, low: int, high: int) -> list[int]:
        """The signed sequence numbers from ``low`` through ``high``, in order."""
        return self._checkpoint_seqs[
            bisect.bisect_left(self._checkpoint_seqs, low) : bisect.bisect_right(self._checkpoint_seqs, high)
        ]

    def _look_for(self, event: AuditEvent) -> bool:
        suspect = self._suspect
        assert suspect is not None
        if suspect.by_content:
            found = event.seq != suspect.seq and replace(event, seq=suspect.seq).digest() == event.hash
        else:
            found = event.seq == suspect.seq
        if found:
            detail = f"the event appended as seq {suspect.seq} sits at seq {event.seq}"
            return self._fail(suspect.seq, "reordered", detail)
        suspect.left -= 1
        if suspect.left <= 0:
            return self._fail(suspect.seq, suspect.otherwise, suspect.detail)
        return True

    def _content_mismatch(self, event: AuditEvent) -> bool:
        seq = event.seq
        for shift in _SHIFTS:
            if replace(event, seq=seq + shift).digest() == event.hash and shift < 0:
                return self._fail(seq + shift, "inserted", f"the event at seq {seq} was appended as seq {seq + shift}")
            if replace(event, seq=seq + shift).digest() == event.hash:
                # A later event moved up: the rest was renumbered after a deletion, unless the event
                # of this seq turns up further on (rows swapped).
                detail = f"the event now at seq {seq} was appended as seq {seq + shift}"
                self._suspect = _Suspect(seq, "missing", by_content=True, detail=detail)
                return True
        detail = f"event {event.id} at seq {seq} does not match its hash"
        self._suspect = _Suspect(seq, "edited", by_content=True, detail=detail)
        return True

    def check_signatures(self) -> None:
        """Check every checkpoint's signature now (its row's and its digest object's), so that the
        pass later only looks the outcome up: a caller waiting on segment processes does it meanwhile."""
        for evidence in self.checkpoints.values():
            for checkpoint in (evidence.row, evidence.digest):
                if checkpoint is not None:
                    self._signature_problem(checkpoint)

    def _signature_problem(self, checkpoint: Checkpoint) -> str | None:
        if checkpoint not in self._signatures:
            self._signatures[checkpoint] = checkpoint.problem(self.keys)
        return self._signatures[checkpoint]

    def _checkpoint(self, seq: int, event_hash: str, evidence: Evidence) -> bool:
        row, digest = evidence.row, evidence.digest
        signed = row or digest
        assert signed is not None
        # The same checkpoint twice (the usual case) is one signature to check.
        for checkpoint in (c for c in (row, digest if digest != row else None) if c is not None):
            why = self._signature_problem(checkpoint)
            if why is not None:
                source = "checkpoint" if checkpoint is row else "digest object of the checkpoint"  # pragma: no mutate
                return self._fail(seq, why, f"the {source} at seq {seq} (key {checkpoint.key_id}) does not verify")
        if evidence.digest_checked and row is not None and digest is None:
            return self._fail(seq, "digest_missing", f"no digest object for the checkpoint at seq {seq}")
        if evidence.digest_checked and row is None:
            return self._fail(seq, "checkpoint_missing", f"a digest object at seq {seq} has no checkpoint row")
        if row is not None and digest is not None and row != digest:
            return self._fail(seq, "digest_mismatch", f"the digest object at seq {seq} differs from the checkpoint")
        if signed.hash != event_hash or signed.chain != self.chain or signed.seq != seq:
            after = self.report.last_checkpoint or 0
            return self._fail(seq, "rewritten", f"the chain between seq {after} and {seq} was recomputed")
        self.report.checkpoints += 1
        self.report.last_checkpoint = seq
        return True

    def finish(self, head: tuple[int, str] | None = None, *, require_signed: bool = False) -> Report:
        """Close the pass: the chain must reach every checkpoint and ``head`` (seq, hash) when given.

        Args:
            head: the chain's head as recorded beside the events (the database's head row).
            require_signed: every event must be covered by a checkpoint (an export file).
        """
        report = self.report
        if self._suspect is not None and not self.failed:
            self._fail(self._suspect.seq, self._suspect.otherwise, self._suspect.detail)
        if self.failed:
            return report
        last = report.to_seq
        beyond = [s for s in self.checkpoints if s > last]
        if beyond:
            self._fail(last + 1, "truncated", f"the chain ends at seq {last} but seq {min(beyond)} was signed")
        elif head is not None and head[0] > last:
            self._fail(last + 1, "truncated", f"the chain ends at seq {last} but its head is seq {head[0]}")
        elif head is not None and head[0] < last:
            self._fail(head[0] + 1, "inserted", f"events follow the head, seq {head[0]}")
        elif head is not None and report.events and head[1] != self._hashes[-1]:
            # Only a pass that verified an event knows the hash at ``last``: a range starting just
            # past the head checks none.
            self._fail(last, "rewritten", f"the head row does not match the event at seq {last}")
        report.unsigned = last - (report.last_checkpoint or self.from_seq - 1)
        if require_signed and report.unsigned and not self.failed:
            detail = f"events after seq {report.last_checkpoint or 0} are not covered by a checkpoint"
            self._fail(last, "unsigned", detail)
        return report


def _stored_event(seq: int, digest: str, body: str) -> AuditEvent | None:
    """The event a row holds, placed at the row's sequence number (a renumbered row keeps the one its
    body was hashed with); None when the body is not an event's JSON, or is the event written other
    than as it was hashed."""
    try:
        event = replace(AuditEvent.from_body(body, digest), seq=seq)
    except ValueError:
        return None
    if event.digest() == digest and hashlib.sha256(body.encode()).hexdigest() != digest:
        return None
    return event


def event_of(row: Mapping[Any, Any]) -> AuditEvent:
    """An ``AuditEvent`` from a stored row or an export record (extra keys ignored)."""
    return AuditEvent(**{k: v for k, v in row.items() if k in _EVENT_FIELDS})


async def _bounds(
    read: Reader, chain: str, head: tuple[int, str], digests: set[int], to_seq: int | None
) -> tuple[int, int]:
    """The last event a pass must cover (``to_seq`` stretched to the next checkpoint) and the last it
    reads (further, to every digest object, when the whole chain is checked)."""
    if to_seq is None:
        return head[0], max([head[0], *digests])
    end = min(to_seq, head[0])
    rows = await read(audit_checkpoints.select_checkpoints(chain, end, head[0]).limit(1))
    covering = [s for s in digests if s >= end] + [int(r.seq) for r in rows]
    end = min(covering) if covering else end
    return end, end


async def _prepare_checkpoints(
    verifier: ChainVerifier,
    blobs: BlobStore | None,
    evidence: dict[int, Evidence],
    digests: set[int],
    low: int,
    high: int,
) -> None:
    """Read the digest objects of the checkpoints from ``low`` to ``high`` into ``evidence`` (the
    verifier's), then check every signature."""
    await lowlevel.checkpoint()  # the segment processes start first: this work is for meanwhile
    if blobs is not None:
        await _load_digests(blobs, verifier.chain, evidence, digests, low, high)
    verifier.check_signatures()


async def _load_digests(
    blobs: BlobStore, chain: str, evidence: dict[int, Evidence], digests: set[int], low: int, high: int
) -> None:
    # Read only as the pass reaches them: a pass that stops early never fetches the rest.
    for seq in sorted(s for s in evidence if low <= s <= high and not evidence[s].digest_checked):
        found = await audit_checkpoints.read_digest(blobs, chain, seq) if seq in digests else None
        evidence[seq] = Evidence(evidence[seq].row, found, digest_checked=True)


@dataclass(frozen=True)
class Run:
    """Events that segment processes found to be one plain run (``audit_segments.plain_run``).

    Attributes:
        first: its first sequence number.
        link: the hash its first event names as its ``prev_hash``.
        through: its last sequence number.
        hashes: the hash of each signed event in it.
        tail: the hashes of its last two events.
    """

    first: int
    link: str
    through: int
    hashes: dict[int, str]
    tail: list[str]


def _joined(results: Sequence[dict[str, Any] | None]) -> Run | None:
    """The segments' results as one run; None when one failed or is not plain throughout, or when one
    does not start right after the one before, naming its last event's hash."""
    run: Run | None = None
    for result in results:
        if result is None or not result["complete"]:
            return None
        if result["first"] is None:
            continue  # a stretch of an export file without events
        hashes = {int(seq): digest for seq, digest in result["hashes"].items()}
        part = Run(result["first"], result["link"], result["through"], hashes, result["tail"])
        if run is None:
            run = part
        elif part.first == run.through + 1 and part.link == run.tail[-1]:
            run = Run(run.first, run.link, part.through, run.hashes | part.hashes, [*run.tail, *part.tail][-2:])
        else:
            return None
    return run


def _within(seqs: Sequence[int], low: int, high: int) -> list[int]:
    return [seq for seq in seqs if low <= seq <= high]


def _split(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """``[low, high)`` in ``count`` consecutive stretches of (nearly) equal length."""
    cuts = [low + (high - low) * i // count for i in range(count + 1)]
    return list(itertools.pairwise(cuts))


@dataclass(frozen=True)
class Segments:
    """Splits a long pass into segments checked at once, each in a process of its own
    (``audit_segments``), so a verification uses every CPU and leaves the event loop free.

    Attributes:
        source: what the processes read: a store (``driver_target``) or ``{"file": PATH}``.
        processes: how many run at once at most.
        least: the fewest events worth a process: a shorter range is checked in process.
    """

    source: dict[str, Any]
    processes: int
    least: int = SEGMENT_EVENTS

    @classmethod
    def of(cls, db: Database) -> Segments | None:
        """Segments reading ``db``, one per CPU this process may run on; None on one CPU."""
        return cls._made(driver_target(db.url))

    @classmethod
    def of_file(cls, path: str) -> Segments | None:
        """Segments reading the export file at ``path``, one per CPU; None on one CPU."""
        return cls._made({"file": path})

    @classmethod
    def _made(cls, source: dict[str, Any]) -> Segments | None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return cls(source, min(cpus, MAX_PROCESSES)) if cpus > 1 else None

    def bounds(self, low: int, high: int) -> list[tuple[int, int]]:
        """Each segment's first and last sequence number; none when the range is too short to split."""
        count = min(self.processes, (high - low + 1) // self.least)
        return [(first, after - 1) for first, after in _split(low, high + 1, count)] if count > 1 else []

    async def check(
        self,
        chain: str,
        low: int,
        high: int,
        signed: Sequence[int],
        progress: Callable[[int], None] | None,
        batch: int = BATCH,
    ) -> Run | None:
        """Check stored events ``low`` through ``high`` in segments; their run when every event is plain,
        None when something is not (or the range is short, or a process failed): the caller then reads
        the range itself. ``progress`` hears of the events done every ``batch`` in a segment."""
        jobs = [
            {"chain": chain, "from_seq": first, "to_seq": last, "batch": batch, "want": _within(signed, first, last)}
            for first, last in self.bounds(low, high)
        ]
        run = await self._run(jobs, progress)
        return run if run is not None and (run.first, run.through) == (low, high) else None

    async def check_lines(self, start: int, end: int, signed: Sequence[int]) -> Run | None:
        """Check the event lines of an export file that start in bytes ``[start, end)``; their run when
        every line is a plain event, else None (as ``check``)."""
        count = min(self.processes, (end - start) // (self.least * LINE_BYTES))
        stretches = _split(start, end, count) if count > 1 else []
        jobs = [{"start": low, "end": high, "want": list(signed), "batch": BATCH} for low, high in stretches]
        return await self._run(jobs, None)

    async def _run(self, jobs: list[dict[str, Any]], progress: Callable[[int], None] | None) -> Run | None:
        if not jobs:
            return None
        done = [0] * len(jobs)
        results: list[dict[str, Any] | None] = [None] * len(jobs)

        def advanced(index: int, count: int) -> None:
            done[index] = count
            if progress is not None:
                progress(sum(done))

        async def one(index: int) -> None:
            job = {"source": self.source, **jobs[index]}
            results[index] = await _segment(job, lambda count: advanced(index, count))

        async with anyio.create_task_group() as group:
            for index in range(len(jobs)):
                group.start_soon(one, index)
        try:
            return _joined(results)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # a result of another shape
            log.warning("an audit segment process answered %r, verifying in process", exc)
            return None


async def _segment(job: dict[str, Any], progress: Callable[[int], None]) -> dict[str, Any] | None:
    """Run one segment's process; its result, or None when it could not run or failed (logged)."""
    errors = bytearray()
    try:
        result, code = await _segment_process(job, progress, errors)
        failure = None if code == 0 and isinstance(result, dict) else f"exit {code}"
    except (OSError, anyio.BrokenResourceError, anyio.DelimiterNotFound, ValueError) as exc:
        result, failure = None, repr(exc)
    if failure is None and isinstance(result, dict):
        return result
    why = errors[-2000:].decode(errors="replace")
    log.warning("an audit segment process failed (%s), verifying in process: %s", failure, why)
    return None


async def _segment_process(job: dict[str, Any], progress: Callable[[int], None], errors: bytearray) -> tuple[Any, int]:
    """The result line of a segment process running ``job`` and its exit code; its standard error
    goes to ``errors``."""
    result: Any = None
    # -P: the working directory is not searched first, so nothing there can stand in for the module.
    async with await anyio.open_process([sys.executable, "-P", "-m", audit_segments.__name__]) as process:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        stdout, stderr = process.stdout, process.stderr

        async def collect_errors() -> None:
            async for chunk in stderr:
                errors.extend(chunk)

        async with anyio.create_task_group() as group:
            group.start_soon(collect_errors)
            await process.stdin.send(json.dumps(job).encode())
            await process.stdin.aclose()
            lines = BufferedByteReceiveStream(stdout)
            with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
                while True:
                    line = json.loads(await lines.receive_until(b"\n", _RESULT_BYTES))
                    if isinstance(line, dict) and "done" in line:
                        progress(line["done"])
                    else:
                        result = line
        return result, await process.wait()


async def verify_chain(
    read: Reader,
    blobs: BlobStore | None,
    keys: Mapping[str, bytes],
    chain: str,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    progress: Progress | None = None,
    batch: int = BATCH,
    segments: Segments | None = None,
) -> Report:
    """Verify chain ``chain`` as stored: events by sequence number in batches of ``batch``, every
    checkpoint's signature and, with ``blobs``, its digest object.

    A range (``from_seq``/``to_seq``) is read on to the first checkpoint at or after ``to_seq``, so
    its events are covered by a signature. Without ``to_seq`` the pass also checks the head row.

    Args:
        read: runs a query and returns its rows (one transaction per call, or the caller's own).
        blobs: where digest objects are; None skips them.
        keys: trusted public keys.
        chain: a tenant id, or ``-`` for the global chain.
        progress: called with (events done, events to check) after each batch. A cancellation stops
            the pass between batches.
        segments: checks long ranges in processes of their own first (``Segments``); the pass reads
            the store itself only when they find something that is not a plain run, to name it.

    Raises:
        InvalidArgument: ``from_seq`` lies past the chain's end, or after ``to_seq``.
    """
    # Digests first, then the head: every digest listed was committed before the head was read, so
    # none lies beyond it unless the chain was cut.
    digests = set() if blobs is None else await audit_checkpoints.digest_seqs(blobs, chain)
    heads = await read(sa.select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.chain == chain))
    head = (int(heads[0].seq), str(heads[0].hash)) if heads else (0, GENESIS_HASH)
    if from_seq > max([head[0], *digests]) + 1 or (to_seq is not None and to_seq < from_seq):
        raise InvalidArgument(
            f"from_seq {from_seq} is past the chain's end (seq {head[0]}) or after to_seq",
            hint=f"Pass a from_seq between 1 and {head[0] + 1}, and a to_seq at or after it.",
        )
    end, top = await _bounds(read, chain, head, digests, to_seq)
    rows = await read(audit_checkpoints.select_checkpoints(chain, from_seq, top))
    evidence = {int(row.seq): Evidence(audit_checkpoints.of_row(row)) for row in rows}
    evidence |= {s: Evidence(None) for s in digests if from_seq <= s <= top and s not in evidence}
    verifier = ChainVerifier(chain, evidence, keys, from_seq)
    total = max(0, end - from_seq + 1)
    tracker = None if progress is None else lambda done: progress(min(done, total), total)
    run = None
    if segments is not None:
        async with anyio.create_task_group() as group:
            if segments.bounds(from_seq, top):
                # While the segments are checked: what the checkpoints among their events need.
                group.start_soon(_prepare_checkpoints, verifier, blobs, evidence, digests, from_seq, top)
            run = await segments.check(chain, from_seq, top, sorted(evidence), tracker, batch)
    if run is not None and verifier.follows(run):
        # Every event through top is plain: what is left are the checkpoints among them, and the head.
        verifier.accept(run.through, run.hashes, run.tail)
        if progress is not None:
            progress(total, total)
        return verifier.finish(head if to_seq is None else None)
    table, last = audit_events, from_seq - 1
    events = sa.select(table.c.seq, table.c.hash, table.c.body).execution_options(plain_rows=True)
    while not verifier.failed:
        where = (table.c.chain == chain, table.c.seq > last, table.c.seq <= top)
        rows = await read(events.where(*where).order_by(table.c.seq).limit(batch))
        if blobs is not None and rows:
            await _load_digests(blobs, chain, evidence, digests, rows[0][0], rows[-1][0])
        verifier.feed_stored(rows)
        if len(rows) < batch:
            break
        last = rows[-1][0]
        if progress is not None:
            progress(min(last, end) - from_seq + 1, total)
        # A batch read may never wait on I/O (SQLite answers in-process): yield here, so the process
        # serves others (a task's heartbeats) and a cancellation stops the pass between batches.
        await lowlevel.checkpoint()
    if progress is not None:
        progress(total, total)
    return verifier.finish(head if to_seq is None else None)


async def chains(read: Reader, blobs: BlobStore | None) -> list[str]:
    """Every chain the database or the digest objects know of (a chain whose rows were all deleted
    still has digest objects)."""
    known = {str(row.chain) for row in await read(sa.select(audit_heads.c.chain))}
    if blobs is not None:
        prefix = audit_checkpoints.DIGEST_PREFIX + "/"
        async for entry in blobs.entries(prefix):
            known.add(entry.ref[len(prefix) :].split("/", 1)[0])
    return sorted(known)


def reader(db: Database) -> Reader:
    """A ``Reader`` running each query on its own, reading the last committed state without waiting
    for writers or holding them up (``Database.reader``)."""

    async def read(query: sa.Select[Any]) -> Sequence[Any]:
        async with db.reader() as conn:
            if query.get_execution_options().get("plain_rows"):
                return await plain_rows(conn, query)
            return (await conn.execute(query)).all()

    return read


async def verify_stored(
    db: Database,
    notary: Notary,
    chain: str,
    *,
    from_seq: int = 1,
    to_seq: int | None = None,
    progress: Progress | None = None,
    repair_digests: bool = False,
) -> tuple[Report, int]:
    """Verify a chain of ``db`` against the notary's public keys and blob store; returns the report
    and how many digest objects were repaired.

    With ``repair_digests``, a checkpoint whose digest object is missing (its write after commit
    failed) gets it written from the database's row, which the pass has just checked: its signature
    holds and every event up to it verified. The pass then goes on from there.
    """
    read, blobs, keys = reader(db), notary.blobs, notary.keys.public_keys()
    segments = Segments.of(db)
    start, repaired = from_seq, 0
    while True:
        # A repaired checkpoint can be the one past to_seq that covers the range: go on from it.
        end = None if to_seq is None else max(to_seq, start)
        report = await verify_chain(
            read, blobs, keys, chain, from_seq=start, to_seq=end, progress=progress, segments=segments
        )
        problem = report.problem
        if not repair_digests or problem is None or problem.kind != "digest_missing":
            break
        rows = await read(audit_checkpoints.select_checkpoints(chain, problem.seq, problem.seq))
        repaired += await notary.store_digests([audit_checkpoints.of_row(row) for row in rows])
        start = problem.seq
    if start != from_seq:
        report = await verify_chain(read, blobs, keys, chain, from_seq=from_seq, to_seq=to_seq, segments=segments)
    return report, repaired
