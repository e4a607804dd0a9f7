"""The blob backend port: one Protocol, a local twin and S3 behind it, one conformance test for both.

A blob is an immutable byte string stored under an opaque ``ref`` that ScaleMule chose. Stores never
overwrite: a write goes to a fresh ref and becomes visible whole or not at all. While a blob streams
in, its SHA-256 is computed, along with the SHA-256 of every ``CHUNK_SIZE`` piece, so a later read of
any range can be verified by reading only the chunks it touches.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import anyio
import anyio.to_thread

# Verification granularity: a ranged read fetches and hashes whole chunks.
CHUNK_SIZE = 4 << 20
# Incoming data is regrouped into pieces this large before a thread hop, so small network reads do
# not each cost one.
PIECE_SIZE = 1 << 20
# Up to this many bytes, reading a local blob or hashing it takes less than a trip to a worker thread,
# so it is done on the event loop.
INLINE_BYTES = 64 << 10
DIGEST_SIZE = 32

_REF = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")


class BlobNotFound(LookupError):
    """No blob is stored under the ref."""


class BlobExists(FileExistsError):
    """A blob is already stored under the ref; stores never overwrite."""


@dataclass(frozen=True)
class BlobInfo:
    """A blob as written: its size, SHA-256 and the SHA-256 of each ``CHUNK_SIZE`` chunk.

    Attributes:
        ref: where it is stored.
        size: length in bytes.
        sha256: hex SHA-256 of the whole blob.
        chunk_digests: the chunks' raw 32-byte SHA-256 digests, concatenated.
    """

    ref: str
    size: int
    sha256: str
    chunk_digests: bytes


@dataclass(frozen=True)
class BlobEntry:
    """A stored blob as listed: what a sweep needs to decide whether it is garbage."""

    ref: str
    size: int
    modified: datetime


class BlobStore(Protocol):
    """Where object bytes live. Implementations: ``LocalBlobStore``, ``S3BlobStore``."""

    kind: str

    async def put(self, ref: str, data: AsyncIterable[bytes]) -> BlobInfo:
        """Store ``data`` under ``ref``, hashing it as it streams.

        Nothing is visible under ``ref`` until the whole blob is durable; if ``data`` raises or the
        task is cancelled, nothing is left but what ``abort_stale`` removes.

        Raises:
            BlobExists: ``ref`` is taken (never overwritten).
        """
        ...

    async def read(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        """Up to ``length`` bytes from ``offset`` (to the end when None); short at the blob's end.

        Raises:
            BlobNotFound: no blob under ``ref``.
        """
        ...

    async def delete(self, ref: str) -> None:
        """Remove the blob under ``ref``; a missing blob is not an error."""
        ...

    def entries(self, prefix: str = "") -> AsyncIterator[BlobEntry]:
        """Every finished blob whose ref starts with ``prefix``."""
        ...

    async def abort_stale(self, before: datetime) -> int:
        """Remove what interrupted writes started before ``before`` left behind; returns how many."""
        ...

    async def presign_get(
        self, ref: str, *, expires_in: int, content_type: str, filename: str, disposition: str = "inline"
    ) -> str | None:
        """A URL the store itself serves the blob from, or None when it cannot sign one.

        ``disposition`` (``inline`` or ``attachment``) is the ``Content-Disposition`` it is served with.
        """
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


def check_ref(ref: str) -> str:
    """Return ``ref`` if it is a well-formed blob ref (refs are made by ScaleMule, never by callers).

    Raises:
        ValueError: it is not slash-separated segments of letters, digits, '_' and '-'.
    """
    if not _REF.fullmatch(ref):
        raise ValueError(f"malformed blob ref {ref[:80]!r}")
    return ref


class Digests:
    """SHA-256 of a whole stream and of each ``CHUNK_SIZE`` chunk, however the stream is cut."""

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._filled = 0
        self._done: list[bytes] = []
        self.size = 0

    def update_whole(self, data: bytes) -> None:
        """Feed ``data`` to the whole-stream hash (thread-safe against ``update_chunks``)."""
        self._whole.update(data)

    def update_chunks(self, data: bytes) -> None:
        """Feed ``data`` to the per-chunk hashes (thread-safe against ``update_whole``)."""
        view = memoryview(data)
        self.size += len(view)
        while view:
            take = min(len(view), CHUNK_SIZE - self._filled)
            self._chunk.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == CHUNK_SIZE:
                self._done.append(self._chunk.digest())
                self._chunk, self._filled = hashlib.sha256(), 0

    def info(self, ref: str) -> BlobInfo:
        """The finished blob's description."""
        chunks = list(self._done)
        if self._filled or not chunks:
            chunks.append(self._chunk.digest())
        return BlobInfo(ref=ref, size=self.size, sha256=self._whole.hexdigest(), chunk_digests=b"".join(chunks))


async def hash_alongside(digests: Digests, data: bytes, *jobs: Callable[[], object]) -> None:
    """Hash ``data`` (whole and per chunk) and run ``jobs`` (e.g. the write of ``data``) on worker
    threads at once: hashlib and file or socket I/O release the GIL, so they overlap."""
    async with _first_error(), anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, digests.update_whole, data)
        tg.start_soon(anyio.to_thread.run_sync, digests.update_chunks, data)
        for job in jobs:
            tg.start_soon(anyio.to_thread.run_sync, job)


async def write_while_hashing(
    data: AsyncIterable[bytes],
    digests: Digests,
    write: Callable[[bytes], Awaitable[object]],
    finish: Callable[[], Awaitable[object]],
) -> None:
    """Two lanes side by side: one writes each piece then runs ``finish`` (fsync, publish), the other
    hashes the same pieces. Neither waits for the other until both are done, so hashing overlaps the
    writes and the final fsync. A failure in either lane (or in ``data``) cancels both."""
    to_writer, writes = anyio.create_memory_object_stream[bytes](2)
    to_hasher, hashes = anyio.create_memory_object_stream[bytes](2)

    async def feed() -> None:
        async for piece in pieces(data):
            await to_writer.send(piece)
            await to_hasher.send(piece)
        # Only a source that ended normally closes the lanes: after a failure they end by
        # cancellation, so the writer can never take a failed stream for a complete one and publish it.
        to_writer.close()
        to_hasher.close()

    async def writer() -> None:
        async for piece in writes:
            await write(piece)
        await finish()

    async def hasher() -> None:
        async for piece in hashes:
            await hash_alongside(digests, piece)

    try:
        async with _first_error(), anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(writer)
            tg.start_soon(hasher)
    finally:
        for stream in (to_writer, to_hasher, writes, hashes):
            stream.close()


@asynccontextmanager
async def _first_error() -> AsyncIterator[None]:
    # Task groups raise ExceptionGroup; a lane's own error (BlobExists, the source's) is what callers
    # catch by type, and when one lane fails the others are only cancelled.
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def pieces(data: AsyncIterable[bytes], size: int = PIECE_SIZE) -> AsyncIterator[bytes]:
    """``data`` regrouped into pieces of at least ``size`` bytes (the last may be shorter)."""
    buffer: list[bytes] = []
    held = 0
    async for part in data:
        if not part:
            continue
        buffer.append(part)
        held += len(part)
        if held >= size:
            yield buffer[0] if len(buffer) == 1 else b"".join(buffer)
            buffer, held = [], 0
    if buffer:
        yield b"".join(buffer)


def cpu_parallelism() -> int:
    """How many hashing threads are worth running at once."""
    return max(1, min(8, os.cpu_count() or 1))
