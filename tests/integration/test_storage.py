"""The storage toolset through the dispatcher, on SQLite and PostgreSQL, with local and S3 blobs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import mcp_types as types
import pytest
import sqlalchemy as sa
from mcp import Client
from starlette.types import ASGIApp, Message

from scalemule.blobs import BlobStore
from scalemule.blobs.base import CHUNK_SIZE
from scalemule.core import bootstrap, crypto, storage
from scalemule.core.audit_checkpoints import DIGEST_PREFIX
from scalemule.core.signed_urls import UrlSigner
from scalemule.core.storage_sweep import sweep
from scalemule.db.tables import signed_url_uses, storage_objects, storage_usage
from scalemule.dispatch import Dispatcher, Exposure, Invocation
from scalemule.operations import REGISTRY
from scalemule.operations.base import Call
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces.http import build_app
from scalemule.surfaces.mcp import build_server
from tests.blobs.conftest import S3Endpoint, s3_endpoint, s3_prefix  # noqa: F401  (s3_endpoint: a fixture)
from tests.conftest import StoreProbe, World

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["local", "s3"])
def storage_settings(request: pytest.FixtureRequest, store: Settings) -> Settings:
    """``store`` with local blobs, then with blobs in S3 under a fresh prefix."""
    if request.param == "local":
        return store
    endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
    return dataclasses.replace(store, s3_bucket=endpoint.bucket, s3_endpoint_url=endpoint.url, s3_prefix=s3_prefix())


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[World]:
    """A bootstrapped store over ``settings``: tenant 'acme', its owner and its developer agent."""
    runtime = Runtime.open(settings)
    try:
        dispatcher = Dispatcher(runtime, Exposure(toolsets=None))
        made = await bootstrap.initialize(runtime.db, slug="acme", owner_email="alice@example.com")
        crypto.create_key_file(settings.data_dir)
        yield World(dispatcher, made)
    finally:
        await runtime.close()


@pytest.fixture
async def sworld(storage_settings: Settings) -> AsyncIterator[World]:
    async with opened(storage_settings) as world:
        yield world


def blobs_of(world: World) -> BlobStore:
    return world.dispatcher.runtime.blobs


async def blob_refs(world: World) -> list[str]:
    """Refs of object bytes (the audit log's digest objects, under their reserved prefix, are not)."""
    audit_digests = DIGEST_PREFIX + "/"
    return sorted([e.ref async for e in blobs_of(world).entries() if not e.ref.startswith(audit_digests)])


async def object_rows(world: World) -> int:
    async with world.dispatcher.runtime.db.transaction() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(storage_objects))).scalar_one())


async def used_bytes(world: World) -> int:
    async with world.dispatcher.runtime.db.transaction() as conn:
        value = (await conn.execute(sa.select(storage_usage.c.bytes))).scalar()
    return int(value or 0)


async def second_tenant(world: World) -> str:
    """Tenant 'globex' (also owned by alice) and a key for its own developer agent."""
    await world.ok("tenants_create", world.owner, slug="globex", name="Globex")
    agent = await world.ok("agents_create", world.owner, tenant="globex", name="globex-bot", role="developer")
    made = await world.ok(
        "keys_create", world.owner, tenant="globex", name="bot", principal_id=agent["principal"]["id"]
    )
    return str(made["token"])


# --- round trips ------------------------------------------------------------------------------


async def test_an_object_round_trips_with_its_sha256_etag_and_writer(sworld: World) -> None:
    put = await sworld.ok("storage_put_object", sworld.agent, key="menus/week-1.json", content='{"pizza": 12}')
    assert put["sha256"] == hashlib.sha256(b'{"pizza": 12}').hexdigest() and put["size"] == 13
    got = await sworld.ok("storage_get_object", sworld.agent, key="menus/week-1.json")
    assert (got["encoding"], got["content"], got["etag"]) == ("text", '{"pizza": 12}', put["etag"])
    assert (got["content_type"], got["truncated"], got["next_offset"]) == ("application/json", False, None)
    head = await sworld.ok("storage_head_object", sworld.agent, key="menus/week-1.json")
    me = await sworld.ok("whoami", sworld.agent)
    assert head["created_by"] == head["updated_by"] == me["principal"]["id"]
    assert head["metadata"] == {} and head["sha256"] == put["sha256"]


async def test_binary_content_round_trips_as_base64_with_metadata(sworld: World) -> None:
    data = os.urandom(3000)
    await sworld.ok(
        "storage_put_object",
        sworld.agent,
        key="photos/pie.png",
        content=base64.b64encode(data).decode(),
        encoding="base64",
        metadata={"alt": "a pie", "source": "kitchen"},
    )
    got = await sworld.ok("storage_get_object", sworld.agent, key="photos/pie.png")
    assert (got["encoding"], got["content_type"]) == ("base64", "image/png")
    assert base64.b64decode(got["content"]) == data
    head = await sworld.ok("storage_head_object", sworld.agent, key="photos/pie.png")
    assert head["metadata"] == {"alt": "a pie", "source": "kitchen"}


async def test_text_that_is_not_utf8_reads_back_as_base64(sworld: World) -> None:
    raw = "café".encode("latin-1")
    await sworld.ok(
        "storage_put_object",
        sworld.agent,
        key="legacy.txt",
        content=base64.b64encode(raw).decode(),
        encoding="base64",
        content_type="text/plain",
    )
    got = await sworld.ok("storage_get_object", sworld.agent, key="legacy.txt")
    assert got["encoding"] == "base64" and base64.b64decode(got["content"]) == raw


async def test_metadata_over_2_kib_and_bad_content_types_are_invalid(sworld: World) -> None:
    big = {"note": "x" * 2100}
    assert await sworld.code("storage_put_object", sworld.agent, key="a", content="x", metadata=big) == (
        "invalid_argument"
    )
    assert await sworld.code("storage_put_object", sworld.agent, key="a", content="x", content_type="nope") == (
        "invalid_argument"
    )
    assert await sworld.code("storage_put_object", sworld.agent, key="a", content="%%", encoding="base64") == (
        "invalid_argument"
    )
    assert await object_rows(sworld) == 0


# --- ranges and truncation --------------------------------------------------------------------


async def test_a_read_says_plainly_when_more_remains_and_pages_reassemble_the_object(sworld: World) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 12345)
    encoded = base64.b64encode(data).decode()
    await sworld.ok("storage_put_object", sworld.agent, key="big.bin", content=encoded, encoding="base64")
    parts: list[bytes] = []
    offset: int | None = 0
    while offset is not None:
        page = await sworld.ok("storage_get_object", sworld.agent, key="big.bin", offset=offset, max_bytes=3 << 20)
        parts.append(base64.b64decode(page["content"]))
        assert page["truncated"] is (page["next_offset"] is not None)
        offset = page["next_offset"]
    assert b"".join(parts) == data
    # A range across a chunk boundary, and a range that the object's end cuts short.
    ranged = await sworld.ok("storage_get_object", sworld.agent, key="big.bin", offset=CHUNK_SIZE - 10, length=20)
    assert base64.b64decode(ranged["content"]) == data[CHUNK_SIZE - 10 : CHUNK_SIZE + 10]
    assert ranged["truncated"] is False
    tail = await sworld.ok("storage_get_object", sworld.agent, key="big.bin", offset=len(data) - 5, length=100)
    assert base64.b64decode(tail["content"]) == data[-5:] and tail["truncated"] is False


async def test_a_cut_text_never_splits_a_character(sworld: World) -> None:
    text = "größe " * 10
    await sworld.ok("storage_put_object", sworld.agent, key="notes.txt", content=text)
    got = await sworld.ok("storage_get_object", sworld.agent, key="notes.txt", max_bytes=3)
    assert (got["encoding"], got["content"], got["next_offset"]) == ("text", "gr", 2)
    rest = await sworld.ok("storage_get_object", sworld.agent, key="notes.txt", offset=2, max_bytes=1000)
    assert got["content"] + rest["content"] == text


async def test_an_offset_past_the_end_is_invalid_and_one_at_the_end_reads_nothing(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="k.txt", content="abc")
    assert await sworld.code("storage_get_object", sworld.agent, key="k.txt", offset=4) == "invalid_argument"
    at_end = await sworld.ok("storage_get_object", sworld.agent, key="k.txt", offset=3)
    assert (at_end["content"], at_end["truncated"]) == ("", False)


async def test_an_empty_object_round_trips(sworld: World) -> None:
    put = await sworld.ok("storage_put_object", sworld.agent, key="empty.txt", content="")
    assert put["size"] == 0
    got = await sworld.ok("storage_get_object", sworld.agent, key="empty.txt")
    assert (got["content"], got["truncated"]) == ("", False)


# --- conditional writes -----------------------------------------------------------------------


async def test_32_concurrent_create_only_puts_of_one_key_have_exactly_one_winner(sworld: World) -> None:
    codes: dict[int, str | None] = {}

    async def attempt(i: int) -> None:
        outcome = await sworld.call(
            "storage_put_object", sworld.agent, key="orders/next.json", content=f'{{"writer": {i}}}', if_none_match=True
        )
        codes[i] = None if outcome.error is None else outcome.error.code

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(attempt, i)
    winners = [i for i, code in codes.items() if code is None]
    assert len(winners) == 1
    assert sorted(code for code in codes.values() if code is not None) == ["already_exists"] * 31
    got = await sworld.ok("storage_get_object", sworld.agent, key="orders/next.json")
    assert got["content"] == f'{{"writer": {winners[0]}}}'
    # The losers' blobs were removed with their refusal: only the winner's remains.
    assert len(await blob_refs(sworld)) == 1
    assert await object_rows(sworld) == 1


async def test_if_match_with_a_stale_etag_is_a_conflict_naming_the_current_etag(sworld: World) -> None:
    first = await sworld.ok("storage_put_object", sworld.agent, key="counter", content="1")
    second = await sworld.ok("storage_put_object", sworld.agent, key="counter", content="2", if_match=first["etag"])
    assert second["etag"] != first["etag"]
    outcome = await sworld.call("storage_put_object", sworld.agent, key="counter", content="3", if_match=first["etag"])
    assert outcome.error is not None and outcome.error.code == "conflict"
    assert second["etag"] in outcome.error.message
    assert (await sworld.ok("storage_get_object", sworld.agent, key="counter"))["content"] == "2"
    assert await sworld.code("storage_put_object", sworld.agent, key="nope", content="x", if_match="0" * 32) == (
        "not_found"
    )


async def test_if_none_match_on_an_existing_key_is_already_exists(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="once", content="a", if_none_match=True)
    assert await sworld.code("storage_put_object", sworld.agent, key="once", content="b", if_none_match=True) == (
        "already_exists"
    )
    assert (await sworld.ok("storage_get_object", sworld.agent, key="once"))["content"] == "a"


async def test_concurrent_compare_and_swap_writes_have_exactly_one_winner(sworld: World) -> None:
    base = await sworld.ok("storage_put_object", sworld.agent, key="cas", content="0")
    codes: list[str | None] = []

    async def attempt(i: int) -> None:
        outcome = await sworld.call(
            "storage_put_object", sworld.agent, key="cas", content=str(i), if_match=base["etag"]
        )
        codes.append(None if outcome.error is None else outcome.error.code)

    async with anyio.create_task_group() as tg:
        for i in range(1, 17):
            tg.start_soon(attempt, i)
    assert codes.count(None) == 1 and codes.count("conflict") == 15


# --- keys -------------------------------------------------------------------------------------

BAD_KEYS = [
    "../etc/passwd",
    "a/../b",
    "a/./b",
    "/absolute",
    "back\\slash",
    "new\nline",
    "nul\x00byte",
    "tab\tkey",
    "del\x7f",
    "c1\x85control",
    "a//b",
    "trailing/",
    "",
    "x" * 1025,
    "é" * 513,
]


async def test_bad_keys_are_refused_with_the_allowed_form(sworld: World) -> None:
    for key in BAD_KEYS:
        for operation, extra in [
            ("storage_put_object", {"content": "x"}),
            ("storage_get_object", {}),
            ("storage_head_object", {}),
            ("storage_delete_object", {}),
            ("storage_create_signed_url", {}),
        ]:
            outcome = await sworld.call(operation, sworld.agent, key=key, **extra)
            assert outcome.error is not None and outcome.error.code == "invalid_argument", (operation, key)
            if "\x00" not in key:  # NUL is refused by the argument model, before the key rules
                assert outcome.error.hint is not None and "1-1,024 bytes" in outcome.error.hint, (operation, key)
    assert await object_rows(sworld) == 0


VALID_UNICODE_KEYS = [
    "menüs/日本語/🍕 pizza.txt",
    "caf\u00e9.txt",  # composed é
    "cafe\u0301.txt",  # e + combining accent: a different key, kept apart
    "family/👩\u200d👩\u200d👧.txt",  # zero-width joiners inside an emoji sequence
    "ελληνικά/κλειδί",
    "x" * 1024,
    "é" * 512,
]


async def test_valid_unicode_keys_round_trip_exactly(sworld: World) -> None:
    for i, key in enumerate(VALID_UNICODE_KEYS):
        put = await sworld.ok("storage_put_object", sworld.agent, key=key, content=str(i))
        assert put["key"] == key
    listed = (await sworld.ok("storage_list_objects", sworld.agent, limit=50))["items"]
    assert sorted(item["key"] for item in listed) == sorted(VALID_UNICODE_KEYS)
    for i, key in enumerate(VALID_UNICODE_KEYS):
        got = await sworld.ok("storage_get_object", sworld.agent, key=key)
        assert (got["key"], got["content"]) == (key, str(i))


# --- listing ----------------------------------------------------------------------------------


async def test_listing_pages_through_keys_in_code_point_order_under_a_prefix(sworld: World) -> None:
    keys = ["img/a.png", "img/b.png", "img/Z.png", "img/é.png", "img/sub/c.png", "imgx", "other/d.txt"]
    for key in keys:
        await sworld.ok("storage_put_object", sworld.agent, key=key, content=key)
    seen: list[str] = []
    cursor = None
    while True:
        page = await sworld.ok("storage_list_objects", sworld.agent, prefix="img/", limit=2, cursor=cursor)
        seen += [item["key"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(k for k in keys if k.startswith("img/"))
    assert seen == ["img/Z.png", "img/a.png", "img/b.png", "img/sub/c.png", "img/é.png"]


async def test_a_delimiter_lists_one_level_with_sub_levels_as_prefixes(sworld: World) -> None:
    for key in ["top.txt", "a/1", "a/2", "a/deep/3", "b/1", "c.txt"]:
        await sworld.ok("storage_put_object", sworld.agent, key=key, content="x")
    level = await sworld.ok("storage_list_objects", sworld.agent, delimiter="/")
    assert [i["key"] for i in level["items"]] == ["c.txt", "top.txt"]
    assert level["prefixes"] == ["a/", "b/"]
    inner = await sworld.ok("storage_list_objects", sworld.agent, prefix="a/", delimiter="/")
    assert ([i["key"] for i in inner["items"]], inner["prefixes"]) == (["a/1", "a/2"], ["a/deep/"])
    # Paging one entry at a time visits prefixes and objects alike, each once.
    entries: list[str] = []
    cursor = None
    while True:
        page = await sworld.ok("storage_list_objects", sworld.agent, delimiter="/", limit=1, cursor=cursor)
        entries += page["prefixes"] + [i["key"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert entries == ["a/", "b/", "c.txt", "top.txt"]


async def test_a_forged_cursor_is_invalid(sworld: World) -> None:
    assert await sworld.code("storage_list_objects", sworld.agent, cursor="not-a-cursor") == "invalid_argument"


# --- delete and quota -------------------------------------------------------------------------


async def test_delete_removes_the_object_and_frees_its_bytes(sworld: World) -> None:
    put = await sworld.ok("storage_put_object", sworld.agent, key="tmp.txt", content="hello")
    assert await used_bytes(sworld) == 5
    assert await sworld.code("storage_delete_object", sworld.agent, key="tmp.txt", if_match="f" * 32) == "conflict"
    deleted = await sworld.ok("storage_delete_object", sworld.agent, key="tmp.txt", if_match=put["etag"])
    assert deleted["etag"] == put["etag"]
    assert await sworld.code("storage_get_object", sworld.agent, key="tmp.txt") == "not_found"
    assert await sworld.code("storage_delete_object", sworld.agent, key="tmp.txt") == "not_found"
    assert await used_bytes(sworld) == 0


async def test_quota_exceeded_when_a_put_would_pass_it(storage_settings: Settings) -> None:
    async with opened(dataclasses.replace(storage_settings, storage_quota_bytes=1000)) as world:
        await world.ok("storage_put_object", world.agent, key="a", content="x" * 600)
        outcome = await world.call("storage_put_object", world.agent, key="b", content="y" * 600)
        assert outcome.error is not None and outcome.error.code == "quota_exceeded"
        assert "1,000" in outcome.error.message
        # Replacing an object counts only what it grows by.
        await world.ok("storage_put_object", world.agent, key="a", content="z" * 900)
        assert await world.code("storage_put_object", world.agent, key="c", content="w" * 101) == "quota_exceeded"
        await world.ok("storage_put_object", world.agent, key="c", content="w" * 100)
        await world.ok("storage_delete_object", world.agent, key="a")
        await world.ok("storage_put_object", world.agent, key="b", content="y" * 600)
        assert await used_bytes(world) == 700
        assert len(await blob_refs(world)) >= 2


# --- isolation --------------------------------------------------------------------------------


async def test_a_tenant_can_neither_read_list_overwrite_nor_sign_urls_for_another_tenants_objects(
    sworld: World,
) -> None:
    mine = await sworld.ok("storage_put_object", sworld.agent, key="secret-plan.txt", content="acme only")
    other = await second_tenant(sworld)
    # Naming acme is denied, whatever the operation.
    for operation, extra in [
        ("storage_get_object", {}),
        ("storage_head_object", {}),
        ("storage_list_objects", {}),
        ("storage_put_object", {"content": "pwned"}),
        ("storage_delete_object", {}),
        ("storage_create_signed_url", {}),
    ]:
        arguments = {"key": "secret-plan.txt", **extra} if operation != "storage_list_objects" else {}
        assert await sworld.code(operation, other, tenant="acme", **arguments) == "permission_denied", operation
    # In its own namespace the key does not exist; writing it there touches nothing of acme's.
    assert await sworld.code("storage_get_object", other, key="secret-plan.txt") == "not_found"
    assert await sworld.code("storage_create_signed_url", other, key="secret-plan.txt") == "not_found"
    assert (await sworld.ok("storage_list_objects", other))["items"] == []
    await sworld.ok("storage_put_object", other, key="secret-plan.txt", content="globex's own")
    got = await sworld.ok("storage_get_object", sworld.agent, key="secret-plan.txt")
    assert (got["content"], got["etag"]) == ("acme only", mine["etag"])
    assert [i["key"] for i in (await sworld.ok("storage_list_objects", sworld.agent))["items"]] == ["secret-plan.txt"]
    # And a URL signed for globex cannot be bent to acme's object.
    url = (await sworld.ok("storage_create_signed_url", other, key="secret-plan.txt"))["url"]
    status, body = await fetch(sworld, url)
    assert (status, body) == (200, b"globex's own")
    if url.startswith(sworld.dispatcher.runtime.settings.public_url):
        status, _ = await fetch(sworld, forge(url, t=sworld.made.tenant.id))
        assert status == 403


# --- killed writes and the sweep --------------------------------------------------------------


async def test_a_write_that_dies_before_commit_leaves_no_object_and_the_sweep_removes_its_blob(
    sworld: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = REGISTRY["storage_put_object"]

    async def write_then_die(call: Call, args: Any) -> Any:
        await original.handler(call, args)
        raise RuntimeError("killed after the blob and the row were written, before commit")

    monkeypatch.setitem(REGISTRY, "storage_put_object", dataclasses.replace(original, handler=write_then_die))
    assert await sworld.code("storage_put_object", sworld.agent, key="ghost.txt", content="boo") == "internal"
    monkeypatch.setitem(REGISTRY, "storage_put_object", original)
    assert await sworld.code("storage_head_object", sworld.agent, key="ghost.txt") == "not_found"
    assert await object_rows(sworld) == 0 and await used_bytes(sworld) == 0
    orphans = await blob_refs(sworld)
    assert len(orphans) == 1
    runtime = sworld.dispatcher.runtime
    young = await sweep(runtime.db, runtime.blobs)
    assert (young.deleted, young.young) == (0, 1)
    assert await blob_refs(sworld) == orphans
    later = datetime.now(UTC) + timedelta(hours=2)
    dry = await sweep(runtime.db, runtime.blobs, now=later, dry_run=True)
    assert dry.deleted == 1 and await blob_refs(sworld) == orphans
    report = await sweep(runtime.db, runtime.blobs, now=later)
    assert report.deleted == 1
    assert await blob_refs(sworld) == []


async def test_the_sweep_removes_replaced_and_deleted_bytes_and_keeps_live_ones(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="keep.txt", content="v1")
    await sworld.ok("storage_put_object", sworld.agent, key="keep.txt", content="v2")
    await sworld.ok("storage_put_object", sworld.agent, key="drop.txt", content="bye")
    await sworld.ok("storage_delete_object", sworld.agent, key="drop.txt")
    assert len(await blob_refs(sworld)) == 3
    runtime = sworld.dispatcher.runtime
    later = datetime.now(UTC) + timedelta(hours=2)
    report = await sweep(runtime.db, runtime.blobs, now=later)
    assert (report.scanned, report.referenced, report.deleted) == (3, 1, 2)
    assert len(await blob_refs(sworld)) == 1
    assert (await sworld.ok("storage_get_object", sworld.agent, key="keep.txt"))["content"] == "v2"


async def test_the_sweep_leaves_blobs_of_tenants_it_does_not_know(sworld: World) -> None:
    async def data() -> AsyncIterator[bytes]:
        yield b"another deployment's bytes"

    await blobs_of(sworld).put("ten_unknown/00/abc", data())
    runtime = sworld.dispatcher.runtime
    later = datetime.now(UTC) + timedelta(hours=2)
    report = await sweep(runtime.db, runtime.blobs, now=later)
    assert (report.foreign, report.deleted) == (1, 0)
    assert await blob_refs(sworld) == ["ten_unknown/00/abc"]


# --- corruption -------------------------------------------------------------------------------


async def damage(world: World, key: str, data: bytes | None) -> None:
    """Replace (or with None, remove) an object's stored bytes behind ScaleMule's back."""
    async with world.dispatcher.runtime.db.transaction() as conn:
        found = await storage.find(conn, tenant_id=world.made.tenant.id, key=key)
    assert found is not None
    blobs = blobs_of(world)
    await blobs.delete(found.blob_ref)
    if data is not None:

        async def body() -> AsyncIterator[bytes]:
            yield data

        await blobs.put(found.blob_ref, body())


async def test_bytes_that_fail_their_sha256_are_reported_as_corruption_never_returned(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="ledger.csv", content="a,b\n1,2\n")
    await damage(sworld, "ledger.csv", b"a,b\n9,9\n")
    outcome = await sworld.call("storage_get_object", sworld.agent, key="ledger.csv")
    assert outcome.error is not None and outcome.error.code == "internal"
    assert "SHA-256" in outcome.error.message and "9,9" not in outcome.error.text
    # A range inside the damaged chunk is refused too, as is the resource and the signed URL.
    assert await sworld.code("storage_get_object", sworld.agent, key="ledger.csv", offset=0, length=2) == "internal"
    resource = await read_resource(sworld, "scalemule://tenants/acme/objects/ledger.csv")
    assert resource.error is not None and resource.error.code == "internal"
    url = (await sworld.ok("storage_create_signed_url", sworld.agent, key="ledger.csv"))["url"]
    if url.startswith(sworld.dispatcher.runtime.settings.public_url):
        status, body = await fetch(sworld, url)
        assert status == 500 and b"9,9" not in body


async def test_missing_or_truncated_bytes_are_reported_as_corruption(sworld: World) -> None:
    data = os.urandom(CHUNK_SIZE + 100)
    encoded = base64.b64encode(data).decode()
    await sworld.ok("storage_put_object", sworld.agent, key="big.bin", content=encoded, encoding="base64")
    await damage(sworld, "big.bin", data[:CHUNK_SIZE])
    # The first chunk is intact and verifies; the second is short.
    first = await sworld.ok("storage_get_object", sworld.agent, key="big.bin", length=10)
    assert base64.b64decode(first["content"]) == data[:10]
    assert await sworld.code("storage_get_object", sworld.agent, key="big.bin", offset=CHUNK_SIZE) == "internal"
    await damage(sworld, "big.bin", None)
    assert await sworld.code("storage_get_object", sworld.agent, key="big.bin", length=10) == "internal"


# --- the resource -----------------------------------------------------------------------------


async def read_resource(world: World, uri: str) -> Any:
    found = REGISTRY["storage_read_object"].resources[0].match(uri)
    assert found is not None
    return await world.dispatcher.call(Invocation("storage_read_object", found, world.agent, "cli", resource=uri))


async def test_the_object_resource_serves_the_bytes_as_a_blob_with_their_content_type(sworld: World) -> None:
    data = os.urandom(1000)
    key = "docs/menü 1.pdf"
    encoded = base64.b64encode(data).decode()
    await sworld.ok("storage_put_object", sworld.agent, key=key, content=encoded, encoding="base64")
    uri = "scalemule://tenants/acme/objects/docs/men%C3%BC%201.pdf"
    server = build_server(sworld.dispatcher, lambda ctx: sworld.agent, "stdio")
    async with Client(server) as client:
        result = await client.read_resource(uri)
    (content,) = result.contents
    assert isinstance(content, types.BlobResourceContents)
    assert base64.b64decode(content.blob) == data and content.mime_type == "application/pdf"
    assert (await read_resource(sworld, "scalemule://tenants/globex/objects/x")).error.code == "permission_denied"


# --- signed URLs ------------------------------------------------------------------------------


async def asgi(app: ASGIApp, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    """One HTTP request to ``app`` in process: (status, headers, body)."""
    parts = urlsplit(url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "root_path": "",
        "query_string": parts.query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8765),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    reply_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], reply_headers, b"".join(m.get("body", b"") for m in sent[1:])


async def fetch(world: World, url: str, method: str = "GET", body: bytes = b"", **headers: str) -> tuple[int, bytes]:
    """Follow a signed URL: ScaleMule's own through its HTTP app, S3's over the network."""
    if url.startswith(world.dispatcher.runtime.settings.public_url):
        status, _, payload = await asgi(build_app(world.dispatcher), method, url, body, headers)
        return status, payload

    def get() -> tuple[int, bytes]:
        request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()

    return await anyio.to_thread.run_sync(get)


def forge(url: str, **changes: str) -> str:
    """``url`` with fields of its token's payload changed and the signature left as it was."""
    token = url.rsplit("/", 1)[1]
    payload = token.split(".")[0]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**body, **changes}, separators=(",", ":")).encode())
    return url.replace(payload, forged.decode().rstrip("="))


async def test_a_signed_get_url_serves_exactly_the_object_and_says_what_it_must_hash_to(sworld: World) -> None:
    data = os.urandom(CHUNK_SIZE + 500)
    encoded = base64.b64encode(data).decode()
    await sworld.ok("storage_put_object", sworld.agent, key="exports/all.bin", content=encoded, encoding="base64")
    signed = await sworld.ok("storage_create_signed_url", sworld.agent, key="exports/all.bin")
    assert signed["method"] == "GET" and signed["size"] == len(data)
    assert signed["sha256"] == hashlib.sha256(data).hexdigest()
    expires = datetime.fromisoformat(signed["expires_at"])
    assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=15)
    status, body = await fetch(sworld, signed["url"])
    assert (status, body) == (200, data)


async def test_a_local_signed_url_serves_ranges_and_heads_and_records_each_read(store: Settings) -> None:
    # Local blobs only: S3 serves its own presigned URLs.
    async with opened(store) as sworld:
        await _ranges_heads_and_records(sworld)


async def _ranges_heads_and_records(sworld: World) -> None:
    data = bytes(range(256)) * 100
    encoded = base64.b64encode(data).decode()
    await sworld.ok("storage_put_object", sworld.agent, key="r.bin", content=encoded, encoding="base64")
    url = (await sworld.ok("storage_create_signed_url", sworld.agent, key="r.bin"))["url"]
    app = build_app(sworld.dispatcher)
    status, headers, body = await asgi(app, "GET", url, headers={"Range": "bytes=100-199"})
    assert (status, body, headers["content-range"]) == (206, data[100:200], f"bytes 100-199/{len(data)}")
    status, headers, body = await asgi(app, "HEAD", url)
    assert (status, body, headers["content-length"]) == (200, b"", str(len(data)))
    assert headers["repr-digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"
    status, _, _ = await asgi(app, "GET", url, headers={"Range": f"bytes={len(data)}-"})
    assert status == 416
    events = (await sworld.ok("audit_query", sworld.owner, tenant="acme", operation="storage_url_get"))["items"]
    assert len(events) == 3 and {e["outcome"] for e in events} == {"ok"}
    assert events[0]["actor"]["name"] == "acme-agent" and events[0]["target"] == "r.bin"


async def test_an_expired_or_tampered_url_is_refused(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="x.txt", content="x")
    url = (await sworld.ok("storage_create_signed_url", sworld.agent, key="x.txt", method="PUT"))["url"]
    token = url.rsplit("/", 1)[1]
    runtime = sworld.dispatcher.runtime
    signer = UrlSigner(runtime.keyring, runtime.settings.data_dir)
    grant = signer.verify(token)
    expired = signer.sign(dataclasses.replace(grant, expires_at=int(datetime.now(UTC).timestamp()) - 1))
    base = url.rsplit("/", 1)[0]
    flipped = token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:]
    for bad in (f"{base}/{expired}", f"{base}/{flipped}", f"{base}/garbage", forge(url, k="other.txt")):
        status, body = await fetch(sworld, bad, "PUT", b"overwritten")
        assert status == 403, body
    assert (await sworld.ok("storage_get_object", sworld.agent, key="x.txt"))["content"] == "x"
    denied = (await sworld.ok("audit_query", sworld.owner, tenant="acme", outcome="denied"))["items"]
    assert any(e["operation"] == "storage_url_put" for e in denied)


async def test_expiry_defaults_to_15_minutes_and_is_at_most_7_days(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="e.txt", content="e")
    week = await sworld.ok("storage_create_signed_url", sworld.agent, key="e.txt", expires_in_seconds=7 * 86400)
    assert datetime.fromisoformat(week["expires_at"]) - datetime.now(UTC) > timedelta(days=6, hours=23)
    too_long = await sworld.code("storage_create_signed_url", sworld.agent, key="e.txt", expires_in_seconds=604801)
    assert too_long == "invalid_argument"


async def test_a_signed_put_url_stores_the_body_with_its_audit_event(sworld: World) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 3)
    signed = await sworld.ok("storage_create_signed_url", sworld.agent, key="uploads/video.mp4", method="PUT")
    status, body = await fetch(sworld, signed["url"], "PUT", data, **{"Content-Type": "video/mp4"})
    assert status == 200, body
    head = await sworld.ok("storage_head_object", sworld.agent, key="uploads/video.mp4")
    assert (head["size"], head["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert head["content_type"] == "video/mp4"
    me = await sworld.ok("whoami", sworld.agent)
    assert head["updated_by"] == me["principal"]["id"]
    events = (await sworld.ok("audit_query", sworld.owner, tenant="acme", operation="storage_url_put"))["items"]
    assert [(e["outcome"], e["target"], e["actor"]["id"]) for e in events] == [
        ("ok", "uploads/video.mp4", me["principal"]["id"])
    ]
    # A PUT URL is not a GET URL, and the other way round.
    status, _ = await fetch(sworld, signed["url"])
    assert status == 403


async def test_a_signed_put_over_the_quota_is_refused_and_stores_nothing(storage_settings: Settings) -> None:
    async with opened(dataclasses.replace(storage_settings, storage_quota_bytes=1000)) as world:
        signed = await world.ok("storage_create_signed_url", world.agent, key="big.bin", method="PUT")
        status, body = await fetch(world, signed["url"], "PUT", b"x" * 1001)
        assert status == 413 and b"quota_exceeded" in body
        assert await world.code("storage_head_object", world.agent, key="big.bin") == "not_found"
        assert await blob_refs(world) == []


async def test_urls_stop_working_when_the_signer_loses_access_or_the_object_changes(sworld: World) -> None:
    made = await sworld.ok("keys_create", sworld.owner, tenant="acme", name="short")
    token = made["token"]
    await sworld.ok("storage_put_object", token, tenant="acme", key="doc.txt", content="v1")
    get_url = (await sworld.ok("storage_create_signed_url", token, tenant="acme", key="doc.txt"))["url"]
    put_url = (await sworld.ok("storage_create_signed_url", token, tenant="acme", key="doc.txt", method="PUT"))["url"]
    local = get_url.startswith(sworld.dispatcher.runtime.settings.public_url)
    if local:
        await sworld.ok("storage_put_object", sworld.agent, key="doc.txt", content="v2")
        status, _ = await fetch(sworld, get_url)
        assert status == 404  # a GET URL is for the version signed
    await sworld.ok("keys_revoke", sworld.owner, tenant="acme", key_id=made["key"]["id"])
    status, _ = await fetch(sworld, put_url, "PUT", b"v3")
    assert status == 403
    assert (await sworld.ok("storage_get_object", sworld.agent, key="doc.txt"))["content"] != "v3"


async def test_a_viewer_may_sign_get_urls_but_not_put_urls(sworld: World) -> None:
    await sworld.ok("storage_put_object", sworld.agent, key="menu.txt", content="soup")
    viewer = await sworld.ok("agents_create", sworld.owner, tenant="acme", name="reader", role="viewer")
    key = await sworld.ok("keys_create", sworld.owner, tenant="acme", name="r", principal_id=viewer["principal"]["id"])
    await sworld.ok("storage_create_signed_url", key["token"], key="menu.txt")
    assert await sworld.code("storage_create_signed_url", key["token"], key="menu.txt", method="PUT") == (
        "permission_denied"
    )
    assert await sworld.code("storage_put_object", key["token"], key="menu.txt", content="x") == "permission_denied"


# --- signed URLs: safe serving, single-use PUTs, bounded records of bad tokens ----------------------

ACTIVE_AND_PASSIVE = {
    "page.html": ("text/html; charset=utf-8", "attachment"),
    "logo.svg": ("image/svg+xml", "attachment"),
    "app.js": ("text/javascript", "attachment"),
    "feed.xml": ("application/xml", "attachment"),
    "photo.png": ("image/png", "inline"),
    "notes.txt": ("text/plain; charset=utf-8", "inline"),
    "data.json": ("application/json", "inline"),
    "report.pdf": ("application/pdf", "inline"),
    "clip.mp4": ("video/mp4", "inline"),
}


async def test_a_signed_get_never_lets_stored_bytes_run_as_the_servers_origin(store: Settings) -> None:
    async with opened(store) as world:
        app = build_app(world.dispatcher)
        for key, (content_type, shown) in ACTIVE_AND_PASSIVE.items():
            payload = "<script>alert(document.cookie)</script>"
            await world.ok("storage_put_object", world.agent, key=key, content=payload, content_type=content_type)
            url = (await world.ok("storage_create_signed_url", world.agent, key=key))["url"]
            status, headers, _ = await asgi(app, "GET", url)
            assert status == 200, key
            assert headers["x-content-type-options"] == "nosniff", key
            assert "sandbox" in headers["content-security-policy"], key
            assert headers["content-disposition"].split(";")[0] == shown, key


async def test_a_signed_put_url_uploads_once_and_a_second_use_is_refused(store: Settings) -> None:
    async with opened(store) as world:
        signed = await world.ok("storage_create_signed_url", world.agent, key="once.txt", method="PUT")
        status, _ = await fetch(world, signed["url"], "PUT", b"first")
        assert status == 200
        status, body = await fetch(world, signed["url"], "PUT", b"second")
        assert status == 403 and json.loads(body)["error"]["code"] == "unauthenticated"
        assert (await world.ok("storage_get_object", world.agent, key="once.txt"))["content"] == "first"


async def test_concurrent_uploads_with_one_put_url_store_exactly_one(store: Settings) -> None:
    async with opened(store) as world:
        signed = await world.ok("storage_create_signed_url", world.agent, key="race.bin", method="PUT")
        statuses: list[int] = []

        async def upload(body: bytes) -> None:
            statuses.append((await fetch(world, signed["url"], "PUT", body))[0])

        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(upload, bytes([i]) * 1000)
        assert sorted(statuses) == [200, 403, 403, 403]


async def test_the_sweep_forgets_used_put_urls_only_once_they_have_expired(store: Settings) -> None:
    async with opened(store) as world:
        runtime = world.dispatcher.runtime
        signed = await world.ok("storage_create_signed_url", world.agent, key="s.txt", method="PUT")
        assert (await fetch(world, signed["url"], "PUT", b"s"))[0] == 200
        assert (await sweep(runtime.db, runtime.blobs)).spent_urls == 0
        later = datetime.fromisoformat(signed["expires_at"]) + timedelta(seconds=1)
        assert (await sweep(runtime.db, runtime.blobs, now=later)).spent_urls == 1
        async with runtime.db.transaction() as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(signed_url_uses))).scalar_one() == 0


async def test_requests_with_bad_signed_url_tokens_are_tallied_not_recorded_one_event_each(store: Settings) -> None:
    async with opened(store) as world:
        probe = StoreProbe(world.dispatcher.runtime)
        app = build_app(world.dispatcher)
        base = world.dispatcher.runtime.settings.public_url
        before = await probe.audit_count()
        for i in range(40):
            status, _, _ = await asgi(app, "GET" if i % 2 else "PUT", f"{base}/blobs/garbage{i}.sig")
            assert status == 403
        # Counted, not appended: at most the buckets of a minute that closed meanwhile were folded.
        assert await probe.audit_count() <= before + 2
        assert await probe.tallied() == 40
        folded = [e for e in await probe.audit_events() if e["operation"].startswith("storage_url_")]
        assert {(e["outcome"], e["chain"], e["args"]["source"]) for e in folded} == {("denied", "-", "127.0.0.1")}


async def test_signed_get_urls_of_either_backend_serve_a_stored_page_as_an_attachment(sworld: World) -> None:
    await sworld.ok(
        "storage_put_object", sworld.agent, key="x.html", content="<script>1</script>", content_type="text/html"
    )
    url = (await sworld.ok("storage_create_signed_url", sworld.agent, key="x.html"))["url"]
    if url.startswith(sworld.dispatcher.runtime.settings.public_url):
        _, headers, _ = await asgi(build_app(sworld.dispatcher), "GET", url)
        disposition = headers["content-disposition"]
    else:

        def get() -> str:
            with urllib.request.urlopen(url, timeout=30) as response:
                return str(response.headers.get("content-disposition", ""))

        disposition = await anyio.to_thread.run_sync(get)
    assert disposition.startswith("attachment;")
