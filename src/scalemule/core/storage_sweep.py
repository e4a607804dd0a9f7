"""The sweep: remove blobs no metadata row references, and what killed writers left behind.

Writes never reuse a blob, and a row is the only way to reach one, so every other blob is garbage:
the bytes of overwritten and deleted objects, and blobs whose transaction rolled back or whose writer
died before commit. A grace period protects writes in flight (their blob exists before their row
commits). Blobs of tenants this database does not know are left alone: they may belong to another
deployment sharing the bucket, and deleting on a misconfiguration would be unrecoverable. The audit
log's digest objects (under ``_audit/``) are not objects at all and are never listed for deletion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

import sqlalchemy as sa

from scalemule.blobs import BlobEntry, BlobStore
from scalemule.core import signed_urls, unit_of_work
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
        spent_urls: records of used PUT URLs dropped because the URLs expired.
    """

    scanned: int = 0
    referenced: int = 0
    young: int = 0
    foreign: int = 0
    deleted: int = 0
    aborted: int = 0
    spent_urls: int = 0


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
    progress: Callable[[int], None] | None = None,
) -> SweepReport:
    """Delete garbage blobs older than ``grace``, abort interrupted writes and forget used PUT URLs
    that expired; record one audit event (an operator command's unit of work).

    Safe to run while servers write, and from several processes at once. ``progress`` is told how
    many blobs each settled batch held (an operator's progress bar).

    Raises:
        ScaleMuleError: the sweep failed (recorded; ``Internal`` for an unexpected fault).
    """
    work, trace = unit_of_work.operator(db, "storage_sweep", permission="storage:write")
    async with work.recorded():
        report = await _sweep(db, blobs, grace=grace, now=now, dry_run=dry_run, progress=progress)
        trace.args = {"grace_seconds": int(grace.total_seconds()), "dry_run": dry_run, **asdict(report)}
        async with work.transaction() as conn:
            if not dry_run:
                # A used PUT URL that has expired is refused as expired: its row is no longer needed.
                dropped = await signed_urls.drop_spent(conn, before=now or utcnow())
                report = replace(report, spent_urls=dropped)
                trace.args["spent_urls"] = dropped
    return report


async def _sweep(
    db: Database,
    blobs: BlobStore,
    *,
    grace: timedelta,
    now: datetime | None,
    dry_run: bool,
    progress: Callable[[int], None] | None,
) -> SweepReport:
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
        if progress is not None:
            progress(len(batch))

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
    return SweepReport(**counts)
