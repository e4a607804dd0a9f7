"""Signed checkpoints: cadence, same-transaction discipline, digest objects, signing keys."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scalemule.core import audit, audit_checkpoints, audit_verify
from scalemule.core.audit import AuditEvent
from scalemule.core.audit_checkpoints import Checkpoint, SigningKeys
from scalemule.core.ids import new_id, utcnow
from scalemule.core.storage_sweep import sweep
from scalemule.db.tables import audit_checkpoints as checkpoint_rows
from scalemule.runtime import Runtime

pytestmark = pytest.mark.anyio


def event(chain: str, i: int = 0) -> AuditEvent:
    """A plain event for chain ``chain``."""
    return AuditEvent(
        at=utcnow(), operation="whoami", outcome="ok", transport="cli", duration_ms=0.1, args={"i": i}, tenant_id=chain
    )


async def stored(runtime: Runtime, chain: str) -> list[Checkpoint]:
    async with runtime.db.transaction() as conn:
        rows = await conn.execute(audit_checkpoints.select_checkpoints(chain))
        return [audit_checkpoints.of_row(row) for row in rows]


async def test_a_chain_is_checkpointed_at_its_first_event_and_every_thousand_events(runtime: Runtime) -> None:
    chain = new_id("ten")
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain, i) for i in range(2500)])
    made = await stored(runtime, chain)
    assert [c.seq for c in made] == [1, 1001, 2001]
    keys = runtime.notary.keys.public_keys()
    assert all(c.problem(keys) is None for c in made)
    for checkpoint in made:
        assert await audit_checkpoints.read_digest(runtime.blobs, chain, checkpoint.seq) == checkpoint


async def test_a_checkpoint_is_signed_after_a_minute_of_activity(runtime: Runtime) -> None:
    chain = new_id("ten")
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
        await audit.append(conn, [event(chain)])
        later = AuditEvent(**{**event(chain).__dict__, "at": utcnow() + timedelta(minutes=1, seconds=1)})
        await audit.append(conn, [later])
    assert [c.seq for c in await stored(runtime, chain)] == [1, 3]


async def test_a_rolled_back_append_leaves_no_checkpoint_and_the_next_one_is_signed(runtime: Runtime) -> None:
    chain = new_id("ten")
    with pytest.raises(RuntimeError):
        async with runtime.db.transaction() as conn:
            await audit.append(conn, [event(chain)])
            raise RuntimeError("crash before commit")
    assert await stored(runtime, chain) == []
    assert await audit_checkpoints.digest_seqs(runtime.blobs, chain) == set()
    async with runtime.db.transaction() as conn:
        (sealed,) = await audit.append(conn, [event(chain)])
    (checkpoint,) = await stored(runtime, chain)
    assert (checkpoint.seq, checkpoint.hash) == (1, sealed.hash)
    assert await audit_checkpoints.digest_seqs(runtime.blobs, chain) == {1}


async def test_checkpointing_the_head_covers_every_event_once(runtime: Runtime) -> None:
    chain = new_id("ten")
    async with runtime.db.transaction() as conn:
        sealed = await audit.append(conn, [event(chain, i) for i in range(5)])
        made = await audit.checkpoint_head(conn, runtime.notary, chain)
        again = await audit.checkpoint_head(conn, runtime.notary, chain)
    assert made is not None and (made.seq, made.hash) == (5, sealed[-1].hash) and again is None
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
    assert [c.seq for c in await stored(runtime, chain)] == [1, 5]


async def test_a_rotated_signing_key_keeps_old_checkpoints_verifiable(runtime: Runtime) -> None:
    chain = new_id("ten")
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
    old_id, _ = runtime.notary.keys.current()
    new_id_ = SigningKeys(runtime.settings.data_dir).rotate()
    assert new_id_ != old_id
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
        await audit.checkpoint_head(conn, runtime.notary, chain)
    first, second = await stored(runtime, chain)
    assert (first.key_id, second.key_id) == (old_id, new_id_)
    keys = SigningKeys(runtime.settings.data_dir).public_keys()
    assert first.problem(keys) is None and second.problem(keys) is None
    assert first.problem({new_id_: keys[new_id_]}) == "unknown_key"


def test_the_signing_key_file_is_private_and_its_public_key_is_recorded(tmp_path: Path) -> None:
    path = audit_checkpoints.create_signing_key_file(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    kid, _ = SigningKeys(tmp_path).current()
    listed = audit_checkpoints.parse_public_keys((tmp_path / audit_checkpoints.PUBLIC_KEYS_FILE).read_text())
    assert list(listed) == [kid]


def test_a_signing_key_from_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    audit_checkpoints.create_signing_key_file(tmp_path)
    env = {audit_checkpoints.SIGNING_KEY_ENV: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}
    from_env = SigningKeys(tmp_path, env)
    assert from_env.current()[0] != SigningKeys(tmp_path, {}).current()[0]
    assert from_env.from_environment and os.environ.get(audit_checkpoints.SIGNING_KEY_ENV) is None


async def test_the_storage_sweep_never_deletes_digest_objects(runtime: Runtime) -> None:
    chain = new_id("ten")
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
    report = await sweep(runtime.db, runtime.blobs, grace=timedelta(0), now=utcnow() + timedelta(days=1))
    assert (report.scanned, report.deleted) == (0, 0)  # not even listed as a candidate
    assert await audit_checkpoints.digest_seqs(runtime.blobs, chain) == {1}


async def test_a_checkpoint_row_is_unique_per_chain_and_sequence_number(runtime: Runtime) -> None:
    chain = new_id("ten")
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
    (checkpoint,) = await stored(runtime, chain)
    with pytest.raises(sa.exc.IntegrityError):
        async with runtime.db.transaction() as conn:
            await conn.execute(checkpoint_rows.insert(), checkpoint.__dict__)


class _OutageOnce:
    """A blob store whose next write fails, as if the process died between a commit and its digest."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.failing = inner, True

    async def put(self, ref: str, data: Any) -> Any:
        if self.failing:
            self.failing = False
            raise OSError("store unreachable")
        return await self.inner.put(ref, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_digest_lost_between_commit_and_write_is_reported_then_rewritten_by_the_next_checkpoint(
    runtime: Runtime,
) -> None:
    chain = new_id("ten")
    real = runtime.notary.blobs
    runtime.notary.blobs = _OutageOnce(real)
    try:
        async with runtime.db.transaction() as conn:
            await audit.append(conn, [event(chain)])
    finally:
        runtime.notary.blobs = real
    keys = runtime.notary.keys.public_keys()
    read = audit_verify.reader(runtime.db)
    report = await audit_verify.verify_chain(read, runtime.blobs, keys, chain)
    assert report.problem is not None and (report.problem.seq, report.problem.kind) == (1, "digest_missing")
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
        await audit.checkpoint_head(conn, runtime.notary, chain)
    assert (await audit_verify.verify_chain(read, runtime.blobs, keys, chain)).ok


async def test_an_unusable_signing_key_leaves_events_recorded_unsigned_and_is_logged(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    chain = new_id("ten")
    real = runtime.notary.keys
    runtime.notary.keys = SigningKeys(runtime.settings.data_dir, {audit_checkpoints.SIGNING_KEY_ENV: "not-a-key"})
    try:
        async with runtime.db.transaction() as conn:
            sealed = await audit.append(conn, [event(chain), event(chain)])
    finally:
        runtime.notary.keys = real
    assert [e.seq for e in sealed] == [1, 2] and await stored(runtime, chain) == []
    assert "not being signed" in caplog.text
    async with runtime.db.transaction() as conn:
        await audit.append(conn, [event(chain)])
    assert [c.seq for c in await stored(runtime, chain)] == [3]
