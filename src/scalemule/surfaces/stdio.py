"""MCP over stdin/stdout: ScaleMule's own line transport under the SDK's server loop.

Two things the SDK's ``stdio_server`` does not do are done here.

Every line is answered. The SDK's reader hands a line it cannot parse to the session as an exception,
which answers nothing, so a client waiting on that request hangs until its own timeout. Over HTTP the
same bytes get a JSON-RPC error. Here a line the SDK's parser refuses is answered with the error HTTP
gives: ``-32700`` (parse error) for text that is not JSON the SDK reads (invalid JSON, a lone surrogate
escape, nesting or numbers beyond its limits), ``-32600`` (invalid request) for JSON that is not one
JSON-RPC message (a batch array, a wrong shape). The error carries the request's id when a lenient
parse can read it, else null. A malformed notification (a method and no id) is never answered, as
JSON-RPC requires; it is logged.

A message is held in memory about once. The SDK's transport keeps a line, a parse of it, a serialized
reply, that reply with its newline and its encoded bytes: for a 16 MiB object, several copies of 22 MB
at once. Here a line is read into one buffer and parsed once, the buffer released before the call runs;
a reply is written in pieces, any string longer than ``SLICE`` characters (an object's content) in
slices straight from the result, so no whole copy of it is made (docs/decisions.md, "Large results").
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from scalemule.dispatch import Dispatcher
from scalemule.surfaces.mcp import build_server

log = logging.getLogger("scalemule")

_INT64 = range(-(2**63), 2**63)
_MAX_ID_CHARS = 200
# Bytes asked of stdin per read.
READ_SIZE = 1 << 20
# Strings longer than this many characters are written in slices of this size, never serialized whole.
SLICE = 1 << 20

Incoming = MemoryObjectSendStream[SessionMessage | Exception]
Outgoing = MemoryObjectSendStream[SessionMessage]


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


def parse(line: bytearray) -> SessionMessage | types.JSONRPCError | None:
    """The message on ``line``; else the error that answers it, or None for a line left unanswered."""
    if len(line) > SLICE:
        message = _parse_around_long_strings(line)
        if message is not None:
            return message
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValidationError:
        pass
    # Decoded as the SDK decodes stdin (invalid UTF-8 replaced), then read or refused as it would be.
    text = line.decode("utf-8", "replace")
    readable, reply = check(text)
    if readable:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(text, by_name=False))
    log.warning("refused an unreadable stdio line of %d bytes", len(line))
    return reply


# What a string's bytes cannot hold to be decoded as they lie: an escape, or a control character.
_NOT_PLAIN = re.compile(rb"[\x00-\x1f\\]")
_SPACE = b" \t\r\n"
# Past this many quotes a line is not searched for long strings: it is read by the parser as it is,
# so a line of many short strings costs no long search.
_MAX_QUOTES = 10_000


def _parse_around_long_strings(line: bytearray) -> SessionMessage | None:
    """Parse ``line`` with each long plain string value (no escapes, over ``SLICE`` bytes) cut out and
    decoded straight from the line, then put back in the message: the JSON parser, which holds a
    string's bytes twice while it reads it, sees only the short rest. None when the line has no such
    string, or the rest does not parse: it is then read whole, and refused as it would be."""
    spans = _long_plain_strings(line)
    if not spans:
        return None
    view = memoryview(line)
    nonce = secrets.token_hex(8)
    rest: list[bytes | memoryview] = []
    values: dict[str, str] = {}
    position = 0
    for start, end in spans:
        token = f"@{nonce}:{len(values)}@"
        try:
            values[token] = str(view[start:end], "utf-8")
        except UnicodeDecodeError:
            return None
        rest += [view[position:start], token.encode()]
        position = end
    rest.append(view[position:])
    try:
        message = types.jsonrpc_message_adapter.validate_json(b"".join(rest), by_name=False)
    except ValidationError:
        return None
    body = getattr(message, "params", None) if hasattr(message, "method") else getattr(message, "result", None)
    return SessionMessage(message) if _put_back(body, values) == len(values) else None


def _long_plain_strings(line: bytearray) -> list[tuple[int, int]]:
    # (start, end) of each string value longer than SLICE bytes with neither an escape nor a control
    # character: what can be decoded as it lies. Keys (followed by a colon) are left to the parser.
    found: list[tuple[int, int]] = []
    position = 0
    quotes = 0
    while (opening := line.find(b'"', position)) >= 0:
        closing = line.find(b'"', opening + 1)
        while closing >= 0 and _escaped(line, closing):
            closing = line.find(b'"', closing + 1)
            quotes += 1
        quotes += 2
        if closing < 0 or quotes > _MAX_QUOTES:
            return []  # unterminated, or text full of quotes (a JSON document as text): parsed whole
        after = closing + 1
        while after < len(line) and line[after] in _SPACE:
            after += 1
        long = closing - opening - 1 > SLICE and line[after : after + 1] != b":"
        if long and _NOT_PLAIN.search(line, opening + 1, closing) is None:
            found.append((opening + 1, closing))
        position = closing + 1
    return found


def _escaped(line: bytearray, index: int) -> bool:
    # Whether the character at ``index`` follows an odd run of backslashes.
    run = 0
    while index - run - 1 >= 0 and line[index - run - 1] == 0x5C:
        run += 1
    return run % 2 == 1


def _put_back(value: Any, values: dict[str, str]) -> int:
    # Replace, in place, each string that is a token of ``values`` by its value; returns how many.
    count = 0
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and item in values:
                value[key] = values[item]
                count += 1
            else:
                count += _put_back(item, values)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str) and item in values:
                value[index] = values[item]
                count += 1
            else:
                count += _put_back(item, values)
    return count


class LineReader:
    """Newline-delimited lines read from a file descriptor, each into one growing buffer.

    A line that ends the data read so far (the usual case: a client writes a message and waits) is
    handed over in the buffer it was read into, so not even a 22 MB line is copied.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._ended = False

    async def next(self) -> bytearray | None:
        """The next line without its newline, or None at the end of input."""
        scanned = 0
        while True:
            buffer = self._buffer
            cut = buffer.find(b"\n", scanned)
            if cut >= 0:
                if cut + 1 == len(buffer):
                    del buffer[cut:]
                    self._buffer = bytearray()
                    return buffer
                line = buffer[:cut]
                del buffer[: cut + 1]  # cheap: a bytearray drops its front without moving the rest
                return line
            if self._ended:
                self._buffer = bytearray()
                return buffer or None
            scanned = len(buffer)  # a newline can only be in what comes next
            # Abandoned on cancellation: a read of a pipe nobody writes to would otherwise hold shutdown.
            chunk = await anyio.to_thread.run_sync(os.read, self._fd, READ_SIZE, abandon_on_cancel=True)
            if chunk:
                buffer += chunk
            else:
                self._ended = True


def frames(message: types.JSONRPCMessage) -> Iterator[bytes]:
    """``message`` as one line of JSON, in pieces: any string longer than ``SLICE`` characters in its
    result is encoded a slice at a time rather than serialized whole with the rest."""
    result = getattr(message, "result", None)
    if not _has_long(result):
        yield message.__pydantic_serializer__.to_json(message, by_alias=True, exclude_unset=True) + b"\n"
        return
    slots: list[str] = []
    nonce = secrets.token_hex(8)
    swapped = _swap_long(result, slots, nonce)
    head = message.model_copy(update={"result": swapped})
    text = head.__pydantic_serializer__.to_json(head, by_alias=True, exclude_unset=True)
    parts = re.split(rb'"@' + nonce.encode() + rb':(\d+)@"', text)
    for index, part in enumerate(parts):
        if index % 2 == 0:
            yield part
            continue
        value = slots[int(part)]
        yield b'"'
        for start in range(0, len(value), SLICE):
            yield json.dumps(value[start : start + SLICE], ensure_ascii=False)[1:-1].encode("utf-8")
        yield b'"'
    yield b"\n"


def _has_long(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if len(item) > SLICE:
                return True
        elif isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return False


def _swap_long(value: Any, slots: list[str], nonce: str) -> Any:
    # A copy of ``value`` where each long string is a placeholder naming its slot; short parts are shared.
    if isinstance(value, str):
        if len(value) <= SLICE:
            return value
        slots.append(value)
        return f"@{nonce}:{len(slots) - 1}@"
    if isinstance(value, dict):
        return {key: _swap_long(item, slots, nonce) for key, item in value.items()}
    if isinstance(value, list):
        return [_swap_long(item, slots, nonce) for item in value]
    return value


def _write_message(fd: int, message: types.JSONRPCMessage) -> None:
    for piece in frames(message):
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]


async def _read(fd: int, incoming: Incoming, replies: Outgoing) -> None:
    reader = LineReader(fd)
    async with incoming, replies:
        while True:
            line = await reader.next()
            if line is None:
                return
            if not line or line.isspace():
                continue
            parsed = parse(line)
            del line  # the message holds what it needs: the line's buffer goes before the call runs
            if isinstance(parsed, SessionMessage):
                await incoming.send(parsed)
            elif parsed is not None:
                await replies.send(SessionMessage(parsed))


async def _write(fd: int, outgoing: MemoryObjectReceiveStream[SessionMessage]) -> None:
    async with outgoing:
        async for message in outgoing:
            try:
                await anyio.to_thread.run_sync(_write_message, fd, message.message)
            except OSError as exc:  # the client went away: nothing more can be said to it
                log.warning("stdout closed: %s", exc)
                return


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[MemoryObjectReceiveStream[SessionMessage | Exception], Outgoing]]:
    """The read and write streams of an MCP session over this process's stdin and stdout.

    While it is open, file descriptor 1 points at stderr, so stray output (a library's print) cannot
    corrupt the protocol; the protocol is written to a private duplicate of the original stdout.
    """
    stdin = os.dup(0)
    stdout = os.dup(1)
    os.dup2(2, 1)
    incoming, read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write, outgoing = anyio.create_memory_object_stream[SessionMessage](0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read, stdin, incoming, write.clone())
            tg.start_soon(_write, stdout, outgoing)
            yield read, write
    finally:
        os.dup2(stdout, 1)
        os.close(stdout)
        os.close(stdin)


async def serve_stdio(dispatcher: Dispatcher, api_key: str) -> None:
    """Serve MCP over stdin/stdout as the principal of ``api_key``."""
    server = build_server(dispatcher, lambda ctx: api_key, "stdio")
    async with stdio_streams() as (read, write):
        await server.run(read, write, server.create_initialization_options())
