"""MCP over stdin/stdout, answering every line the SDK cannot read instead of dropping it.

The SDK's stdio reader hands a line it cannot parse to the session as an exception, which answers
nothing, so a client waiting on that request hangs until its own timeout. Over HTTP the same bytes get
a JSON-RPC error. Here each line is first checked with the SDK's own parser; a line it refuses is
answered with the error HTTP gives: ``-32700`` (parse error) for text that is not JSON the SDK reads
(invalid JSON, a lone surrogate escape, nesting or numbers beyond its limits), ``-32600`` (invalid
request) for JSON that is not one JSON-RPC message (a batch array, a wrong shape). The error carries
the request's id when a lenient parse can read it, else null. A malformed notification (a method and
no id) is never answered, as JSON-RPC requires; it is logged.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from scalemule.dispatch import Dispatcher
from scalemule.surfaces.mcp import build_server

log = logging.getLogger("scalemule")

_INT64 = range(-(2**63), 2**63)
_MAX_ID_CHARS = 200


def check(line: str) -> tuple[bool, types.JSONRPCError | None]:
    """Whether the SDK can read ``line``, and if not the error to answer it with (None: stay silent)."""
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False)
        unreadable = any(p["type"] == "json_invalid" for p in problems)
        reason = str(problems[0]["msg"]) if problems else "not a JSON-RPC message"
    else:
        return True, None
    body = _lenient(line)
    request_id = _id_of(body)
    if unreadable:
        return False, _error(types.PARSE_ERROR, f"Parse error: {reason}", request_id)
    if isinstance(body, dict) and "method" in body and "id" not in body:
        return False, None
    if isinstance(body, list):
        reason = "a batch (JSON array) is not accepted: send one JSON-RPC message per line"
    else:
        reason = "not a single JSON-RPC 2.0 request, notification or response"
    return False, _error(types.INVALID_REQUEST, f"Invalid request: {reason}", request_id)


def _lenient(line: str) -> Any:
    # Python's parser takes what the SDK's refuses (lone surrogates, deeper nesting) and, with huge
    # integers read as None, numbers of any length: enough to find the id of most refused lines.
    try:
        return json.loads(line, parse_int=lambda text: int(text) if len(text) <= 19 else None)
    except (ValueError, RecursionError):
        return None


def _id_of(body: Any) -> int | str | None:
    value = body.get("id") if isinstance(body, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value in _INT64:
        return value
    if isinstance(value, str) and len(value) <= _MAX_ID_CHARS:
        # A lone surrogate cannot be written back as UTF-8: such an id is unknown, like a missing one.
        return value if value.isascii() or value.encode("utf-8", "replace").decode() == value else None
    return None


def _error(code: int, message: str, request_id: int | str | None) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


class CheckedLines:
    """The lines of ``source`` the SDK can read; every other line is answered on the reply stream."""

    def __init__(self, source: AsyncIterable[str]) -> None:
        self._source = source
        self._replies: Any = None
        self._ready = anyio.Event()

    def answer_on(self, replies: Any) -> None:
        """Send refusals on ``replies`` (the server's write stream) from now on."""
        self._replies = replies
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        async for line in self._source:
            if not line.strip():
                continue
            readable, reply = check(line)
            if readable:
                yield line
                continue
            log.warning("refused an unreadable stdio line of %d characters", len(line))
            if reply is not None:
                await self._ready.wait()
                await self._replies.send(SessionMessage(reply))


def _stdin() -> anyio.AsyncFile[str]:
    # Decoded as the SDK decodes it: UTF-8, invalid bytes replaced.
    binary = os.fdopen(os.dup(0), "rb", buffering=0)
    return anyio.wrap_file(io.TextIOWrapper(io.BufferedReader(binary), encoding="utf-8", errors="replace"))


async def serve_stdio(dispatcher: Dispatcher, api_key: str) -> None:
    """Serve MCP over stdin/stdout as the principal of ``api_key``."""
    server = build_server(dispatcher, lambda ctx: api_key, "stdio")
    lines = CheckedLines(_stdin())
    # The SDK reads lines from any async iterable of text; it is typed as a file.
    async with stdio_server(stdin=cast("anyio.AsyncFile[str]", lines)) as (read, write):
        lines.answer_on(write)
        await server.run(read, write, server.create_initialization_options())
