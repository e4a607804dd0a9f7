"""Signed object URLs against a real ``scalemule serve --transport http`` process."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from scalemule.core.crypto import Keyring
from scalemule.core.signed_urls import UrlSigner

pytestmark = pytest.mark.anyio

SCALEMULE = str(Path(sys.executable).with_name("scalemule"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = await anyio.run_process([SCALEMULE, *args], env=env, check=False)
    result: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0, result
    return result


async def request(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    def send() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body, method=method), timeout=30) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    return await anyio.to_thread.run_sync(send)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """An initialised store and an HTTP server on a free port; yields the environment to reach it."""
    port = free_port()
    env = {
        **os.environ,
        "SCALEMULE_DATA_DIR": str(tmp_path / "store"),
        "SCALEMULE_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    env.pop("SCALEMULE_DATABASE_URL", None)
    env.pop("SCALEMULE_S3_BUCKET", None)
    made = await cli(env, "init", "--json", "--tenant", "shop")
    env["SCALEMULE_API_KEY"] = made["agent_key"]
    process = await anyio.open_process([SCALEMULE, "serve", "--transport", "http", "--port", str(port)], env=env)
    try:
        with anyio.fail_after(30):
            while True:  # bounded by fail_after: the server is up once it accepts connections
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.05)
        yield env
    finally:
        process.terminate()
        with anyio.fail_after(30):
            await process.wait()


async def test_a_signed_put_then_get_url_carries_the_bytes_through_the_http_server(server: dict[str, str]) -> None:
    data = os.urandom(3 << 20)
    put = await cli(server, "call", "storage_create_signed_url", "key=uploads/photo.jpg", "method=PUT")
    status, body = await request(put["url"], "PUT", data)
    assert status == 200, body
    assert json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
    head = await cli(server, "call", "storage_head_object", "key=uploads/photo.jpg")
    assert (head["size"], head["content_type"]) == (len(data), "image/jpeg")
    get = await cli(server, "call", "storage_create_signed_url", "key=uploads/photo.jpg")
    assert get["url"].startswith(server["SCALEMULE_PUBLIC_URL"] + "/blobs/")
    assert await request(get["url"]) == (200, data)


async def test_an_expired_or_tampered_token_is_refused_by_the_http_server(server: dict[str, str]) -> None:
    await cli(server, "call", "storage_put_object", "key=menu.txt", "content=soup of the day")
    url = (await cli(server, "call", "storage_create_signed_url", "key=menu.txt"))["url"]
    assert await request(url) == (200, b"soup of the day")
    base, token = url.rsplit("/", 1)
    data_dir = Path(server["SCALEMULE_DATA_DIR"])
    signer = UrlSigner(Keyring(data_dir), data_dir)
    grant = signer.verify(token)
    expired = signer.sign(dataclasses.replace(grant, expires_at=int(datetime.now(UTC).timestamp()) - 1))
    status, body = await request(f"{base}/{expired}")
    assert status == 403 and json.loads(body)["error"]["code"] == "unauthenticated"
    assert "expired" in json.loads(body)["error"]["message"]
    tampered = token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:]
    status, body = await request(f"{base}/{tampered}")
    assert status == 403 and b"soup" not in body
    # The MCP endpoint itself still wants its bearer token.
    status, _ = await request(server["SCALEMULE_PUBLIC_URL"] + "/mcp", "POST", b"{}")
    assert status == 401
