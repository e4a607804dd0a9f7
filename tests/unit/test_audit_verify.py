"""The chain verifier on chains made in memory: every kind of problem, named at its first bad sequence number.

``ChainVerifier`` is pure (events in, a report out), so each tampering takes a few events here;
tests/integration/test_audit_tamper.py draws them at random over a stored 10,000-event log.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from scalemule.core.audit import GENESIS_HASH, AuditEvent
from scalemule.core.audit_checkpoints import Checkpoint, key_id
from scalemule.core.audit_verify import REORDER_WINDOW, ChainVerifier, Evidence, Report

CHAIN = "ten_acme"
AT = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
SIGNER = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


KEYS = {key_id(_public(SIGNER)): _public(SIGNER)}


def _sealed(event: AuditEvent, **changes: object) -> AuditEvent:
    """``event`` with ``changes``, its hash recomputed (what someone who rewrites the chain does)."""
    changed = replace(event, **changes)  # type: ignore[arg-type]
    return replace(changed, hash=changed.digest())


def _chain(n: int) -> list[AuditEvent]:
    """``n`` events appended to CHAIN from genesis, each linked to the one before."""
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        event = AuditEvent(
            at=AT,
            operation="whoami",
            outcome="ok",
            transport="cli",
            duration_ms=1.0,
            args={"n": seq},
            tenant_id=CHAIN,
            id=f"evt_{seq}",
            seq=seq,
            prev_hash=prev,
        )
        events.append(_sealed(event))
        prev = events[-1].hash
    return events


def _signed(event: AuditEvent, *, key: Ed25519PrivateKey = SIGNER, **changes: object) -> Checkpoint:
    """A checkpoint of ``event`` (or of what ``changes`` say instead), signed by ``key``."""
    unsigned = replace(Checkpoint(CHAIN, event.seq, event.hash, AT, key_id(_public(key))), **changes)  # type: ignore[arg-type]
    return replace(unsigned, signature=base64.b64encode(key.sign(unsigned.payload())).decode())


def _verify(
    events: Iterable[AuditEvent],
    checkpoints: Mapping[int, Evidence] | None = None,
    *,
    from_seq: int = 1,
    head: tuple[int, str] | None = None,
    require_signed: bool = False,
) -> Report:
    verifier = ChainVerifier(CHAIN, checkpoints or {}, KEYS, from_seq)
    for event in events:
        if not verifier.feed(event):
            break
    return verifier.finish(head, require_signed=require_signed)


def _found(report: Report) -> tuple[int, str] | None:
    if report.problem is None:
        return None
    assert report.problem.detail, "every problem is also told in words"
    return report.problem.seq, report.problem.kind


def _detail(report: Report) -> str:
    assert report.problem is not None
    return report.problem.detail


def _numbers(report: Report) -> list[int]:
    """The numbers the problem's words name (sequence numbers; event ids such as evt_3 are not numbers)."""
    return [int(n) for n in re.findall(r"\b\d+\b", _detail(report))]


def test_an_untouched_chain_passes_and_counts_its_events_checkpoints_and_unsigned_tail() -> None:
    events = _chain(5)
    checkpoints = {1: Evidence(_signed(events[0])), 3: Evidence(_signed(events[2]))}
    report = _verify(events, checkpoints, head=(5, events[-1].hash))
    assert report.ok and report.problem is None
    assert (report.from_seq, report.to_seq, report.events) == (1, 5, 5)
    assert (report.checkpoints, report.last_checkpoint, report.unsigned) == (2, 3, 2)
    assert report.to_dict() == {
        "chain": CHAIN,
        "from_seq": 1,
        "to_seq": 5,
        "events": 5,
        "checkpoints": 2,
        "last_checkpoint": 3,
        "unsigned": 2,
        "ok": True,
        "problem": None,
    }


def test_a_report_with_a_problem_says_where_what_and_in_words() -> None:
    events = _chain(3)
    report = _verify([events[0], _sealed(events[1], prev_hash="1" * 64), events[2]])
    body = report.to_dict()
    assert body["ok"] is False and body["events"] == 1
    assert body["problem"]["seq"] == 2 and body["problem"]["kind"] == "edited"
    assert "seq 2" in body["problem"]["detail"]


def test_an_empty_chain_from_genesis_passes_with_nothing_to_count() -> None:
    report = _verify([], head=(0, GENESIS_HASH))
    assert report.ok and (report.to_seq, report.events, report.unsigned) == (0, 0, 0)


def test_a_range_after_genesis_trusts_its_first_link_and_counts_from_its_start() -> None:
    events = _chain(5)
    report = _verify(events[2:], from_seq=3)
    assert report.ok and (report.from_seq, report.to_seq, report.events, report.unsigned) == (3, 5, 3, 3)
    assert _verify(events[2:3], from_seq=3, head=(3, events[2].hash)).ok


def test_an_empty_range_after_genesis_ending_at_the_head_passes() -> None:
    events = _chain(3)
    report = _verify([], from_seq=4, head=(3, events[-1].hash))
    assert report.ok and (report.to_seq, report.events, report.unsigned) == (3, 0, 0)


def test_the_first_event_must_link_to_genesis() -> None:
    events = _chain(2)
    assert _found(_verify([_sealed(events[0], prev_hash="1" * 64), events[1]])) == (1, "edited")


def test_an_edited_event_is_named_edited_once_the_rest_is_read() -> None:
    events = _chain(5)
    events[2] = replace(events[2], args={"n": -1})
    report = _verify(events)
    assert _found(report) == (3, "edited") and report.events == 2
    assert "evt_3" in _detail(report) and _numbers(report) == [3]


def test_an_edited_event_is_named_once_the_reorder_window_has_passed_and_later_events_are_ignored() -> None:
    events = _chain(3 + REORDER_WINDOW + 1)
    events[2] = replace(events[2], args={"n": -1})
    verifier = ChainVerifier(CHAIN, {}, KEYS)
    fed = [verifier.feed(event) for event in events]
    # The event of seq 3 is looked for among the REORDER_WINDOW events after it, no further.
    assert all(fed[: 2 + REORDER_WINDOW]) and fed[2 + REORDER_WINDOW :] == [False, False]
    assert verifier.failed and _found(verifier.report) == (3, "edited")
    assert _found(verifier.finish()) == (3, "edited") and verifier.report.events == 2


def test_a_relinked_event_whose_prev_hash_is_not_the_previous_hash_is_edited() -> None:
    events = _chain(4)
    events[2] = _sealed(events[2], prev_hash="1" * 64)
    report = _verify(events)
    assert _found(report) == (3, "edited") and _numbers(report) == [3, 2]


def test_an_event_slipped_in_and_the_rest_renumbered_is_inserted() -> None:
    events = _chain(5)
    forged = _sealed(events[2], id="evt_forged", operation="forged")
    moved = [replace(e, seq=e.seq + 1) for e in events[2:]]
    report = _verify([*events[:2], forged, *moved])
    assert _found(report) == (3, "inserted") and report.events == 3
    assert _numbers(report) == [4, 3]  # the event at seq 4 was appended as seq 3


@pytest.mark.parametrize("gap", [2, 3])
def test_events_slipped_in_further_back_are_inserted_where_the_renumbered_event_was_appended(gap: int) -> None:
    events = _chain(6)
    moved = replace(events[3], seq=4 + gap)
    # The checker sees seq 4+gap holding what was appended as seq 4: `gap` events were slipped in.
    verifier = ChainVerifier(CHAIN, {}, KEYS, from_seq=4 + gap)
    assert verifier.feed(moved) is False
    assert _found(verifier.report) == (4, "inserted")


def test_an_event_slipped_in_and_the_next_one_relinked_is_inserted() -> None:
    events = _chain(5)
    forged = _sealed(events[2], id="evt_forged", operation="forged")
    relinked = _sealed(events[2], seq=4)  # still links to seq 2, past the forged event
    report = _verify([*events[:2], forged, relinked])
    assert _found(report) == (3, "inserted") and _numbers(report) == [4, 3]


def test_a_copy_of_the_event_just_verified_is_inserted_and_an_older_one_is_reordered() -> None:
    events = _chain(4)
    assert _found(_verify([*events[:3], events[1]])) == (2, "inserted")
    assert _found(_verify([*events[:3], events[2]])) == (3, "inserted")
    report = _verify([*events[:3], events[0]])
    assert _found(report) == (1, "reordered") and _numbers(report) == [1, 3]


def test_a_deleted_event_is_missing() -> None:
    events = _chain(5)
    report = _verify([*events[:2], *events[3:]])
    assert _found(report) == (3, "missing") and report.events == 2
    assert "seq 3" in _detail(report)


def test_a_deleted_event_is_missing_once_the_reorder_window_has_passed() -> None:
    events = _chain(3 + REORDER_WINDOW + 2)
    verifier = ChainVerifier(CHAIN, {}, KEYS)
    fed = [verifier.feed(event) for event in [*events[:2], *events[3:]]]
    # Seq 4 opens the window; seq 3 is looked for among the REORDER_WINDOW events after it.
    assert all(fed[: 2 + REORDER_WINDOW]) and fed[2 + REORDER_WINDOW :] == [False, False]
    assert _found(verifier.report) == (3, "missing")


@pytest.mark.parametrize("gap", [1, 2, 3])
def test_deleted_events_with_the_rest_renumbered_are_missing(gap: int) -> None:
    events = _chain(8)
    renumbered = [replace(e, seq=e.seq - gap) for e in events[2 + gap :]]
    report = _verify([*events[:2], *renumbered])
    assert _found(report) == (3, "missing") and report.events == 2
    assert _numbers(report) == [3, 3 + gap]  # the event now at seq 3 was appended as seq 3 + gap


def test_lines_out_of_sequence_order_are_reordered() -> None:
    events = _chain(5)
    report = _verify([events[0], events[2], events[3], events[1], events[4]])
    assert _found(report) == (2, "reordered") and report.events == 1


@pytest.mark.parametrize("distance", [1, 2, 5])
def test_two_events_swapped_with_their_sequence_numbers_are_reordered(distance: int) -> None:
    events = _chain(8)
    first, second = events[1], events[1 + distance]
    swapped = list(events)
    swapped[1], swapped[1 + distance] = replace(second, seq=first.seq), replace(first, seq=second.seq)
    assert _found(_verify(swapped)) == (2, "reordered")


def test_a_second_line_for_the_edited_sequence_number_does_not_make_it_a_reordering() -> None:
    events = _chain(5)
    # The edited line and then the original one, both at seq 3: nothing moved, one line is forged.
    edited = replace(events[2], args={"n": -1})
    assert _found(_verify([*events[:2], edited, *events[2:]])) == (3, "edited")


def test_a_checkpoint_that_does_not_verify_is_named_with_its_reason() -> None:
    events = _chain(3)
    forged = replace(_signed(events[1]), hash=events[2].hash)
    report = _verify(events, {2: Evidence(forged)})
    assert _found(report) == (2, "bad_signature") and "digest object" not in _detail(report)
    stranger = _signed(events[1], key=STRANGER)
    assert _found(_verify(events, {2: Evidence(stranger)})) == (2, "unknown_key")


def test_a_digest_object_that_does_not_verify_is_named_with_its_reason() -> None:
    events = _chain(3)
    row, stranger = _signed(events[1]), _signed(events[1], key=STRANGER)
    report = _verify(events, {2: Evidence(row, stranger, digest_checked=True)})
    assert _found(report) == (2, "unknown_key") and "digest object" in _detail(report)


def test_a_checkpoint_without_its_digest_object_is_digest_missing_only_where_digests_were_read() -> None:
    events = _chain(3)
    row = _signed(events[1])
    assert _found(_verify(events, {2: Evidence(row, None, digest_checked=True)})) == (2, "digest_missing")
    assert _verify(events, {2: Evidence(row)}).ok


def test_a_digest_object_without_its_checkpoint_row_is_checkpoint_missing() -> None:
    events = _chain(3)
    assert _found(_verify(events, {2: Evidence(None, _signed(events[1]), digest_checked=True)})) == (
        2,
        "checkpoint_missing",
    )


def test_a_digest_object_that_differs_from_its_checkpoint_is_digest_mismatch() -> None:
    events = _chain(3)
    row, other = _signed(events[1]), _signed(events[1], at=AT.replace(year=2027))
    report = _verify(events, {2: Evidence(row, other, digest_checked=True)})
    assert _found(report) == (2, "digest_mismatch")
    assert _verify(events, {2: Evidence(row, row, digest_checked=True)}).ok


@pytest.mark.parametrize("signed", [{"hash": "e" * 64}, {"chain": "ten_other"}, {"seq": 1}])
def test_a_checkpoint_naming_another_head_than_the_event_is_rewritten(signed: dict[str, object]) -> None:
    events = _chain(4)
    checkpoints = {1: Evidence(_signed(events[0])), 3: Evidence(_signed(events[2], **signed))}
    report = _verify(events, checkpoints)
    assert _found(report) == (3, "rewritten") and (report.checkpoints, report.last_checkpoint) == (1, 1)
    assert "seq 1 and 3" in _detail(report)


def test_a_rewritten_chain_before_any_good_checkpoint_is_named_from_genesis() -> None:
    events = _chain(2)
    report = _verify(events, {2: Evidence(_signed(events[1], hash="e" * 64))})
    assert _found(report) == (2, "rewritten") and "seq 0 and 2" in _detail(report)


def test_a_chain_ending_before_a_signed_checkpoint_is_truncated() -> None:
    events = _chain(6)
    report = _verify(events[:3], {5: Evidence(_signed(events[4])), 6: Evidence(_signed(events[5]))})
    assert _found(report) == (4, "truncated") and "seq 5" in _detail(report)


def test_a_chain_ending_before_its_head_is_truncated_and_events_past_the_head_are_inserted() -> None:
    events = _chain(5)
    report = _verify(events[:3], head=(5, events[4].hash))
    assert _found(report) == (4, "truncated") and _numbers(report) == [3, 5]
    report = _verify(events, head=(3, events[2].hash))
    assert _found(report) == (4, "inserted") and _numbers(report) == [3]
    assert _verify(events, head=(5, events[4].hash)).ok


def test_a_head_row_naming_another_hash_is_rewritten() -> None:
    events = _chain(3)
    assert _found(_verify(events, head=(3, "e" * 64))) == (3, "rewritten")


def test_a_problem_found_in_the_events_is_not_replaced_by_one_found_at_the_end() -> None:
    events = _chain(5)
    report = _verify([*events[:2], *events[3:]], {5: Evidence(_signed(events[4]))}, head=(9, "e" * 64))
    assert _found(report) == (3, "missing")
    report = _verify([events[0], events[2], events[1]], head=(9, "e" * 64), require_signed=True)
    assert _found(report) == (2, "reordered")


def test_events_no_checkpoint_covers_are_unsigned_and_fail_only_where_signing_is_required() -> None:
    events = _chain(4)
    checkpoints = {2: Evidence(_signed(events[1]))}
    report = _verify(events, checkpoints, require_signed=True)
    assert _found(report) == (4, "unsigned") and report.unsigned == 2
    assert "seq 2" in _detail(report)
    assert _verify(events, checkpoints).ok
    assert _verify(events, {4: Evidence(_signed(events[3]))}, require_signed=True).ok
    range_report = _verify(events[2:], from_seq=3, require_signed=True)
    assert _found(range_report) == (4, "unsigned") and range_report.unsigned == 2
    assert "seq 0" in _detail(range_report)


def test_a_verifier_that_found_a_problem_ignores_further_events() -> None:
    events = _chain(4)
    verifier = ChainVerifier(CHAIN, {}, KEYS)
    assert verifier.feed(events[0]) and not verifier.failed
    assert verifier.feed(_sealed(events[1], prev_hash="1" * 64)) is False and verifier.failed
    assert verifier.feed(events[2]) is False and verifier.report.events == 1
