"""Object storage: per-tenant keys, metadata rows as the index, bytes in the blob store, quotas.

A write streams the bytes to a fresh blob (hashed on the way), then, in the caller's transaction,
takes the tenant's usage row as a lock, checks the write's conditions and the quota, and inserts or
compare-and-swaps the metadata row. A blob is therefore visible only through a committed row: a write
that fails or is killed leaves at most an unreferenced blob, which ``sweep`` removes. Every read
verifies the SHA-256 of each chunk it returns; a mismatch is an error, never data.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from scalemule.blobs import BlobInfo, BlobNotFound, BlobStore
from scalemule.blobs.base import CHUNK_SIZE, DIGEST_SIZE, INLINE_BYTES, cpu_parallelism
from scalemule.core.errors import (
    AlreadyExists,
    Conflict,
    Internal,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    ScaleMuleError,
)
from scalemule.core.ids import utcnow
from scalemule.core.object_rules import (
    FORBIDDEN_CATEGORIES,
    check_content_type,
    check_key,
    check_metadata,
    check_prefix,
    shown,
)
from scalemule.db.dialects import insert_for
from scalemule.db.engine import Connection
from scalemule.db.errors import constraint_errors
from scalemule.db.tables import storage_objects, storage_usage

log = logging.getLogger("scalemule")

MAX_OBJECT_BYTES = 5 << 30
_QUOTA_HINT = "Delete objects you no longer need, or ask the operator to raise SCALEMULE_STORAGE_QUOTA_BYTES."


@dataclass(frozen=True)
class StoredObject:
    """An object's metadata row: where its bytes are and what they must hash to."""

    tenant_id: str
    key: str
    size: int
    content_type: str
    sha256: str
    etag: str
    metadata: dict[str, str]
    blob_ref: str
    chunk_digests: bytes | None
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    updated_by: str | None

    def digest_of_chunk(self, index: int) -> bytes:
        """The SHA-256 the ``index``-th ``CHUNK_SIZE`` chunk must have."""
        if self.chunk_digests is None:
            return bytes.fromhex(self.sha256)
        return self.chunk_digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]


@dataclass(frozen=True)
class ObjectSummary:
    """An object as listed."""

    key: str
    size: int
    content_type: str
    etag: str
    updated_at: datetime


@dataclass(frozen=True)
class Listing:
    """One page of a listing: objects, common prefixes (with a delimiter) and where to go on."""

    items: list[ObjectSummary]
    prefixes: list[str]
    next_position: dict[str, str] | None


@dataclass(frozen=True)
class Usage:
    """What a tenant stores and may store."""

    bytes: int
    objects: int
    quota: int = 0


# --- rows ------------------------------------------------------------------------------------


def _object_of(row: Any) -> StoredObject:
    return StoredObject(
        tenant_id=row.tenant_id,
        key=row.key,
        size=int(row.size),
        content_type=row.content_type,
        sha256=row.sha256,
        etag=row.etag,
        metadata=dict(row.user_metadata),
        blob_ref=row.blob_ref,
        chunk_digests=None if row.chunk_digests is None else bytes(row.chunk_digests),
        created_at=row.created_at,
        created_by=row.created_by,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


# Built once: constructing a statement costs more than running it on SQLite (docs/scaling.md). Where
# parameters sit beside an UPDATE's SET columns, their names stay apart from the column names.
_objects = storage_objects.c
_of_object = (_objects.tenant_id == sa.bindparam("o_tenant"), _objects.key == sa.bindparam("o_key"))
_find_query = sa.select(storage_objects).where(*_of_object)
_insert_object = storage_objects.insert()
# Replaces or deletes only the version read: a writer that skipped the usage lock cannot be overwritten.
_swap_object = storage_objects.update().where(*_of_object, _objects.etag == sa.bindparam("o_etag"))
_delete_object = storage_objects.delete().where(*_of_object, _objects.etag == sa.bindparam("o_etag"))
_usage_query = sa.select(storage_usage.c.bytes, storage_usage.c.objects).where(
    storage_usage.c.tenant_id == sa.bindparam("tenant_id")
)
_lock_usage_query = _usage_query.with_for_update()
_add_usage_statement = (
    storage_usage.update()
    .where(storage_usage.c.tenant_id == sa.bindparam("u_tenant"))
    .values(
        bytes=storage_usage.c.bytes + sa.bindparam("u_bytes", type_=sa.BigInteger()),
        objects=storage_usage.c.objects + sa.bindparam("u_objects", type_=sa.BigInteger()),
    )
)


async def find(conn: Connection, *, tenant_id: str, key: str) -> StoredObject | None:
    """The object ``key`` of the tenant, or None."""
    row = (await conn.execute(_find_query, {"o_tenant": tenant_id, "o_key": key})).first()
    return None if row is None else _object_of(row)


async def head(conn: Connection, *, tenant_id: str, key: str) -> StoredObject:
    """The object ``key`` of the tenant.

    Raises:
        InvalidArgument: a malformed key.
        NotFound: no such object in this tenant.
    """
    found = await find(conn, tenant_id=tenant_id, key=check_key(key))
    if found is None:
        raise NotFound(f"no object '{shown(key)}' in this tenant", hint="Use storage_list_objects to see keys.")
    return found


async def usage(conn: Connection, *, tenant_id: str, quota: int) -> Usage:
    """Bytes and objects the tenant stores, with its quota."""
    row = (await conn.execute(_usage_query, {"tenant_id": tenant_id})).first()
    return Usage(0, 0, quota) if row is None else Usage(int(row.bytes), int(row.objects), quota)


async def _lock_usage(conn: Connection, tenant_id: str) -> Usage:
    # The row lock orders the tenant's writers from here to commit (SQLite has one writer anyway).
    params = {"tenant_id": tenant_id}
    row = (await conn.execute(_lock_usage_query, params)).first()
    if row is None:
        insert = insert_for(conn.dialect.name)(storage_usage)
        await conn.execute(
            insert.on_conflict_do_nothing(index_elements=["tenant_id"]),
            {"tenant_id": tenant_id, "bytes": 0, "objects": 0},
        )
        row = (await conn.execute(_lock_usage_query, params)).one()
    return Usage(int(row.bytes), int(row.objects))


async def _add_usage(conn: Connection, tenant_id: str, *, size: int, objects: int) -> None:
    await conn.execute(_add_usage_statement, {"u_tenant": tenant_id, "u_bytes": size, "u_objects": objects})


# --- writes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteRequest:
    """What a write asks for, besides its bytes.

    Attributes:
        if_none_match: create only; refused with already_exists when the key exists.
        if_match: replace only the version with this etag; refused with conflict otherwise.
        writer: the principal id recorded as the writer.
    """

    tenant_id: str
    key: str
    content_type: str
    metadata: dict[str, str]
    if_none_match: bool = False
    if_match: str | None = None
    writer: str | None = None


def _check_conditions(request: WriteRequest, current: StoredObject | None) -> None:
    key = shown(request.key)
    if request.if_none_match and current is not None:
        raise AlreadyExists(
            f"object '{key}' already exists (etag {current.etag})",
            hint="if_none_match creates only: pass if_match=<etag> to replace it, or choose another key.",
        )
    if request.if_match is not None:
        if current is None:
            raise NotFound(
                f"no object '{key}' to replace (if_match was given)",
                hint="Drop if_match to create it, or pass if_none_match=true to create only.",
            )
        if current.etag != request.if_match:
            raise Conflict(
                f"object '{key}' has changed: its current etag is {current.etag}, not {request.if_match}",
                hint="Read it again with storage_head_object and retry with the current etag.",
            )


def _quota_error(used: int, adding: int, quota: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"writing {adding:,} more bytes would take the tenant's storage to {used + adding:,} bytes,"
        f" over its quota of {quota:,}",
        hint=_QUOTA_HINT,
    )


@dataclass(frozen=True)
class Room:
    """How much a write may bring: the tenant's room (its quota less what it stores, plus the size of
    the object being replaced), capped at ``MAX_OBJECT_BYTES``."""

    limit: int
    used: int
    replacing: int

    def refuse(self, size: int, quota: int) -> None:
        """Refuse ``size`` bytes when they do not fit.

        Raises:
            QuotaExceeded: they would take the tenant past its quota.
            InvalidArgument: they are over ``MAX_OBJECT_BYTES``.
        """
        if size > MAX_OBJECT_BYTES:
            raise InvalidArgument(
                f"objects are at most {MAX_OBJECT_BYTES:,} bytes", hint="Split the data into several objects."
            )
        if size > self.limit:
            raise _quota_error(self.used, size - self.replacing, quota)


async def allowance(conn: Connection, request: WriteRequest, *, quota: int) -> Room:
    """Check the write's conditions now and return its room (see ``Room``).

    A fast refusal before any byte is stored; ``commit`` checks again under the tenant's lock.

    Raises:
        AlreadyExists, NotFound, Conflict: a condition already fails.
        QuotaExceeded: the tenant has no room left.
    """
    current = await find(conn, tenant_id=request.tenant_id, key=request.key)
    _check_conditions(request, current)
    used = (await usage(conn, tenant_id=request.tenant_id, quota=quota)).bytes
    replacing = current.size if current is not None else 0
    return Room(limit=min(quota - used + replacing, MAX_OBJECT_BYTES), used=used, replacing=replacing)


def new_ref(tenant_id: str) -> str:
    """A fresh blob ref in the tenant's namespace (never reused, so blobs are never overwritten)."""
    token = secrets.token_hex(16)
    return f"{tenant_id}/{token[:2]}/{token}"


async def write_blob(blobs: BlobStore, tenant_id: str, data: AsyncIterable[bytes], *, limit: int) -> BlobInfo:
    """Stream ``data`` to a fresh blob, refusing it once it passes ``limit`` bytes.

    Raises:
        QuotaExceeded: more than ``limit`` bytes (the tenant's room) arrived.
        InvalidArgument: more than ``MAX_OBJECT_BYTES`` arrived.
    """

    async def bounded() -> AsyncIterator[bytes]:
        seen = 0
        async for part in data:
            seen += len(part)
            if seen > limit:
                if limit >= MAX_OBJECT_BYTES:
                    raise InvalidArgument(
                        f"objects are at most {MAX_OBJECT_BYTES:,} bytes", hint="Split the data into several objects."
                    )
                raise QuotaExceeded(
                    f"the upload passed the {limit:,} bytes left in the tenant's storage quota",
                    hint=_QUOTA_HINT,
                )
            yield part

    return await blobs.put(new_ref(tenant_id), bounded())


async def commit(
    conn: Connection, blobs: BlobStore, request: WriteRequest, blob: BlobInfo, *, quota: int
) -> StoredObject:
    """Make ``blob`` the tenant's object ``request.key`` in the caller's transaction.

    On a refusal the blob is deleted at once; if the transaction fails later, the sweep removes it.

    Raises:
        AlreadyExists: if_none_match and the key exists.
        NotFound: if_match and the key does not exist.
        Conflict: if_match names a version that is no longer current.
        QuotaExceeded: the tenant's storage would pass its quota.
    """
    try:
        return await _commit(conn, request, blob, quota=quota)
    except ScaleMuleError:
        with anyio.CancelScope(shield=True):
            await blobs.delete(blob.ref)
        raise


async def _commit(conn: Connection, request: WriteRequest, blob: BlobInfo, *, quota: int) -> StoredObject:
    used = await _lock_usage(conn, request.tenant_id)
    current = await find(conn, tenant_id=request.tenant_id, key=request.key)
    _check_conditions(request, current)
    growth = blob.size - (current.size if current is not None else 0)
    if growth > 0 and used.bytes + growth > quota:
        raise _quota_error(used.bytes, growth, quota)
    now = utcnow()
    values: dict[str, Any] = {
        "size": blob.size,
        "content_type": request.content_type,
        "sha256": blob.sha256,
        "chunk_digests": blob.chunk_digests if blob.size > CHUNK_SIZE else None,
        "etag": secrets.token_hex(16),
        "user_metadata": request.metadata,
        "blob_ref": blob.ref,
        "updated_at": now,
        "updated_by": request.writer,
    }
    if current is None:
        values |= {"created_at": now, "created_by": request.writer}
        exists = AlreadyExists(f"object '{shown(request.key)}' was created concurrently", hint="Read it and retry.")
        async with constraint_errors({"pk_storage_objects": lambda: exists}):
            await conn.execute(_insert_object, {"tenant_id": request.tenant_id, "key": request.key, **values})
    else:
        where = {"o_tenant": request.tenant_id, "o_key": request.key, "o_etag": current.etag}
        swapped = await conn.execute(_swap_object, {**where, **values})
        if swapped.rowcount != 1:
            raise Conflict(f"object '{shown(request.key)}' changed during the write", hint="Read it and retry.")
        values |= {"created_at": current.created_at, "created_by": current.created_by}
    await _add_usage(conn, request.tenant_id, size=growth, objects=0 if current is not None else 1)
    values["metadata"] = values.pop("user_metadata")
    return StoredObject(tenant_id=request.tenant_id, key=request.key, **values)


async def put(conn: Connection, blobs: BlobStore, request: WriteRequest, data: bytes, *, quota: int) -> StoredObject:
    """Store ``data`` as the object ``request.key``: checks, blob write, then metadata (see ``commit``).

    Raises:
        InvalidArgument: a malformed key, content type or metadata.
        AlreadyExists, NotFound, Conflict, QuotaExceeded: as ``commit``.
    """
    check_key(request.key)
    check_content_type(request.content_type)
    check_metadata(request.metadata)
    room = await allowance(conn, request, quota=quota)
    room.refuse(len(data), quota)

    async def once() -> AsyncIterator[bytes]:
        yield data

    blob = await write_blob(blobs, request.tenant_id, once(), limit=room.limit)
    return await commit(conn, blobs, request, blob, quota=quota)


async def delete(conn: Connection, *, tenant_id: str, key: str, if_match: str | None = None) -> StoredObject:
    """Delete the object ``key``; its blob becomes garbage for the sweep.

    Raises:
        InvalidArgument: a malformed key.
        NotFound: no such object.
        Conflict: ``if_match`` is not the current etag.
    """
    check_key(key)
    await _lock_usage(conn, tenant_id)
    current = await find(conn, tenant_id=tenant_id, key=key)
    if current is None:
        raise NotFound(f"no object '{shown(key)}' in this tenant", hint="Use storage_list_objects to see keys.")
    _check_conditions(WriteRequest(tenant_id, key, "", {}, if_match=if_match), current)
    await conn.execute(_delete_object, {"o_tenant": tenant_id, "o_key": key, "o_etag": current.etag})
    await _add_usage(conn, tenant_id, size=-current.size, objects=-1)
    return current


# --- verified reads --------------------------------------------------------------------------


def corrupt(obj: StoredObject, why: str) -> Internal:
    """The error for bytes that fail verification (logged for the operator with the blob ref)."""
    log.error("object %r of tenant %s is corrupt: %s (blob %s)", obj.key, obj.tenant_id, why, obj.blob_ref)
    return Internal(
        f"object '{shown(obj.key)}' failed its SHA-256 check ({why}); no data was returned",
        hint="Write the object again from its source; the server log names the damaged blob.",
    )


def _sha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


async def _verified(blobs: BlobStore, obj: StoredObject, first: int, last: int) -> bytes:
    """Chunks ``first``..``last`` (inclusive) of ``obj``, each checked against its SHA-256."""
    start, end = first * CHUNK_SIZE, min(obj.size, (last + 1) * CHUNK_SIZE)
    try:
        raw = await blobs.read(obj.blob_ref, start, None if obj.size == 0 else end - start)
    except BlobNotFound:
        raise corrupt(obj, "its bytes are missing from the blob store") from None
    if len(raw) != end - start:
        raise corrupt(obj, f"{len(raw):,} bytes stored where {end - start:,} were written")
    bad: list[int] = []
    view = memoryview(raw)
    if len(raw) <= INLINE_BYTES:
        # At most 64 KiB: hashing it here costs less than a trip to a worker thread.
        if _sha256(view) != obj.digest_of_chunk(first):
            bad.append(first)
    else:
        limiter = anyio.CapacityLimiter(cpu_parallelism())

        async def check(index: int) -> None:
            piece = view[(index - first) * CHUNK_SIZE : (index - first + 1) * CHUNK_SIZE]
            if await anyio.to_thread.run_sync(_sha256, piece, limiter=limiter) != obj.digest_of_chunk(index):
                bad.append(index)

        async with anyio.create_task_group() as tg:
            for index in range(first, last + 1):
                tg.start_soon(check, index)
    if bad:
        raise corrupt(obj, f"chunk {min(bad)} of {obj.size // CHUNK_SIZE + 1} does not match")
    return raw


def check_range(obj: StoredObject, offset: int, length: int | None) -> int:
    """The end of the range ``offset``/``length`` of ``obj`` (clipped to its size).

    Raises:
        InvalidArgument: ``offset`` is past the end.
    """
    if offset > obj.size:
        raise InvalidArgument(
            f"offset {offset:,} is past the end of '{shown(obj.key)}' ({obj.size:,} bytes)",
            hint="Use an offset below the object's size (see storage_head_object).",
        )
    return obj.size if length is None else min(obj.size, offset + length)


async def read(blobs: BlobStore, obj: StoredObject, offset: int = 0, end: int | None = None) -> bytes:
    """Bytes ``offset``..``end`` of ``obj``, verified chunk by chunk.

    Raises:
        Internal: the stored bytes are missing or fail their SHA-256 (reported as corruption).
    """
    end = obj.size if end is None else end
    if obj.size == 0:
        await _verified(blobs, obj, 0, 0)
        return b""
    if end <= offset:
        return b""
    first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
    raw = await _verified(blobs, obj, first, last)
    base = first * CHUNK_SIZE
    if offset == base and end - base == len(raw):
        return raw  # the common whole-object read: no 16 MiB copy
    return raw[offset - base : end - base]


async def stream(blobs: BlobStore, obj: StoredObject, offset: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
    """Bytes ``offset``..``end`` of ``obj`` in verified windows of a few chunks: nothing unverified
    is ever yielded, and memory stays bounded whatever the object's size.

    Raises:
        Internal: the stored bytes are missing or fail their SHA-256.
    """
    end = obj.size if end is None else end
    window = CHUNK_SIZE * cpu_parallelism()
    position = offset
    if obj.size == 0 or end <= offset:
        yield await read(blobs, obj, offset, end)
        return
    while position < end:
        stop = min(end, (position // window + 1) * window)
        yield await read(blobs, obj, position, stop)
        position = stop


# --- listing ---------------------------------------------------------------------------------


def successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = 0xE000 if last + 1 == 0xD800 else last + 1
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


async def list_objects(
    conn: Connection,
    *,
    tenant_id: str,
    prefix: str = "",
    delimiter: str | None = None,
    position: dict[str, Any] | None = None,
    limit: int = 100,
) -> Listing:
    """A page of the tenant's objects under ``prefix`` in key (code point) order.

    With a delimiter, keys that contain it after the prefix are rolled up into one common prefix
    each (like directories). ``position`` is a previous page's ``next_position``.

    Raises:
        InvalidArgument: a malformed prefix, delimiter or position.
    """
    check_prefix(prefix)
    if delimiter is not None and (
        not delimiter or any(unicodedata.category(c) in FORBIDDEN_CATEGORIES for c in delimiter)
    ):
        raise InvalidArgument("delimiter must be non-empty printable text, e.g. '/'", hint="Use '/' to list a level.")
    lower = _start(position, prefix)
    upper = successor(prefix) if prefix else None
    table = storage_objects
    items: list[ObjectSummary] = []
    prefixes: list[str] = []

    def bounded(query: Any, bound: tuple[str, str]) -> Any:
        query = query.where(table.c.tenant_id == tenant_id)
        query = query.where(table.c.key > bound[1] if bound[0] == "a" else table.c.key >= bound[1])
        return query.where(table.c.key < upper) if upper is not None else query

    columns = sa.select(table.c.key, table.c.size, table.c.content_type, table.c.etag, table.c.updated_at)
    while len(items) + len(prefixes) < limit:
        want = limit - len(items) - len(prefixes)
        rows = (await conn.execute(bounded(columns, lower).order_by(table.c.key).limit(want))).all()
        for row in rows:
            rest = row.key[len(prefix) :]
            cut = rest.find(delimiter) if delimiter else -1
            if cut >= 0:
                common = prefix + rest[: cut + len(str(delimiter))]
                prefixes.append(common)
                after = successor(common)
                if after is None:
                    return Listing(items, prefixes, None)
                lower = ("f", after)
                break
            items.append(ObjectSummary(row.key, int(row.size), row.content_type, row.etag, row.updated_at))
            lower = ("a", row.key)
        else:
            if len(rows) < want:
                return Listing(items, prefixes, None)
    probe = bounded(sa.select(table.c.key), lower).limit(1)
    more = (await conn.execute(probe)).first() is not None
    return Listing(items, prefixes, {lower[0]: lower[1]} if more else None)


def _start(position: dict[str, Any] | None, prefix: str) -> tuple[str, str]:
    if position is None:
        return ("f", prefix)
    if len(position) == 1:
        (kind, value), *_ = position.items()
        if kind in ("a", "f") and isinstance(value, str) and value >= prefix:
            return (kind, value)
    raise InvalidArgument(
        "cursor is not one this server issued for this prefix",
        hint="Pass the next_cursor from the previous page with the same prefix, or omit it to start over.",
    )
