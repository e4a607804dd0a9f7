"""Exports verified offline (core.audit_export): each format, files written by the previous format
version, and tamperings of the lines the verifier reads without parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scalemule.core import audit, audit_export
from scalemule.core.audit import AuditEvent
from scalemule.core.ids import new_id, utcnow
from scalemule.runtime import Runtime

pytestmark = pytest.mark.anyio

EVENTS = 12


async def _export(runtime: Runtime, event_format: str) -> list[str]:
    """The lines of an export of a new chain of ``EVENTS`` events, one of them with a NUL and other
    scripts in its arguments."""
    chain = new_id("ten")
    for i in range(EVENTS):
        async with runtime.db.transaction() as conn:
            args: dict[str, Any] = {"key": f"k{i}", "value": "caf\u00e9 \u4e00\x00" if i == 3 else i}
            event = AuditEvent(
                at=utcnow(),
                operation="config_set",
                outcome="ok",
                transport="cli",
                duration_ms=i / 3,
                args=args,
                tenant_id=chain,
                target=f"k{i}",
            )
            await audit.append(conn, [event])
    window = audit_export.Window(chain, "acme", event_format=event_format)
    return [line async for line in audit_export.export(runtime.db, runtime.notary, window)]


def _verify(runtime: Runtime, lines: list[str]) -> audit_export.Report:
    keys = runtime.notary.keys.public_keys()
    text = [line + "\n" for line in lines]
    return audit_export.verify_lines(iter(text), iter(text), keys)


def _first_event(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if '"type":"event"' in line or '"class_uid"' in line)


@pytest.mark.parametrize("event_format", ["jsonl", "ocsf"])
async def test_an_export_holds_each_body_as_hashed_and_verifies(runtime: Runtime, event_format: str) -> None:
    lines = await _export(runtime, event_format)
    events = [json.loads(line) for line in lines[_first_event(lines) :]]
    bodies = [e["body"] if event_format == "jsonl" else json.loads(e["raw_data"]) for e in events]
    assert [b["seq"] for b in bodies] == list(range(1, EVENTS + 1)) and bodies[3]["args"]["value"].endswith("\x00")
    report = _verify(runtime, lines)
    assert report.ok and (report.events, report.unsigned) == (EVENTS, 0), report


async def test_an_export_of_the_previous_format_still_verifies(runtime: Runtime) -> None:
    # Version 1 wrote every field of an event flat, the hash among them; OCSF's raw_data likewise.
    lines = await _export(runtime, "jsonl")
    start = _first_event(lines)
    old = []
    for line in lines[start:]:
        record = json.loads(line)
        old.append(json.dumps({"type": "event", **record["body"], "hash": record["hash"]}))
    report = _verify(runtime, [*lines[:start], *old])
    assert report.ok and report.events == EVENTS, report


async def test_a_body_edited_in_place_is_found_at_its_sequence_number(runtime: Runtime) -> None:
    # The line keeps its shape, so the verifier takes the body out without parsing: its hash catches it.
    lines = await _export(runtime, "jsonl")
    at = _first_event(lines) + 4
    edited = lines[at].replace('"operation":"config_set"', '"operation":"config_get"')
    assert edited != lines[at]
    report = _verify(runtime, [*lines[:at], edited, *lines[at + 1 :]])
    assert report.problem is not None and (report.problem.seq, report.problem.kind) == (5, "edited")


async def test_lines_moved_or_rewritten_outside_the_shape_are_found(runtime: Runtime) -> None:
    lines = await _export(runtime, "jsonl")
    at = _first_event(lines) + 6
    swapped = [*lines[:at], lines[at + 1], lines[at], *lines[at + 2 :]]
    report = _verify(runtime, swapped)
    assert report.problem is not None and (report.problem.seq, report.problem.kind) == (7, "reordered")
    record = json.loads(lines[at])
    spaced = json.dumps({**record, "body": {**record["body"], "target": "elsewhere"}}, indent=1).replace("\n", "")
    report = _verify(runtime, [*lines[:at], spaced, *lines[at + 1 :]])
    assert report.problem is not None and (report.problem.seq, report.problem.kind) == (7, "edited")
    report = _verify(runtime, [*lines[:at], "not json", *lines[at + 1 :]])
    assert report.problem is not None and (report.problem.seq, report.problem.kind) == (7, "edited")


async def test_an_ocsf_event_whose_raw_data_was_edited_is_found(runtime: Runtime) -> None:
    lines = await _export(runtime, "ocsf")
    at = _first_event(lines) + 2
    record = json.loads(lines[at])
    record["raw_data"] = record["raw_data"].replace('"outcome":"ok"', '"outcome":"denied"')
    report = _verify(runtime, [*lines[:at], json.dumps(record), *lines[at + 1 :]])
    assert report.problem is not None and (report.problem.seq, report.problem.kind) == (3, "edited")
