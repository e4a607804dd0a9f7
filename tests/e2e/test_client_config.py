"""The client configuration ``scalemule init`` prints works as pasted: another directory, an empty PATH.

On SQLite and on PostgreSQL: the printed ``mcpServers`` entry is started exactly as printed by the
official MCP client, and whoami, secrets_set, storage_put_object and a signed-URL GET (served by
``scalemule serve --transport http`` on the same store) all succeed through it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from scalemule.settings import Settings
from tests.conftest import POSTGRES_ADMIN_URL
from tests.e2e.conftest import SCALEMULE, STARTUP_TIMEOUT, Deployment, _schema, clean_env, free_port, http_server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None) -> Iterator[dict[str, str]]:
    """The SCALEMULE_* settings of a fresh store (nothing made in it yet)."""
    env = {"SCALEMULE_DATA_DIR": str(tmp_path / "store")}
    if request.param == "sqlite":
        yield env
        return
    if postgres_url is None:
        pytest.skip(os.environ.get("SCALEMULE_TEST_POSTGRES_SKIP", "PostgreSQL unreachable"))
    schema = f"sm_cfg_{os.getpid()}_{secrets.token_hex(4)}"
    anyio.run(_schema, "CREATE", schema)
    try:
        yield env | {"SCALEMULE_DATABASE_URL": f"{POSTGRES_ADMIN_URL}?search_path={schema}"}
    finally:
        anyio.run(_schema, "DROP", schema)


def _structured(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def _use(server: dict[str, Any], elsewhere: Path) -> tuple[dict[str, Any], bytes]:
    params = StdioServerParameters(command=server["command"], args=server["args"], env=server["env"], cwd=elsewhere)
    with (elsewhere / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=STARTUP_TIMEOUT) as client:
            me = _structured(await client.call_tool("whoami", {}))
            _structured(await client.call_tool("secrets_set", {"env": "dev", "name": "TOKEN", "value": "t0ken"}))
            put = {"key": "menus/today.txt", "content": "soup of the day"}
            _structured(await client.call_tool("storage_put_object", put))
            signed = _structured(await client.call_tool("storage_create_signed_url", {"key": "menus/today.txt"}))

    def fetch() -> bytes:
        with urllib.request.urlopen(signed["url"], timeout=30) as reply:
            return bytes(reply.read())

    return me, await anyio.to_thread.run_sync(fetch)


def test_the_printed_configuration_runs_from_another_directory_with_an_empty_path(
    store_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    settings = store_env | {"SCALEMULE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    done = subprocess.run(
        [SCALEMULE, "init", "--json", "--tenant", "cfg"],
        env=clean_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    server = json.loads(done.stdout)["mcp_json"]["mcpServers"]["scalemule"]
    assert Path(server["command"]).is_absolute() and Path(server["env"]["SCALEMULE_DATA_DIR"]).is_absolute()
    assert server["env"] == settings | {
        "SCALEMULE_API_KEY": server["env"]["SCALEMULE_API_KEY"],
        "SCALEMULE_DATA_DIR": str(Path(settings["SCALEMULE_DATA_DIR"]).resolve()),
    }
    elsewhere = tmp_path / "client"
    elsewhere.mkdir()
    # Exactly as printed: the client passes this environment and nothing else (PATH empty).
    server["env"] = dict(server["env"]) | {"PATH": ""}
    logs = tmp_path / "logs"
    logs.mkdir()
    beside = Deployment(clean_env(**settings), Settings(), {}, logs)
    with http_server(beside, port=port):
        me, body = anyio.run(_use, server, elsewhere)
    assert me["tenant"]["slug"] == "cfg" and me["principal"]["kind"] == "agent"
    assert body == b"soup of the day"
    # Nothing was written under the client's own working directory.
    assert sorted(p.name for p in elsewhere.iterdir()) == ["stderr.log"]
