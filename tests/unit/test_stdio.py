"""The stdio line transport: lines read once, long strings parsed and written around (surfaces.stdio)."""

from __future__ import annotations

import json
import os
from typing import Any

import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from scalemule.surfaces.stdio import SLICE, LineReader, check, frames, parse

pytestmark = pytest.mark.anyio

LONG_TEXT = ('a "quoted" line\\ with é, 🍝 and a tab\t\n' * (SLICE // 30 + 1))[: SLICE + 7]
LONG_PLAIN = "QUJD" * (SLICE // 4 + 3)


def _request(arguments: dict[str, Any], request_id: int = 7) -> bytearray:
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "t", "arguments": arguments}}
    return bytearray(json.dumps(body, ensure_ascii=False).encode())


def _arguments(parsed: object) -> Any:
    assert isinstance(parsed, SessionMessage)
    message = parsed.message
    assert isinstance(message, types.JSONRPCRequest) and message.params is not None
    return message.params["arguments"]


@pytest.mark.parametrize("content", [LONG_PLAIN, LONG_TEXT, "short"], ids=["long-plain", "long-escaped", "short"])
def test_a_line_parses_to_the_same_message_whatever_its_strings(content: str) -> None:
    arguments = {"key": "k", "content": content, "more": [LONG_PLAIN, {"deep": LONG_PLAIN}]}

    assert _arguments(parse(_request(arguments))) == arguments


def test_a_long_string_as_a_key_or_in_a_broken_line_is_read_as_the_parser_reads_it() -> None:
    assert _arguments(parse(_request({LONG_PLAIN: 1}))) == {LONG_PLAIN: 1}
    broken = bytearray(f'{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"x":"{LONG_PLAIN}"'.encode())

    refusal = parse(broken)

    assert isinstance(refusal, types.JSONRPCError) and refusal.error.code == types.PARSE_ERROR
    assert refusal == check(broken.decode())[1]


def test_a_long_string_holding_a_raw_control_character_is_refused_like_any_invalid_json() -> None:
    line = _request({"content": LONG_PLAIN})
    line[line.index(b"QUJD") + 10] = 0x01

    refusal = parse(line)

    assert isinstance(refusal, types.JSONRPCError) and refusal.error.code == types.PARSE_ERROR
    assert refusal == check(line.decode())[1]


def _response(result: dict[str, Any]) -> types.JSONRPCResponse:
    return types.JSONRPCResponse(jsonrpc="2.0", id=5, result=result)


@pytest.mark.parametrize("content", [LONG_PLAIN, LONG_TEXT, "short"], ids=["long-plain", "long-escaped", "short"])
def test_a_reply_is_one_line_of_the_json_the_sdk_would_write(content: str) -> None:
    message = _response({"structuredContent": {"content": content, "list": [LONG_PLAIN]}, "isError": False})

    pieces = list(frames(message))
    written = b"".join(pieces)

    assert written.endswith(b"\n") and written.count(b"\n") == 1
    assert json.loads(written) == json.loads(message.model_dump_json(by_alias=True, exclude_unset=True))
    # A long string is never serialized whole: no piece holds it.
    assert not any(LONG_PLAIN.encode() in piece for piece in pieces)


async def test_lines_are_read_whole_across_reads_and_split_at_newlines(tmp_path: Any) -> None:
    lines = [b'{"a":1}', b"", LONG_PLAIN.encode(), b'{"b":2}']
    path = tmp_path / "input"
    path.write_bytes(b"\n".join(lines) + b"\n" + b"tail-without-newline")
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = LineReader(fd)
        read = [bytes(line) async for line in _all(reader)]
    finally:
        os.close(fd)

    assert read == [*lines, b"tail-without-newline"]


async def _all(reader: LineReader) -> Any:
    while (line := await reader.next()) is not None:
        yield line
