"""``/blobs/<token>``: objects served to holders of a signed URL (GET, HEAD with ranges; PUT).

The token is the credential, so this sits in front of the Bearer middleware. Authorization, the
audit trail and checksum verification happen in ``core.storage_urls``; this adapter speaks HTTP.

Stored bytes are whatever a tenant uploaded, served on the server's own origin: every response says
``nosniff`` and carries a sandboxing content security policy, and only passive types (images, PDF,
plain text, JSON, audio, video, raw bytes) are shown inline; anything a browser would run (HTML, SVG,
XML, scripts, ...) is served as an attachment.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalemule.core import object_rules
from scalemule.core.errors import InvalidArgument, PermissionDenied, ScaleMuleError
from scalemule.core.storage_urls import ObjectUrls
from scalemule.core.unit_of_work import network_source
from scalemule.dispatch import Dispatcher
from scalemule.runtime import BLOBS_PATH

STATUS = {
    "invalid_argument": 400,
    "unauthenticated": 403,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "conflict": 409,
    "failed_precondition": 412,
    "quota_exceeded": 413,
    "rate_limited": 429,
    "internal": 500,
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# On every response: stored bytes never run as the server's origin, whatever their type says.
SAFETY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", b"sandbox")]


def client_source(scope: Scope) -> str:
    """The tallying source of a request: its client address (an IPv6 one cut to its /64)."""
    client = scope.get("client")
    return network_source(client[0] if client else None)


class _Unsatisfiable(Exception):
    pass


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``(start, end)`` a single-range ``Range`` header asks for, or None for the whole object.

    Raises:
        _Unsatisfiable: the range lies outside the object.
    """
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return None  # absent, multi-range or not bytes: serve the whole object (RFC 9110 allows it)
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), size if not last else min(size, int(last) + 1)
    if start >= size or end <= start:
        raise _Unsatisfiable
    return start, end


async def _json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body, ensure_ascii=False).encode()
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *SAFETY_HEADERS,
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": payload})


async def _error(send: Send, error: ScaleMuleError) -> None:
    body = {"error": {"code": error.code, "message": error.message, "hint": error.hint}}
    await _json(send, STATUS.get(error.code, 500), body)


class SignedObjects:
    """ASGI middleware answering ``/blobs/`` itself and passing every other request on."""

    def __init__(self, app: ASGIApp, dispatcher: Dispatcher) -> None:
        self.app = app
        self.urls: ObjectUrls = dispatcher.runtime.object_urls
        self.read_only = dispatcher.exposure.read_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(BLOBS_PATH):
            await self.app(scope, receive, send)
            return
        token = scope["path"][len(BLOBS_PATH) :]
        headers = Headers(scope=scope)
        method = scope["method"]
        try:
            if method in ("GET", "HEAD"):
                await self._get(send, token, headers, client_source(scope), head=method == "HEAD")
            elif method == "PUT":
                await self._put(send, receive, token, headers, client_source(scope))
            else:
                await _json(
                    send,
                    405,
                    {"error": {"code": "invalid_argument", "message": f"{method} is not served here", "hint": None}},
                    [(b"allow", b"GET, HEAD, PUT")],
                )
        except ScaleMuleError as error:
            await _error(send, error)

    async def _get(self, send: Send, token: str, headers: Headers, source: str, *, head: bool) -> None:
        download = await self.urls.open_get(token, client=headers.get("user-agent"), source=source)
        obj = download.object
        name = obj.key.rsplit("/", 1)[-1]
        out = [
            (b"content-type", obj.content_type.encode("latin-1", "replace")),
            (b"etag", f'"{obj.etag}"'.encode()),
            (b"last-modified", format_datetime(download.last_modified, usegmt=True).encode()),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"private, no-cache"),
            (b"repr-digest", f"sha-256=:{base64.b64encode(bytes.fromhex(obj.sha256)).decode()}:".encode()),
            (
                b"content-disposition",
                f"{object_rules.disposition(obj.content_type)}; filename*=UTF-8''{quote(name, safe='')}".encode(),
            ),
            *SAFETY_HEADERS,
        ]
        try:
            wanted = byte_range(headers.get("range"), obj.size)
        except _Unsatisfiable:
            await _json(
                send,
                416,
                {"error": {"code": "invalid_argument", "message": "range not satisfiable", "hint": None}},
                [(b"content-range", f"bytes */{obj.size}".encode())],
            )
            return
        start, end = wanted or (0, obj.size)
        status = 200 if wanted is None else 206
        if wanted is not None:
            out.append((b"content-range", f"bytes {start}-{end - 1}/{obj.size}".encode()))
        out.append((b"content-length", str(end - start).encode()))
        if head:
            await send({"type": "http.response.start", "status": status, "headers": out})
            await send({"type": "http.response.body", "body": b""})
            return
        pieces = download.chunks(start, end).__aiter__()
        first = await anext(pieces, b"")  # verified before the status line: corruption is a clean 500
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        try:
            async for piece in pieces:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        except ScaleMuleError:
            # Headers are gone: end without completing the body, so the client sees a failed transfer
            # (short of Content-Length), never unverified bytes. The failure is logged and audited.
            return
        await send({"type": "http.response.body", "body": b""})

    async def _put(self, send: Send, receive: Receive, token: str, headers: Headers, source: str) -> None:
        length_header = headers.get("content-length")
        if length_header is not None and not length_header.isdigit():
            raise InvalidArgument("Content-Length is not a number", hint="Send the body's size in bytes.")
        stored = await self.urls.put(
            token,
            _body(receive),
            content_type=headers.get("content-type"),
            content_length=None if length_header is None else int(length_header),
            client=headers.get("user-agent"),
            source=source,
            refuse=PermissionDenied(
                "this server runs --read-only and takes no uploads", hint="Upload through a server without it."
            )
            if self.read_only
            else None,
        )
        body = {"key": stored.key, "size": stored.size, "sha256": stored.sha256, "etag": stored.etag}
        await _json(send, 200, body, [(b"etag", f'"{stored.etag}"'.encode())])


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidArgument(
                "the client disconnected before the upload finished; nothing was stored", hint="Upload again."
            )
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
