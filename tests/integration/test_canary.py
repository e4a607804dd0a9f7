"""A canary secret set through MCP must never surface anywhere but secrets_reveal."""

from __future__ import annotations

import json
import logging
import os
import secrets as random
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
import sqlalchemy as sa
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from scalemule.db.engine import create_engine
from scalemule.db.tables import metadata
from scalemule.settings import Settings
from tests.conftest import World

pytestmark = pytest.mark.anyio

SCALEMULE = str(Path(sys.executable).with_name("scalemule"))


def _dump(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


async def _all_rows_text(url: str) -> str:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            chunks = []
            for table in metadata.sorted_tables:
                for row in await conn.execute(sa.select(table)):
                    chunks.append(repr(tuple(row)))
            return "\n".join(chunks)
    finally:
        await engine.dispose()


async def test_a_canary_set_over_mcp_appears_only_in_secrets_reveal(tmp_path: Path) -> None:
    canary = "canary-" + random.token_hex(16)
    data_dir = tmp_path / "store"
    env = {**os.environ, "SCALEMULE_DATA_DIR": str(data_dir)}
    made = json.loads((await anyio.run_process([SCALEMULE, "init", "--json", "--tenant", "canary"], env=env)).stdout)
    stderr_path = tmp_path / "server.log"
    outputs: list[str] = []
    with stderr_path.open("w") as errlog:
        params = StdioServerParameters(
            command=SCALEMULE, args=["serve", "--toolsets", "all"], env={**env, "SCALEMULE_API_KEY": made["agent_key"]}
        )
        transport = stdio_client(params, errlog=errlog)
        async with Client(transport, client_info=types.Implementation(name="canary-test", version="1")) as client:
            set_result = await client.call_tool("secrets_set", {"env": "dev", "name": "CANARY", "value": canary})
            outputs.append(_dump(set_result.model_dump()))
            calls: list[tuple[str, dict[str, Any]]] = [
                ("secrets_set", {"env": "dev", "name": "CANARY", "value": canary, "expected_version": 7}),
                ("secrets_set", {"env": "dev", "name": "bad name!", "value": canary}),
                ("secrets_set", {"env": "nope", "name": "CANARY", "value": canary}),
                # What cannot be validated is recorded by name and size: an unknown tool, misspellings.
                ("secrets_put", {"env": "dev", "name": "CANARY", "value": canary}),
                ("secrets_set", {"env": "dev", "name": "CANARY", "Value": canary}),
                ("keys_create", {"name": "k", "token": canary}),
                ("secrets_list", {"env": "dev"}),
                ("secrets_reveal", {"env": "dev", "name": "CANARY"}),
                ("config_diff", {"from_env": "dev", "to_env": "staging"}),
                ("config_promote", {"from_env": "dev", "to_env": "staging"}),
                ("config_promote", {"from_env": "dev", "to_env": "staging", "dry_run": False}),
                ("secrets_list", {"env": "staging"}),
                ("audit_query", {"limit": 200}),
                ("audit_query", {"limit": 200, "response_format": "detailed"}),
                ("audit_verify", {}),
                ("whoami", {}),
            ]
            for name, arguments in calls:
                result = await client.call_tool(name, arguments)
                outputs.append(_dump(result.model_dump()))
            for uri in (
                "scalemule://tenants/canary/config/dev",
                "scalemule://tenants/canary/config/staging",
                "scalemule://tenants/canary/audit/recent",
            ):
                read = await client.read_resource(uri)
                outputs.append(_dump(read.model_dump()))
    export = await anyio.run_process(
        [SCALEMULE, "config", "export", "--tenant", "canary", "--env", "dev", "--api-key", made["agent_key"]],
        env=env,
        check=False,
    )
    assert export.returncode != 0
    outputs += [export.stdout.decode(), export.stderr.decode()]
    for audit_format in ("jsonl", "ocsf"):
        audit_export = await anyio.run_process(
            [SCALEMULE, "audit", "export", "--tenant", "canary", "--format", audit_format], env=env
        )
        assert audit_export.stdout.count(b"\n") > 10
        outputs += [audit_export.stdout.decode(), audit_export.stderr.decode()]
    for text in outputs:
        assert canary not in text
    assert canary not in stderr_path.read_text()
    for path in [*data_dir.iterdir(), *(data_dir / "blobs" / "_audit").rglob("*")]:  # digest objects too
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    assert canary not in await _all_rows_text(Settings(data_dir=data_dir).url)
    owner_export = await anyio.run_process(
        [SCALEMULE, "config", "export", "--tenant", "canary", "--env", "staging", "--api-key", made["owner_key"]],
        env=env,
    )
    assert f"CANARY={canary}" in owner_export.stdout.decode()


async def test_a_canary_never_reaches_rows_or_logs_on_either_database(
    world: World, store: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "canary-" + random.token_hex(16)
    await world.ok("secrets_set", world.agent, env="dev", name="CANARY", value=canary)
    await world.ok("config_promote", world.agent, from_env="dev", to_env="staging", dry_run=False)
    await world.call("secrets_set", world.agent, env="dev", name="CANARY", value=canary, expected_version=9)
    await world.call("secrets_set", world.agent, env="dev", name="x\ny", value=canary)
    assert await world.code("secrets_put", world.agent, env="dev", name="CANARY", value=canary) == "not_found"
    assert await world.code("secrets_set", world.agent, env="dev", name="CANARY", Value=canary) == "invalid_argument"
    assert await world.code("config_set", world.agent, env="dev", key="K", value=1, token=canary) == "invalid_argument"
    await world.ok("secrets_set", world.agent, env="dev", name="CANARY", value=canary + "-2")
    assert canary not in await _all_rows_text(store.url)
    assert canary not in caplog.text
    revealed = await world.ok("secrets_reveal", world.owner, env="staging", name="CANARY")
    assert revealed["value"] == canary
    with anyio.fail_after(5):
        assert canary not in await _all_rows_text(store.url)
