"""`scalemule audit`: verify the store, export with proofs, verify an export offline, keys and rotation."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from scalemule.core import audit_checkpoints
from scalemule.surfaces import cli
from scalemule.surfaces.cli_audit import EXIT_TAMPERED
from scalemule.surfaces.cli_output import EXIT_CODES


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fresh embedded store made by `scalemule init`, with a few calls recorded."""
    for name in list(os.environ):
        if name.startswith("SCALEMULE_"):
            monkeypatch.delenv(name)
    data_dir = tmp_path / "store"
    monkeypatch.setenv("SCALEMULE_DATA_DIR", str(data_dir))
    assert cli.main(["init", "--json", "--tenant", "acme"]) == 0
    return {"data_dir": data_dir}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, out


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out = _run(capsys, *argv)
    return code, json.loads(out)


def test_init_creates_a_private_signing_key_and_public_key_prints_it(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = store["data_dir"] / audit_checkpoints.SIGNING_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    code, printed = _json(capsys, "audit", "public-key")
    assert code == 0 and len(printed["keys"]) == 1 and printed["keys"][0]["current"] is True
    assert audit_checkpoints.parse_public_keys(f"{printed['keys'][0]['key_id']} {printed['keys'][0]['public_key']}")


def test_audit_verify_passes_then_names_an_edited_event(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _json(capsys, "audit", "verify", "--tenant", "acme")
    assert code == 0 and report["ok"] and report["chains"][0]["events"] >= 1
    with sqlite3.connect(store["data_dir"] / "scalemule.db") as db:
        # An edit of what the event says: its body (the other columns follow from it).
        db.execute(
            'UPDATE audit_events SET body = replace(body, \'"operation":"\', \'"operation":"forged-\') WHERE seq = 1'
        )
    code, report = _json(capsys, "audit", "verify", "--all")
    assert code == EXIT_TAMPERED and not report["ok"]
    bad = [c for c in report["chains"] if not c["ok"]]
    assert [(c["problem"]["seq"], c["problem"]["kind"]) for c in bad] == [(1, "edited")]


def test_audit_verify_needs_a_tenant_all_or_a_file(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, body = _json(capsys, "audit", "verify")
    assert code == EXIT_CODES["invalid_argument"] and body["error"]["code"] == "invalid_argument"


def test_an_export_verifies_offline_with_only_the_public_key(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(_run(capsys, "audit", "public-key")[1])
    for fmt in ("jsonl", "ocsf"):
        export = tmp_path / f"export.{fmt}"
        assert _run(capsys, "audit", "export", "--tenant", "acme", "--format", fmt, "--output", str(export))[0] == 0
        lines = export.read_text().splitlines()
        header = json.loads(lines[0])
        assert header["type"] == "header" and header["event_format"] == fmt
        events = [json.loads(line) for line in lines if '"type":"event"' in line or '"class_uid"' in line]
        assert len(events) == header["to_seq"] - header["from_seq"] + 1
        if fmt == "ocsf":
            assert {e["class_uid"] for e in events} == {6003} and events[0]["metadata"]["uid"]
        code, report = _json(capsys, "audit", "verify", "--file", str(export), "--public-key", str(keys))
        assert code == 0 and report["ok"] and report["chains"][0]["unsigned"] == 0, report


def test_a_tampered_or_cut_export_fails_offline_at_the_right_sequence_number(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for _ in range(3):
        _run(capsys, "audit", "export", "--tenant", "acme")  # each export records an event
    keys = tmp_path / "keys.json"
    keys.write_text(_run(capsys, "audit", "public-key")[1])
    export = tmp_path / "export.jsonl"
    assert _run(capsys, "audit", "export", "--tenant", "acme", "--output", str(export))[0] == 0
    lines = export.read_text().splitlines()
    first_event = next(i for i, line in enumerate(lines) if '"type":"event"' in line)
    record = json.loads(lines[first_event + 1])
    cases = {
        "edited": [
            *lines[: first_event + 1],
            json.dumps({**record, "body": {**record["body"], "outcome": "denied"}}),
            *lines[first_event + 2 :],
        ],
        "truncated": lines[:-1],
        "missing": [*lines[: first_event + 1], *lines[first_event + 2 :]],
    }
    for kind, tampered in cases.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text("\n".join(tampered) + "\n")
        code, report = _json(capsys, "audit", "verify", "--file", str(path), "--public-key", str(keys))
        problem = report["chains"][0]["problem"]
        expected = record["seq"] if kind != "truncated" else json.loads(lines[-1])["seq"]
        assert code == EXIT_TAMPERED and (problem["seq"], problem["kind"]) == (expected, kind), (kind, problem)


def test_a_rotated_key_signs_new_checkpoints_while_old_ones_keep_verifying(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _json(capsys, "audit", "public-key")[1]["keys"]
    code, rotated = _json(capsys, "audit", "rotate-signing-key")
    assert code == 0 and rotated["previous_key_id"] == before[0]["key_id"] != rotated["key_id"]
    _run(capsys, "audit", "export", "--tenant", "acme")  # checkpoints the head with the new key
    after = {k["key_id"]: k["current"] for k in _json(capsys, "audit", "public-key")[1]["keys"]}
    assert after == {before[0]["key_id"]: False, rotated["key_id"]: True}
    code, report = _json(capsys, "audit", "verify", "--all")
    assert code == 0 and report["ok"]


def test_repair_digests_rewrites_a_missing_digest_object_of_a_valid_checkpoint(
    store: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    digests = sorted((store["data_dir"] / "blobs" / audit_checkpoints.DIGEST_PREFIX).rglob("0*"))
    assert digests
    digests[0].unlink()
    code, report = _json(capsys, "audit", "verify", "--all")
    problems = {c["problem"]["kind"] for c in report["chains"] if c["problem"]}
    assert code == EXIT_TAMPERED and problems == {"digest_missing"}
    code, report = _json(capsys, "audit", "verify", "--all", "--repair-digests")
    assert code == 0 and report["ok"] and report["repaired_digests"] == 1
    assert digests[0].exists()
