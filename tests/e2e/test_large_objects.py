"""A large object through MCP over stdio: its bytes travel once and come back intact (docs/decisions.md,
"Large results")."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.e2e.conftest import SCALEMULE, Deployment

pytestmark = pytest.mark.anyio

# Past the 1 MiB of text a result repeats (base64 of 4 MiB), well under what a call may carry.
SIZE = 3 << 20
TEXT = ('«menu» "quoted" back\\slash, tab\t and 🍝 on a line\n' * 40_000)[: (3 << 19) + 5]


def _text(result: types.CallToolResult) -> str:
    (block,) = result.content
    assert isinstance(block, types.TextContent)
    return block.text


async def test_a_large_object_round_trips_intact_and_its_text_points_to_the_structured_content(
    deployment: Deployment,
) -> None:
    data = os.urandom(SIZE)
    put_args = {"key": "large/photo.bin", "content": base64.b64encode(data).decode(), "encoding": "base64"}
    async with deployment.stdio(deployment.agent_key) as client:
        put = await client.call_tool("storage_put_object", put_args)
        got = await client.call_tool("storage_get_object", {"key": "large/photo.bin", "max_bytes": SIZE})
        put_text = await client.call_tool("storage_put_object", {"key": "large/notes.txt", "content": TEXT})
        got_text = await client.call_tool("storage_get_object", {"key": "large/notes.txt", "max_bytes": 4 * SIZE})
        small = await client.call_tool("storage_get_object", {"key": "large/photo.bin", "max_bytes": 1024})

    assert not (put.is_error or got.is_error or put_text.is_error or got_text.is_error or small.is_error)
    whole = got.structured_content
    assert whole is not None and whole["encoding"] == "base64" and not whole["truncated"]
    assert base64.b64decode(whole["content"]) == data and whole["sha256"] == hashlib.sha256(data).hexdigest()
    # The bytes are in structuredContent only; the text says so, and carries everything else.
    note = _text(got)
    assert whole["content"] not in note and len(note) < 4096 and "structuredContent" in note.splitlines()[0]
    assert json.loads(note.splitlines()[-1])["sha256"] == whole["sha256"]
    # Text that JSON must escape comes back exactly as it went.
    assert got_text.structured_content is not None and got_text.structured_content["content"] == TEXT
    assert "structuredContent" in _text(got_text).splitlines()[0]
    # An ordinary result is unchanged: structured, and the same JSON as text.
    assert json.loads(_text(small)) == small.structured_content


def _line(request_id: int | None, method: str, params: dict[str, Any]) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message).encode() + b"\n"


async def test_a_large_result_carries_the_object_once_on_the_wire(deployment: Deployment) -> None:
    data = os.urandom(SIZE)
    encoded = base64.b64encode(data).decode()
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "wire", "version": "1"}}
    put = {
        "name": "storage_put_object",
        "arguments": {"key": "large/wire.bin", "content": encoded, "encoding": "base64"},
    }
    get = {"name": "storage_get_object", "arguments": {"key": "large/wire.bin", "max_bytes": SIZE}}
    process = await anyio.open_process(
        [SCALEMULE, "serve"], env=deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    )
    assert process.stdin is not None and process.stdout is not None
    replies: dict[int | None, bytes] = {}
    pending: list[bytes] = []

    async def answer(request_id: int) -> None:
        assert process.stdout is not None
        while request_id not in replies:
            chunk = await process.stdout.receive()
            *complete, rest = chunk.split(b"\n")
            for piece in complete:
                line = b"".join([*pending, piece])
                pending.clear()
                replies[json.loads(line).get("id")] = line
            pending.append(rest)

    try:
        with anyio.fail_after(60):
            await process.stdin.send(_line(1, "initialize", hello) + _line(None, "notifications/initialized", {}))
            await process.stdin.send(_line(2, "tools/call", put))
            await answer(2)  # the object is stored before it is read
            await process.stdin.send(_line(3, "tools/call", get))
            await answer(3)
    finally:
        await process.stdin.aclose()
        with anyio.fail_after(30):
            await process.wait()

    assert json.loads(replies[2])["result"]["isError"] is False
    reply = json.loads(replies[3])["result"]
    assert reply["isError"] is False and base64.b64decode(reply["structuredContent"]["content"]) == data
    # Once: the whole line is the object's base64 and a few hundred characters of envelope and summary.
    assert len(replies[3]) < len(encoded) + 4096
