"""Audit exports: a tenant's events as JSON Lines (plain or OCSF API Activity) with the checkpoints that
prove them, verifiable offline by anyone holding only the public keys.

An export is one JSON object per line:

1. a header ``{"type": "header", ...}`` naming the chain, the sequence range and the time window,
   signed like a checkpoint (so a file cut short or widened is detected);
2. every checkpoint of the range, ``{"type": "checkpoint", ...}``, the last one at or after the last
   event: the export's range is stretched to it, so every exported event is covered by a signature;
3. the events by sequence number: ``{"body": {...}, "hash": ..., "seq": ..., "type": "event"}``, the
   body being the event's canonical JSON exactly as hashed (``jsonl``), or OCSF API Activity objects
   (class_uid 6003) whose ``raw_data`` holds that body as a string (``ocsf``).

Format version 2; the verifier also reads version 1 files, whose events were flat records of every
field.

Before exporting, the chain's head is checkpointed if it is not already, so the newest events are
covered too. Secret values never reach an event (they are redacted when recorded), hence never an
export.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import anyio
import sqlalchemy as sa
from anyio import lowlevel

from scalemule import __version__
from scalemule.core import audit, audit_checkpoints
from scalemule.core.audit import AuditEvent
from scalemule.core.audit_checkpoints import Notary
from scalemule.core.audit_lines import EVENT_OPEN, event_line, parse_event_line
from scalemule.core.audit_verify import BATCH, ChainVerifier, Evidence, Problem, Report, Segments, event_of
from scalemule.core.errors import InvalidArgument
from scalemule.core.ids import utcnow
from scalemule.db.engine import Database, plain_rows
from scalemule.db.tables import audit_events, audit_heads

FORMAT = "scalemule-audit-export"
_HEADER_CONTEXT = b"scalemule-audit-export-v1\n"
OCSF_VERSION = "1.1.0"
API_ACTIVITY = 6003
# OCSF activity_id by the verb an operation name ends with; anything else is 99 (Other).
_ACTIVITIES = {
    "create": 1, "set": 1, "put_object": 1, "enqueue": 1, "add": 1, "claim": 1,
    "get": 2, "list": 2, "query": 2, "reveal": 2, "diff": 2, "history": 2, "head_object": 2, "get_object": 2,
    "whoami": 2, "check": 2, "verify": 2, "export": 2, "list_objects": 2,
    "promote": 3, "set_role": 3, "rotate": 3, "retry": 3, "heartbeat": 3, "complete": 3, "fail": 3,
    "delete": 4, "delete_object": 4, "revoke": 4, "remove": 4, "cancel": 4,
}  # fmt: skip
_STATUS = {"ok": (1, "Success"), "error": (2, "Failure"), "denied": (2, "Failure"), "cancelled": (99, "Other")}


@dataclass(frozen=True)
class Window:
    """What to export: chain ``chain`` (a tenant id), events at or after ``since`` and before ``until``."""

    chain: str
    tenant: str
    since: datetime | None = None
    until: datetime | None = None
    event_format: str = "jsonl"


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _activity(operation: str) -> int:
    for verb, activity in sorted(_ACTIVITIES.items(), key=lambda item: -len(item[0])):
        if operation == verb or operation.endswith("_" + verb):
            return activity
    return 99


def ocsf(event: AuditEvent, body: str, tenant: str) -> dict[str, Any]:
    """``event`` as an OCSF API Activity (class 6003) object; ``raw_data`` keeps its ``body`` as hashed."""
    activity = _activity(event.operation)
    status_id, status = _STATUS[event.outcome]
    actor: dict[str, Any] = {"user": {"uid": event.actor_id, "name": event.actor_name, "type": event.actor_kind}}
    if event.session_id is not None:
        actor["session"] = {"uid": event.session_id}
    if event.client_name is not None:
        actor["app_name"] = f"{event.client_name}/{event.client_version or '?'}"
    record: dict[str, Any] = {
        "class_uid": API_ACTIVITY,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity,
        "type_uid": API_ACTIVITY * 100 + activity,
        "severity_id": 1,
        "time": int(event.at.timestamp() * 1000),
        "duration": int(event.duration_ms),
        "status_id": status_id,
        "status": status,
        "status_code": event.error_code,
        "actor": actor,
        "api": {"operation": event.operation, "request": {"uid": event.request_id}, "service": {"name": "scalemule"}},
        "src_endpoint": {"name": event.transport},
        "cloud": {"provider": "scalemule", "account": {"uid": event.tenant_id, "name": tenant}},
        "resources": [] if event.target is None else [{"name": event.target, "type": "target"}],
        "metadata": {
            "version": OCSF_VERSION,
            "uid": event.id,
            "tenant_uid": event.tenant_id,
            "log_name": "audit",
            "sequence": event.seq,
            "product": {"name": "ScaleMule", "vendor_name": "ScaleMule", "version": __version__},
        },
        "unmapped": {"permission": event.permission, "outcome": event.outcome, "hash": event.hash},
        "raw_data": body,
    }
    return record


def _header_payload(header: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in header.items() if k != "signature"}
    return _HEADER_CONTEXT + _dumps(body).encode()


async def _range(db: Database, window: Window, last: int) -> tuple[int, int] | None:
    table = audit_events
    async with db.transaction() as conn:
        query = sa.select(sa.func.min(table.c.seq), sa.func.max(table.c.seq)).where(
            table.c.chain == window.chain, table.c.seq <= last
        )
        if window.since is not None:
            query = query.where(table.c.at >= window.since)
        if window.until is not None:
            query = query.where(table.c.at < window.until)
        found: Any = (await conn.execute(query)).one()
        low, high = found
        if low is None:
            return None
        covering = await audit_checkpoints.covering(conn, window.chain, int(high))
    return int(low), int(high) if covering is None else covering.seq


async def export(db: Database, notary: Notary, window: Window) -> AsyncIterator[str]:
    """The export's lines (each without its newline), streamed in batches of events.

    Raises:
        InvalidArgument: an unknown ``event_format``.
    """
    if window.event_format not in ("jsonl", "ocsf"):
        raise InvalidArgument(f"unknown export format {window.event_format!r}", hint="Use jsonl or ocsf.")
    async with db.transaction() as conn:
        await audit.checkpoint_head(conn, notary, window.chain)
        # Events appended from here on are not covered yet: the export stops at this head.
        head = (await conn.execute(sa.select(audit_heads.c.seq).where(audit_heads.c.chain == window.chain))).first()
    bounds = await _range(db, window, 0 if head is None else int(head.seq))
    low, high = bounds or (0, 0)
    header: dict[str, Any] = {
        "type": "header",
        "format": FORMAT,
        "version": 2,
        "event_format": window.event_format,
        "chain": window.chain,
        "tenant": window.tenant,
        "from_seq": low,
        "to_seq": high,
        "since": None if window.since is None else window.since.isoformat(),
        "until": None if window.until is None else window.until.isoformat(),
        "exported_at": utcnow().isoformat(),
    }
    key_id, private = notary.keys.current()
    header["key_id"] = key_id
    header["signature"] = base64.b64encode(private.sign(_header_payload(header))).decode()
    yield _dumps(header)
    if bounds is None:
        return
    async with db.transaction() as conn:
        rows = await conn.execute(audit_checkpoints.select_checkpoints(window.chain, low, high))
        for row in rows:
            yield _dumps({"type": "checkpoint", **audit_checkpoints.of_row(row).to_dict()})
    last = low - 1
    columns = sa.select(audit_events.c.seq, audit_events.c.hash, audit_events.c.body).order_by(audit_events.c.seq)
    while last < high:
        async with db.reader() as conn:
            where = (audit_events.c.chain == window.chain, audit_events.c.seq > last, audit_events.c.seq <= high)
            stored = await plain_rows(conn, columns.where(*where).limit(BATCH))
        if not stored:
            return
        for seq, digest, body in stored:
            if window.event_format == "jsonl":
                yield event_line(seq, digest, body)
            else:
                yield _dumps(ocsf(replace(AuditEvent.from_body(body, digest), seq=seq), body, window.tenant))
        last = stored[-1][0]


def _row_of_record(record: Mapping[str, Any]) -> tuple[int, str, str]:
    """(seq, hash, body) of an event record of any version: a jsonl line (2: the body; 1: every field
    flat) or an OCSF object (2: ``raw_data`` is the body; 1: every field, the hash too).

    Raises:
        ValueError, TypeError, KeyError: not an event record.
    """
    if "class_uid" in record:
        raw = record["raw_data"]
        fields = json.loads(raw)
        if "hash" not in fields:
            return int(record["metadata"]["sequence"]), str(record["unmapped"]["hash"]), str(raw)
    elif isinstance(record.get("body"), dict):
        return int(record["seq"]), str(record["hash"]), _dumps(record["body"])
    else:
        fields = record
    if not isinstance(fields, dict) or not isinstance(fields.get("at"), str):
        raise ValueError("not an event record")
    event = event_of({**fields, "at": datetime.fromisoformat(fields["at"])})
    return event.seq, event.hash, event.canonical().decode()


def _records(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            yield number, record if isinstance(record, dict) else {"type": "malformed"}


def _stored_rows(lines: Iterable[str]) -> Iterator[tuple[int, tuple[int, str, str] | None]]:
    """Each event line's (seq, hash, body), or None for a line that is not an event; headers and
    checkpoints are skipped. A line as ``event_line`` writes it is taken apart without parsing its
    JSON (the body is then checked by its hash); any other is parsed (``_row_of_record``)."""
    for number, line in enumerate(lines, 1):
        row = parse_event_line(line)
        if row is not None:
            yield number, row
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("type") in ("header", "checkpoint"):
            continue
        try:
            yield number, _row_of_record(record) if isinstance(record, dict) else None
        except (ValueError, TypeError, KeyError):
            yield number, None


async def verify_file(path: str, keys: Mapping[str, bytes], segments: Segments | None = None) -> Report:
    """Verify the export file at ``path`` offline (``verify_lines``). A long file's event lines are
    checked at once by segment processes (``segments``, by default one per CPU); when they find
    anything but plain events after the header and checkpoints, the file is verified in process,
    which names what is wrong."""
    segments = segments or Segments.of_file(path)
    if segments is not None:
        report = await _verify_in_segments(path, keys, segments)
        if report is not None:
            return report
    return await anyio.to_thread.run_sync(_verify_in_process, path, keys)


def _verify_in_process(path: str, keys: Mapping[str, bytes]) -> Report:
    with open(path, encoding="utf-8") as first, open(path, encoding="utf-8") as second:
        return verify_lines(first, second, keys)


async def _verify_in_segments(path: str, keys: Mapping[str, bytes], segments: Segments) -> Report | None:
    leading, start, end = await anyio.to_thread.run_sync(_leading_lines, path)
    started = _started(leading, keys)
    if isinstance(started, Report):
        return None  # the in-process pass says what is wrong with the header
    verifier, high = started
    async with anyio.create_task_group() as group:
        group.start_soon(_check_signatures, verifier)
        run = await segments.check_lines(start, end, sorted(verifier.checkpoints))
    if run is None or not verifier.follows(run):
        return None
    verifier.accept(run.through, run.hashes, run.tail)
    return _finished(verifier, high)


async def _check_signatures(verifier: ChainVerifier) -> None:
    await lowlevel.checkpoint()  # the segment processes start first: this is for meanwhile
    verifier.check_signatures()


def _leading_lines(path: str) -> tuple[list[str], int, int]:
    """The lines before the first event line (the header and checkpoints), where the event lines
    start, and the file's size."""
    leading: list[str] = []
    with open(path, "rb") as lines:
        while (line := lines.readline()) and not line.startswith(EVENT_OPEN.encode()):
            leading.append(line.decode("utf-8", "replace"))
        start = lines.tell() - len(line)
        return leading, start, lines.seek(0, os.SEEK_END)


def verify_lines(lines: Iterable[str], reread: Iterable[str], keys: Mapping[str, bytes]) -> Report:
    """Verify an export offline: its signed header, every checkpoint and every event.

    Two passes over the same file (``lines`` for the header and checkpoints, ``reread`` for the
    events, fed to the verifier in batches), so memory stays bounded whatever the export's size.
    """
    started = _started((line for line in lines if not line.startswith(EVENT_OPEN)), keys)
    if isinstance(started, Report):
        return started
    verifier, high = started
    batch: list[tuple[int, str, str]] = []
    for number, row in _stored_rows(reread):
        if row is None:
            if verifier.feed_stored(batch):
                detail = f"line {number} is not an event"
                verifier.report.problem = Problem(verifier.report.to_seq + 1, "edited", detail)
            return verifier.report
        batch.append(row)
        if len(batch) == BATCH:
            if not verifier.feed_stored(batch):
                break
            batch = []
    else:
        verifier.feed_stored(batch)
    return _finished(verifier, high)


def _started(lines: Iterable[str], keys: Mapping[str, bytes]) -> tuple[ChainVerifier, int] | Report:
    """A verifier of the export whose header and checkpoint lines are ``lines``, and the last sequence
    number its header promises; or the report of a header that is missing or does not verify."""
    header: dict[str, Any] = {}
    evidence: dict[int, Evidence] = {}
    for _, record in _records(lines):
        if record.get("type") == "header" and not header:
            header = record
        elif record.get("type") == "checkpoint":
            checkpoint = audit_checkpoints.Checkpoint.from_dict(record)
            evidence[checkpoint.seq] = Evidence(checkpoint)
    chain, low, high = str(header.get("chain", "")), _int(header.get("from_seq")), _int(header.get("to_seq"))
    verifier = ChainVerifier(chain, evidence, keys, max(low, 1))
    why = _header_problem(header, keys)
    if why is not None:
        verifier.report.problem = Problem(max(low, 1), why, "the export header is missing or does not verify")
        return verifier.report
    return verifier, high


def _finished(verifier: ChainVerifier, high: int) -> Report:
    report = verifier.finish(require_signed=True)
    if report.ok and report.to_seq < high:
        # Events and their checkpoints cut together: only the signed header still says how far it went.
        report.problem = Problem(report.to_seq + 1, "truncated", f"the export ends before seq {high}")
    return report


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _header_problem(header: Mapping[str, Any], keys: Mapping[str, bytes]) -> str | None:
    if header.get("format") != FORMAT:
        return "edited"
    public = keys.get(str(header.get("key_id")))
    if public is None:
        return "unknown_key"
    return audit_checkpoints.verify_bytes(public, str(header.get("signature")), _header_payload(header))
