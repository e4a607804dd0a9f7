"""Blobs as files under one directory: the embedded default.

A write goes to a temporary file in ``<root>/.tmp``, is fsynced, then linked into place (a rename that
refuses to replace an existing file) and the directory is fsynced. A crash at any point leaves at most
a temporary file, which no read or listing sees and ``abort_stale`` removes.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio.to_thread

from scalemule.blobs.base import (
    INLINE_BYTES,
    PIECE_SIZE,
    BlobEntry,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    Digests,
    check_ref,
    pieces,
    write_while_hashing,
)

TEMPORARY = ".tmp"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, making each new entry durable in its parent."""
    if path.is_dir():
        return
    _ensure_dir(path.parent)
    try:
        path.mkdir(mode=0o700)  # the data directory's contents are the operator's alone
    except FileExistsError:
        return
    _fsync_dir(path.parent)


async def _chain(first: tuple[bytes, ...], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for piece in first:
        yield piece
    async for piece in rest:
        yield piece


def _read_at(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes from ``offset`` (fewer only at the end of the file)."""
    pieces: list[bytes] = []
    while length > 0:
        piece = os.pread(fd, length, offset)
        if not piece:
            break
        pieces.append(piece)
        offset, length = offset + len(piece), length - len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class LocalBlobStore:
    """Blobs under ``root`` (by default ``<data dir>/blobs``)."""

    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, ref: str) -> Path:
        return self.root / check_ref(ref)

    async def put(self, ref: str, data: AsyncIterable[bytes]) -> BlobInfo:
        """Write ``data`` to a temporary file, fsync it and link it into place under ``ref``.

        A blob of at most one piece (``PIECE_SIZE``) is hashed and written in one trip to a worker
        thread; a larger one streams, hashing beside the writes.

        Raises:
            BlobExists: ``ref`` is taken.
        """
        check_ref(ref)  # before anything touches the disk
        source = aiter(pieces(data))
        first = await anext(source, b"")
        second = await anext(source, None)
        if second is None and len(first) <= PIECE_SIZE:
            return await anyio.to_thread.run_sync(self._put_whole, ref, first)
        ahead = (first,) if second is None else (first, second)
        return await self._put_streamed(ref, _chain(ahead, source))

    def _put_whole(self, ref: str, content: bytes) -> BlobInfo:
        digests = Digests()
        digests.update_whole(content)
        digests.update_chunks(content)
        fd, temporary = self._open_temporary()
        try:
            try:
                _write_all(fd, content)
            except BaseException:
                os.close(fd)
                raise
            self._publish(ref, fd, temporary)
        finally:
            temporary.unlink(missing_ok=True)
        return digests.info(ref)

    async def _put_streamed(self, ref: str, data: AsyncIterable[bytes]) -> BlobInfo:
        fd, temporary = await anyio.to_thread.run_sync(self._open_temporary)
        digests = Digests()
        closed = False

        async def write(piece: bytes) -> None:
            await anyio.to_thread.run_sync(_write_all, fd, piece)

        def publish() -> None:
            nonlocal closed
            closed = True
            self._publish(ref, fd, temporary)

        try:
            await write_while_hashing(data, digests, write, partial(anyio.to_thread.run_sync, publish))
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._discard, fd, temporary, closed)
        return digests.info(ref)

    def _open_temporary(self) -> tuple[int, Path]:
        temporary_dir = self.root / TEMPORARY
        _ensure_dir(temporary_dir)
        temporary = temporary_dir / f"{secrets.token_hex(16)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        return os.open(temporary, flags, 0o600), temporary

    def _publish(self, ref: str, fd: int, temporary: Path) -> None:
        """Make the written file durable, close it and link it into place under ``ref``."""
        final = self._path(ref)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _ensure_dir(final.parent)
        try:
            os.link(temporary, final)
        except FileExistsError:
            raise BlobExists(ref) from None
        _fsync_dir(final.parent)

    @staticmethod
    def _discard(fd: int, temporary: Path, closed: bool) -> None:
        if not closed:
            os.close(fd)
        temporary.unlink(missing_ok=True)

    async def read(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the blob under ``ref`` from ``offset``.

        Raises:
            BlobNotFound: no blob under ``ref``.
        """
        path = os.path.join(self.root, check_ref(ref))  # a string join: pathlib's costs more than the read

        def read() -> bytes:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:
                raise BlobNotFound(ref) from None
            try:
                wanted = os.fstat(fd).st_size - offset if length is None else length
                return _read_at(fd, offset, wanted)
            finally:
                os.close(fd)

        if length is not None and length <= INLINE_BYTES:
            return read()
        return await anyio.to_thread.run_sync(read)

    async def delete(self, ref: str) -> None:
        """Remove the blob under ``ref``, if any."""
        await anyio.to_thread.run_sync(lambda: self._path(ref).unlink(missing_ok=True))

    async def entries(self, prefix: str = "") -> AsyncIterator[BlobEntry]:
        """Every finished blob whose ref starts with ``prefix``, one directory scanned per thread hop."""
        pending = [self.root]
        while pending:
            directory = pending.pop()
            entries, subdirs = await anyio.to_thread.run_sync(self._scan, directory, prefix)
            pending += subdirs
            for entry in entries:
                yield entry

    def _scan(self, directory: Path, prefix: str) -> tuple[list[BlobEntry], list[Path]]:
        entries: list[BlobEntry] = []
        subdirs: list[Path] = []
        try:
            items = list(os.scandir(directory))
        except FileNotFoundError:
            return entries, subdirs
        for item in items:
            path = Path(item.path)
            ref = path.relative_to(self.root).as_posix()
            if item.name.startswith("."):
                continue
            if item.is_dir(follow_symlinks=False):
                # Descend only where refs under the prefix can be.
                if ref.startswith(prefix[: len(ref)]) or prefix.startswith(ref + "/"):
                    subdirs.append(path)
            elif item.is_file(follow_symlinks=False) and ref.startswith(prefix):
                stat = item.stat(follow_symlinks=False)
                entries.append(BlobEntry(ref, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))
        return entries, subdirs

    async def abort_stale(self, before: datetime) -> int:
        """Remove temporary files of writes started before ``before`` (a killed writer's leftovers)."""
        directory = self.root / TEMPORARY
        cutoff = before.timestamp()

        def clean() -> int:
            removed = 0
            try:
                items = list(os.scandir(directory))
            except FileNotFoundError:
                return 0
            for item in items:
                try:
                    if item.stat().st_mtime < cutoff:
                        os.unlink(item.path)
                        removed += 1
                except FileNotFoundError:
                    continue
                except OSError as exc:  # a directory or an unwritable entry: not ours to remove
                    if exc.errno not in (errno.EISDIR, errno.EPERM, errno.EACCES):
                        raise
            return removed

        return await anyio.to_thread.run_sync(clean)

    async def presign_get(
        self, ref: str, *, expires_in: int, content_type: str, filename: str, disposition: str = "inline"
    ) -> str | None:
        """None: local blobs are served by ScaleMule's HTTP surface under ``/blobs/``."""
        return None

    async def close(self) -> None:
        """Nothing to release."""
