"""The sweep: remove blobs no metadata row references, and what killed writers left behind.

Writes never reuse a blob, and a row is the only way to reach one, so every other blob is garbage:
the bytes of overwritten and deleted objects, and blobs whose transaction rolled back or whose writer
died before commit. A grace period protects writes in flight (their blob exists before their row
commits). Blobs of tenants this database does not know are left alone: they may belong to another
deployment sharing the bucket, and deleting on a misconfiguration would be unrecoverable. The audit
log's digest objects (under ``_audit/``) are not objects at all and are never listed for deletion.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from scalemule.blobs import BlobEntry, BlobStore
from scalemule.core import audit
from scalemule.core.audit_checkpoints import DIGEST_PREFIX
from scalemule.core.ids import utcnow
from scalemule.db.engine import Database
from scalemule.db.tables import storage_objects, tenants

DEFAULT_GRACE = timedelta(hours=1)
BATCH = 500
RESERVED = DIGEST_PREFIX + "/"


@dataclass(frozen=True)
class SweepReport:
    """What a sweep found and did.

    Attributes:
        scanned: blobs listed.
        referenced: blobs a metadata row references (live objects).
        young: unreferenced blobs within the grace period (possibly a write in flight), kept.
        foreign: blobs of tenants this database does not know, kept.
        deleted: unreferenced blobs removed (or, in a dry run, that would be).
        aborted: leftovers of interrupted writes removed (temporary files, multipart uploads).
    """

    scanned: int = 0
    referenced: int = 0
    young: int = 0
    foreign: int = 0
    deleted: int = 0
    aborted: int = 0


async def _classify(db: Database, batch: Sequence[BlobEntry], cutoff: datetime) -> dict[str, list[BlobEntry]]:
    """Each blob as referenced, young, foreign (tenant unknown here) or garbage."""
    refs = [entry.ref for entry in batch]
    owners = sorted({ref.split("/", 1)[0] for ref in refs})
    async with db.transaction() as conn:
        used = sa.select(storage_objects.c.blob_ref).where(storage_objects.c.blob_ref.in_(refs))
        referenced = {row.blob_ref for row in await conn.execute(used)}
        known = {row.id for row in await conn.execute(sa.select(tenants.c.id).where(tenants.c.id.in_(owners)))}
    kinds: dict[str, list[BlobEntry]] = {"referenced": [], "young": [], "foreign": [], "deleted": []}
    for entry in batch:
        if entry.ref in referenced:
            kinds["referenced"].append(entry)
        elif entry.modified >= cutoff:
            kinds["young"].append(entry)
        elif entry.ref.split("/", 1)[0] not in known:
            kinds["foreign"].append(entry)
        else:
            kinds["deleted"].append(entry)
    return kinds


async def sweep(
    db: Database,
    blobs: BlobStore,
    *,
    grace: timedelta = DEFAULT_GRACE,
    now: datetime | None = None,
    dry_run: bool = False,
) -> SweepReport:
    """Delete garbage blobs older than ``grace`` and abort interrupted writes; record one audit event.

    Safe to run while servers write, and from several processes at once.
    """
    started = time.perf_counter()
    cutoff = (now or utcnow()) - grace
    counts = {"scanned": 0, "referenced": 0, "young": 0, "foreign": 0, "deleted": 0, "aborted": 0}
    if not dry_run:
        counts["aborted"] = await blobs.abort_stale(cutoff)

    async def settle(batch: list[BlobEntry]) -> None:
        kinds = await _classify(db, batch, cutoff)
        for kind, entries in kinds.items():
            counts[kind] += len(entries)
        if not dry_run:
            for entry in kinds["deleted"]:
                await blobs.delete(entry.ref)

    batch: list[BlobEntry] = []
    async for entry in blobs.entries():
        if entry.ref.startswith(RESERVED):
            continue  # the audit's digest objects: never an object's bytes, never garbage
        counts["scanned"] += 1
        batch.append(entry)
        if len(batch) >= BATCH:
            await settle(batch)
            batch = []
    if batch:
        await settle(batch)
    report = SweepReport(**counts)
    args = {"grace_seconds": int(grace.total_seconds()), "dry_run": dry_run, **asdict(report)}
    event = audit.operator_event("storage_sweep", args, started=started, permission="storage:write")
    async with db.transaction() as conn:
        await audit.append(conn, [event])
    return report
