"""Storage toolset: objects in per-tenant namespaces, read and written in place or through signed URLs."""

from __future__ import annotations

import binascii
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from scalemule.core import object_rules, storage
from scalemule.core.errors import FailedPrecondition, InvalidArgument
from scalemule.core.ids import utcnow
from scalemule.core.pages import decode_cursor, encode_cursor
from scalemule.core.signed_urls import DEFAULT_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS, Grant, new_nonce
from scalemule.core.storage import StoredObject, WriteRequest
from scalemule.operations.base import Call, IdempotencyKey, Result, Sensitive, TenantArgs, TenantPageArgs
from scalemule.operations.registry import Resource, operation

MAX_INLINE_BYTES = object_rules.MAX_INLINE_BYTES
DEFAULT_MAX_BYTES = 64 << 10

# Keys are checked by core.storage.check_key, whose refusal spells out the allowed form.
ObjectKey = Annotated[str, StringConstraints(max_length=4096)]
Etag = Annotated[str, StringConstraints(max_length=64)]
Content = Annotated[str, StringConstraints(max_length=24_000_000), Sensitive()]


class ObjectRef(Result):
    """An object's identity and version."""

    key: str
    size: int
    sha256: str
    etag: str

    @classmethod
    def of(cls, obj: StoredObject) -> ObjectRef:
        """View of ``obj``."""
        return cls(key=obj.key, size=obj.size, sha256=obj.sha256, etag=obj.etag)


class ObjectInfo(ObjectRef):
    """An object's metadata, without its content."""

    content_type: str
    metadata: dict[str, str]
    created_at: datetime
    created_by: str | None
    updated_at: datetime
    updated_by: str | None

    @classmethod
    def of(cls, obj: StoredObject) -> ObjectInfo:
        """View of ``obj``."""
        return cls(
            key=obj.key,
            size=obj.size,
            sha256=obj.sha256,
            etag=obj.etag,
            content_type=obj.content_type,
            metadata=obj.metadata,
            created_at=obj.created_at,
            created_by=obj.created_by,
            updated_at=obj.updated_at,
            updated_by=obj.updated_by,
        )


# --- put -------------------------------------------------------------------------------------


class PutObjectArgs(TenantArgs):
    key: ObjectKey = Field(description="e.g. 'menus/week-1.json'")
    content: Content = Field(description="The bytes, as text or base64.")
    encoding: Literal["text", "base64"] = Field(default="text", description="How content is encoded.")
    content_type: str | None = Field(default=None, max_length=255, description="MIME type.")
    metadata: dict[str, str] = Field(default_factory=dict, description="≤2 KiB")
    if_none_match: bool = Field(default=False, description="Fail if the key exists.")
    if_match: Etag | None = Field(default=None, description="Fail unless the etag is current.")
    idempotency_key: IdempotencyKey | None = None


def _decode(args: PutObjectArgs) -> bytes:
    data = args.content.encode("utf-8") if args.encoding == "text" else decode_base64(args.content)
    if len(data) > MAX_INLINE_BYTES:
        raise InvalidArgument(
            f"content is {len(data):,} bytes, over the {MAX_INLINE_BYTES:,} a call may carry",
            hint="Upload it with storage_create_signed_url(method='PUT') instead.",
        )
    return data


def decode_base64(content: str) -> bytes:
    """The bytes of base64 ``content``: standard or URL-safe alphabet, padding optional, whitespace
    ignored (what encoders commonly produce).

    Raises:
        InvalidArgument: it is not base64.
    """
    # Neither split/join (without whitespace) nor the decoder (given ASCII text) copies the text: a
    # 22 MB argument is read where it lies, never re-encoded to bytes first.
    compact = "".join(content.split())
    try:
        if "-" in compact or "_" in compact:
            compact = compact.translate(_URL_SAFE)
        return binascii.a2b_base64(compact + "=" * (-len(compact) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(
            "content is not valid base64", hint="Send standard base64, or encoding='text' for text."
        ) from None


_URL_SAFE = str.maketrans("-_", "+/")
# Bytes encoded to base64 per step: a multiple of 3, so the pieces' base64 joins into the whole's.
_ENCODE_STEP = 3 << 18


def encode_base64(data: bytearray | bytes) -> list[str]:
    """The base64 of ``data`` in pieces to join: encoded a step at a time, so the whole is never held
    both as base64 bytes and as text (join the pieces once ``data`` is released)."""
    view = memoryview(data)
    return [
        binascii.b2a_base64(view[start : start + _ENCODE_STEP], newline=False).decode("ascii")
        for start in range(0, len(view), _ENCODE_STEP)
    ]


@operation(
    "storage_put_object",
    title="Store an object",
    permission="storage:write",
    toolset="storage",
    destructive=True,
    target="key",
)
async def storage_put_object(call: Call, args: PutObjectArgs) -> ObjectRef:
    """Store text or base64 (≤16 MiB) at a key, replacing any object there.

    if_none_match: create only. if_match: replace that etag only. Bigger: storage_create_signed_url PUT.
    """
    data = _decode(args)
    request = WriteRequest(
        tenant_id=call.tenant_id,
        key=object_rules.check_key(args.key),
        content_type=args.content_type or object_rules.guess_content_type(args.key, text=args.encoding == "text"),
        metadata=args.metadata,
        if_none_match=args.if_none_match,
        if_match=args.if_match,
        writer=call.principal.id,
    )
    quota = call.runtime.settings.storage_quota_bytes
    return ObjectRef.of(await storage.put(call.conn, call.runtime.blobs, request, data, quota=quota))


# --- get / head ------------------------------------------------------------------------------


class KeyArgs(TenantArgs):
    key: ObjectKey = Field(description="Object key.")


class GetObjectArgs(KeyArgs):
    max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, ge=1, le=MAX_INLINE_BYTES, description="Return at most this many."
    )
    offset: int = Field(default=0, ge=0, le=2**62, description="First byte to read.")
    length: int | None = Field(default=None, ge=0, le=2**62, description="Bytes to read.")


class ObjectContent(ObjectRef):
    content_type: str
    encoding: Literal["text", "base64"]
    content: str
    truncated: bool
    next_offset: int | None


def _render(obj: StoredObject, data: bytes, *, cut: bool) -> tuple[Literal["text", "base64"], list[str], int]:
    """The content as text when it is textual UTF-8 (trimming a character split by the cut), else base64
    in pieces (``encode_base64``); returns the encoding, the content's pieces and how many bytes of
    ``data`` they hold."""
    if object_rules.is_textual(obj.content_type):
        for trim in range(4 if cut else 1):
            kept = len(data) - trim
            if kept <= 0 and data:
                break
            try:
                return "text", [data[:kept].decode("utf-8") if trim else data.decode("utf-8")], kept
            except UnicodeDecodeError:
                continue
    return "base64", encode_base64(data), len(data)


@operation(
    "storage_get_object",
    title="Get an object",
    permission="storage:read",
    toolset="storage",
    read_only=True,
    idempotent=True,
    target="key",
)
async def storage_get_object(call: Call, args: GetObjectArgs) -> ObjectContent:
    """Read an object (text if textual, else base64): max_bytes from offset; truncated and next_offset
    say what remains. Metadata only: storage_head_object. Big files: storage_create_signed_url."""
    obj = await storage.head(call.conn, tenant_id=call.tenant_id, key=args.key)
    wanted = storage.check_range(obj, args.offset, args.length)
    end = min(wanted, args.offset + args.max_bytes)
    data = await storage.read(call.runtime.blobs, obj, args.offset, end)
    encoding, pieces, used = _render(obj, data, cut=end < wanted)
    # The bytes go before their text is joined: at most two forms of the object are held at once.
    del data
    content = "".join(pieces)
    del pieces
    end = args.offset + used
    return ObjectContent(
        key=obj.key,
        size=obj.size,
        sha256=obj.sha256,
        etag=obj.etag,
        content_type=obj.content_type,
        encoding=encoding,
        content=content,
        truncated=end < wanted,
        next_offset=end if end < wanted else None,
    )


@operation(
    "storage_head_object",
    title="Get object metadata",
    permission="storage:read",
    toolset="storage",
    read_only=True,
    idempotent=True,
    target="key",
)
async def storage_head_object(call: Call, args: KeyArgs) -> ObjectInfo:
    """Show an object's size, type, sha256, etag, metadata and writers, without content."""
    return ObjectInfo.of(await storage.head(call.conn, tenant_id=call.tenant_id, key=args.key))


class ObjectBlob(ObjectRef):
    content_type: str
    content: str = Field(description="base64")


@operation(
    "storage_read_object",
    title="Read an object",
    permission="storage:read",
    toolset="storage",
    read_only=True,
    idempotent=True,
    target="key",
    tool=False,
    resources=(
        Resource(
            "scalemule://tenants/{tenant}/objects/{+key}",
            "An object's bytes (up to 16 MiB)",
            "application/octet-stream",
            body="content",
            blob=True,
            name="object",
        ),
    ),
)
async def storage_read_object(call: Call, args: KeyArgs) -> ObjectBlob:
    """Read a whole object as a blob resource."""
    obj = await storage.head(call.conn, tenant_id=call.tenant_id, key=args.key)
    if obj.size > MAX_INLINE_BYTES:
        raise FailedPrecondition(
            f"object is {obj.size:,} bytes, too large to read as a resource (at most {MAX_INLINE_BYTES:,})",
            hint="Read ranges with storage_get_object(offset, length), or use storage_create_signed_url.",
        )
    pieces = encode_base64(await storage.read(call.runtime.blobs, obj))
    return ObjectBlob(
        key=obj.key,
        size=obj.size,
        sha256=obj.sha256,
        etag=obj.etag,
        content_type=obj.content_type,
        content="".join(pieces),
    )


# --- list / delete ---------------------------------------------------------------------------


class ListObjectsArgs(TenantPageArgs):
    prefix: ObjectKey = Field(default="", description="Only keys starting with this.")
    delimiter: str | None = Field(default=None, max_length=16, description="'/': one level")


class ObjectItem(Result):
    key: str
    size: int
    content_type: str
    etag: str
    updated_at: datetime


class ObjectsPage(Result):
    items: list[ObjectItem]
    prefixes: list[str]
    next_cursor: str | None


@operation(
    "storage_list_objects",
    title="List objects",
    permission="storage:read",
    toolset="storage",
    read_only=True,
    idempotent=True,
)
async def storage_list_objects(call: Call, args: ListObjectsArgs) -> ObjectsPage:
    """List objects by key under a prefix; with delimiter, sub-levels come back in prefixes."""
    listing = await storage.list_objects(
        call.conn,
        tenant_id=call.tenant_id,
        prefix=args.prefix,
        delimiter=args.delimiter,
        position=decode_cursor(args.cursor),
        limit=args.limit,
    )
    return ObjectsPage(
        items=[
            ObjectItem(key=i.key, size=i.size, content_type=i.content_type, etag=i.etag, updated_at=i.updated_at)
            for i in listing.items
        ],
        prefixes=listing.prefixes,
        next_cursor=None if listing.next_position is None else encode_cursor(listing.next_position),
    )


class DeleteObjectArgs(KeyArgs):
    if_match: Etag | None = Field(default=None, description="Fail unless the etag is current.")


@operation(
    "storage_delete_object",
    title="Delete an object",
    permission="storage:write",
    toolset="storage",
    destructive=True,
    idempotent=True,
    target="key",
)
async def storage_delete_object(call: Call, args: DeleteObjectArgs) -> ObjectRef:
    """Delete an object (with if_match, only that etag)."""
    obj = await storage.delete(call.conn, tenant_id=call.tenant_id, key=args.key, if_match=args.if_match)
    return ObjectRef.of(obj)


# --- signed URLs -----------------------------------------------------------------------------


class SignedUrlArgs(KeyArgs):
    method: Literal["GET", "PUT"] = Field(default="GET", description="GET to download, PUT to upload.")
    expires_in_seconds: int = Field(
        default=DEFAULT_EXPIRY_SECONDS, ge=1, le=MAX_EXPIRY_SECONDS, description="URL lifetime."
    )
    content_type: str | None = Field(default=None, max_length=255, description="PUT only")


class SignedUrl(Result):
    url: str
    method: str
    expires_at: datetime
    sha256: str | None
    size: int | None
    served_by: str | None = Field(description="What must run for url to work; null: the object store.")


@operation(
    "storage_create_signed_url", title="Create a signed URL", permission="storage:read", toolset="storage", target="key"
)
async def storage_create_signed_url(call: Call, args: SignedUrlArgs) -> SignedUrl:
    """Make an expiring URL to GET or PUT an object's bytes directly, so big files skip the conversation
    (default 15 minutes, at most 7 days)."""
    key = object_rules.check_key(args.key)
    expires_at = int((utcnow() + timedelta(seconds=args.expires_in_seconds)).timestamp())
    base = Grant(args.method, call.tenant_id, key, expires_at, call.principal.id, call.key.id if call.key else None)
    if args.method == "PUT":
        call.require("storage:write", doing="sign a PUT URL")
        content_type = None if args.content_type is None else object_rules.check_content_type(args.content_type)
        grant = replace(base, content_type=content_type, nonce=new_nonce())
        return SignedUrl(
            url=call.runtime.signed_url(grant),
            method="PUT",
            expires_at=grant.expires,
            sha256=None,
            size=None,
            served_by=call.runtime.signed_url_server,
        )
    obj = await storage.head(call.conn, tenant_id=call.tenant_id, key=key)
    grant = replace(base, etag=obj.etag)
    direct = await call.runtime.blobs.presign_get(
        obj.blob_ref,
        expires_in=args.expires_in_seconds,
        content_type=obj.content_type,
        filename=key.rsplit("/", 1)[-1],
        disposition=object_rules.disposition(obj.content_type),
    )
    return SignedUrl(
        url=direct or call.runtime.signed_url(grant),
        method="GET",
        expires_at=grant.expires,
        sha256=obj.sha256,
        size=obj.size,
        served_by=None if direct else call.runtime.signed_url_server,
    )
