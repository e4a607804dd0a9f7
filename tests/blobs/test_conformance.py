"""The BlobStore contract: every test runs against LocalBlobStore and S3BlobStore alike."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import anyio.to_thread
import pytest

from scalemule.blobs import BlobExists, BlobNotFound, BlobStore
from scalemule.blobs.base import CHUNK_SIZE, PIECE_SIZE
from scalemule.blobs.local import LocalBlobStore
from scalemule.blobs.s3 import PART_SIZE, S3BlobStore
from tests.blobs.conftest import S3Endpoint

pytestmark = pytest.mark.anyio


async def chunks(data: bytes, *sizes: int) -> AsyncIterator[bytes]:
    """``data`` cut into pieces of the given sizes (cycled), as a stream."""
    position, turn = 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)] if sizes else len(data)
        yield data[position : position + size]
        position += size
        turn += 1


def chunk_digests(data: bytes) -> bytes:
    pieces = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)] or [b""]
    return b"".join(hashlib.sha256(p).digest() for p in pieces)


async def refs(store: BlobStore, prefix: str = "") -> list[str]:
    return sorted([entry.ref async for entry in store.entries(prefix)])


async def test_a_blob_reads_back_byte_for_byte_with_its_size_and_sha256(blob_store: BlobStore) -> None:
    data = os.urandom(100_000)
    info = await blob_store.put("ten_a/00/one", chunks(data, 4096))
    assert (info.ref, info.size, info.sha256) == ("ten_a/00/one", len(data), hashlib.sha256(data).hexdigest())
    assert info.chunk_digests == hashlib.sha256(data).digest()
    assert await blob_store.read("ten_a/00/one") == data


async def test_chunk_digests_do_not_depend_on_how_the_stream_is_cut(blob_store: BlobStore) -> None:
    # Larger than an S3 part, so S3 takes the multipart path.
    data = os.urandom(PART_SIZE + 3 * CHUNK_SIZE // 2 + 17)
    info = await blob_store.put("ten_a/00/big", chunks(data, 1_000_003, 65_536, 7 << 20))
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.chunk_digests == chunk_digests(data)
    assert await blob_store.read("ten_a/00/big") == data


@pytest.mark.parametrize("size", [PIECE_SIZE - 1, PIECE_SIZE, PIECE_SIZE + 1])
async def test_blobs_either_side_of_one_piece_read_back_with_their_digests(blob_store: BlobStore, size: int) -> None:
    # The local store writes a blob of at most one piece in one go and streams a larger one.
    data = os.urandom(size)
    for cut, ref in ((None, "ten_a/00/whole"), (65_536, "ten_a/00/parts")):
        info = await blob_store.put(ref, chunks(data, cut) if cut else chunks(data))
        assert (info.size, info.sha256, info.chunk_digests) == (
            size,
            hashlib.sha256(data).hexdigest(),
            chunk_digests(data),
        )
        assert await blob_store.read(ref) == data
        assert await blob_store.read(ref, size - 10, 10) == data[-10:]


async def test_ranges_read_exactly_the_bytes_asked_for_and_stop_short_at_the_end(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await blob_store.put("ten_a/00/r", chunks(data))
    assert await blob_store.read("ten_a/00/r", 10, 5) == data[10:15]
    assert await blob_store.read("ten_a/00/r", 1000) == data[1000:]
    assert await blob_store.read("ten_a/00/r", len(data) - 3, 100) == data[-3:]
    assert await blob_store.read("ten_a/00/r", len(data) + 5, 10) == b""
    assert await blob_store.read("ten_a/00/r", 7, 0) == b""


async def test_an_empty_blob_round_trips(blob_store: BlobStore) -> None:
    info = await blob_store.put("ten_a/00/empty", chunks(b""))
    assert (info.size, info.sha256) == (0, hashlib.sha256(b"").hexdigest())
    assert info.chunk_digests == hashlib.sha256(b"").digest()
    assert await blob_store.read("ten_a/00/empty") == b""


async def test_a_taken_ref_is_never_overwritten(blob_store: BlobStore) -> None:
    await blob_store.put("ten_a/00/x", chunks(b"first"))
    with pytest.raises(BlobExists):
        await blob_store.put("ten_a/00/x", chunks(b"second"))
    assert await blob_store.read("ten_a/00/x") == b"first"


async def test_32_concurrent_writes_of_one_ref_have_exactly_one_winner(blob_store: BlobStore) -> None:
    outcomes: list[bytes | None] = []

    async def attempt(i: int) -> None:
        body = f"writer {i}".encode()
        try:
            await blob_store.put("ten_a/00/race", chunks(body))
        except BlobExists:
            outcomes.append(None)
        else:
            outcomes.append(body)

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(attempt, i)
    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1
    assert await blob_store.read("ten_a/00/race") == winners[0]


async def test_reading_a_missing_ref_raises_blob_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        await blob_store.read("ten_a/00/missing")
    with pytest.raises(BlobNotFound):
        await blob_store.read("ten_a/00/missing", 0, 0)


async def test_delete_removes_the_blob_and_deleting_again_is_fine(blob_store: BlobStore) -> None:
    await blob_store.put("ten_a/00/d", chunks(b"bye"))
    await blob_store.delete("ten_a/00/d")
    await blob_store.delete("ten_a/00/d")
    with pytest.raises(BlobNotFound):
        await blob_store.read("ten_a/00/d")
    assert await refs(blob_store) == []


async def test_malformed_refs_are_refused_before_touching_the_store(blob_store: BlobStore) -> None:
    for ref in ("../escape", "/abs", "a//b", "a/./b", "a\\b", "", "a/b/", "a/b\n"):
        with pytest.raises(ValueError):
            await blob_store.read(ref)
        with pytest.raises(ValueError):
            await blob_store.put(ref, chunks(b"x"))


async def test_entries_list_finished_blobs_under_a_prefix_with_size_and_time(blob_store: BlobStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=1)
    await blob_store.put("ten_a/00/one", chunks(b"1"))
    await blob_store.put("ten_a/01/two", chunks(b"22"))
    await blob_store.put("ten_b/00/three", chunks(b"333"))
    assert await refs(blob_store) == ["ten_a/00/one", "ten_a/01/two", "ten_b/00/three"]
    assert await refs(blob_store, "ten_a/") == ["ten_a/00/one", "ten_a/01/two"]
    entries = [e async for e in blob_store.entries("ten_b/")]
    assert [(e.ref, e.size) for e in entries] == [("ten_b/00/three", 3)]
    assert before < entries[0].modified <= datetime.now(UTC) + timedelta(minutes=1)


async def failing(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise OSError("the client went away")


async def test_a_write_whose_source_fails_leaves_nothing_behind(blob_store: BlobStore) -> None:
    with pytest.raises(OSError, match="went away"):
        await blob_store.put("ten_a/00/broken", failing(os.urandom(PART_SIZE + 1)))
    with pytest.raises(BlobNotFound):
        await blob_store.read("ten_a/00/broken")
    assert await refs(blob_store) == []
    assert await blob_store.abort_stale(datetime.now(UTC) + timedelta(minutes=1)) == 0


async def test_a_cancelled_write_leaves_nothing_behind(blob_store: BlobStore) -> None:
    blocked = anyio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield os.urandom(PART_SIZE + 1)
        yield os.urandom(PART_SIZE + 1)
        blocked.set()
        await anyio.Event().wait()
        yield b"never"

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blob_store.put, "ten_a/00/cancelled", stalls())
            await blocked.wait()
            tg.cancel_scope.cancel()
    with pytest.raises(BlobNotFound):
        await blob_store.read("ten_a/00/cancelled")
    assert await refs(blob_store) == []
    assert await blob_store.abort_stale(datetime.now(UTC) + timedelta(minutes=1)) == 0


KILLED_WRITER = """
import json, sys
from pathlib import Path
import anyio, anyio.to_thread
from scalemule.blobs.local import LocalBlobStore
from scalemule.blobs.s3 import PART_SIZE, S3BlobStore

config = json.loads(sys.argv[1])
if config["kind"] == "local":
    store = LocalBlobStore(Path(config["root"]))
else:
    store = S3BlobStore(config["bucket"], prefix=config["prefix"], endpoint_url=config["endpoint"])

async def source():
    yield b"a" * (PART_SIZE + 1)
    yield b"b" * (PART_SIZE + 1)
    print("writing", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.read)  # held open until the test kills this process
    yield b"never"

anyio.run(store.put, "ten_a/00/killed", source())
"""


def writer_config(store: BlobStore, endpoint: S3Endpoint | None) -> dict[str, str]:
    if isinstance(store, LocalBlobStore):
        return {"kind": "local", "root": str(store.root)}
    assert isinstance(store, S3BlobStore) and endpoint is not None
    return {"kind": "s3", "bucket": store.bucket, "prefix": store.prefix, "endpoint": endpoint.url}


async def test_a_killed_writer_leaves_no_blob_and_abort_stale_clears_its_leftovers(
    blob_store: BlobStore, request: pytest.FixtureRequest
) -> None:
    endpoint = request.getfixturevalue("s3_endpoint") if blob_store.kind == "s3" else None
    started = datetime.now(UTC)
    config = json.dumps(writer_config(blob_store, endpoint))
    process = await anyio.open_process([sys.executable, "-c", KILLED_WRITER, config])
    try:
        assert process.stdout is not None
        with anyio.fail_after(60):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        assert line == b"writing\n"
    finally:
        process.kill()
        with anyio.fail_after(30):
            await process.wait()
    with pytest.raises(BlobNotFound):
        await blob_store.read("ten_a/00/killed")
    assert await refs(blob_store) == []
    # Leftovers younger than the cut-off stay (a live writer may own them); older ones go. moto reports
    # one fixed 2010 'Initiated' time for every multipart upload, so only the local store can show the first.
    if blob_store.kind == "local":
        assert await blob_store.abort_stale(started - timedelta(minutes=1)) == 0
    assert await blob_store.abort_stale(datetime.now(UTC) + timedelta(minutes=1)) == 1
    assert await blob_store.abort_stale(datetime.now(UTC) + timedelta(minutes=1)) == 0


async def test_a_store_that_signs_urls_serves_exactly_the_blob_from_them(blob_store: BlobStore) -> None:
    data = os.urandom(5000)
    await blob_store.put("ten_a/00/signed", chunks(data))
    url = await blob_store.presign_get(
        "ten_a/00/signed", expires_in=60, content_type="application/pdf", filename="report é.pdf"
    )
    if blob_store.kind == "local":
        assert url is None  # served by ScaleMule's own /blobs/ route instead
        return
    assert url is not None

    def fetch() -> tuple[bytes, str]:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read(), response.headers.get("content-type", "")

    body, content_type = await anyio.to_thread.run_sync(fetch)
    assert body == data
    assert content_type == "application/pdf"
