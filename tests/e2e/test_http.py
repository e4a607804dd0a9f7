"""Streamable HTTP: every request authenticated by its bearer token, the same tools and audit as stdio."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from scalemule.core import tokens
from scalemule.dispatch import Invocation
from tests.e2e.conftest import Deployment, http_server, mistyped

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url(deployment: Deployment) -> Iterator[str]:
    """One HTTP server for the module's tests."""
    with http_server(deployment) as endpoint:
        yield endpoint


@asynccontextmanager
async def _client(url: str, token: str, name: str, version: str = "1.0") -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        info = types.Implementation(name=name, version=version)
        async with Client(transport, client_info=info, read_timeout_seconds=30) as client:
            yield client


async def test_requests_without_a_live_bearer_token_get_401_with_a_challenge(deployment: Deployment, url: str) -> None:
    async with deployment.beside() as (dispatcher, _):
        made = await dispatcher.call(Invocation("keys_create", {"name": "gone"}, deployment.owner_key, "cli"))
        assert made.result is not None
        revoke = {"key_id": made.result["key"]["id"]}
        assert (await dispatcher.call(Invocation("keys_revoke", revoke, deployment.owner_key, "cli"))).error is None
    refused = {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer"},
        "other scheme": {"Authorization": f"Basic {deployment.agent_key}"},
        "malformed": {"Authorization": "Bearer smk_not-a-key"},
        "mistyped": {"Authorization": f"Bearer {mistyped(deployment.agent_key)}"},
        "unknown": {"Authorization": f"Bearer {tokens.generate()}"},
        "revoked": {"Authorization": f"Bearer {made.result['token']}"},
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        for case, headers in refused.items():
            response = await http.post(url, json=INITIALIZE, headers=ACCEPT | headers)
            assert response.status_code == 401, case
            assert response.headers["www-authenticate"].startswith('Bearer realm="scalemule"'), case
            assert response.json()["error"]["code"] == "unauthenticated", case
        accepted = await http.post(
            url, json=INITIALIZE, headers=ACCEPT | {"Authorization": f"Bearer {deployment.agent_key}"}
        )
        assert accepted.status_code != 401


async def test_an_mcp_client_with_a_bearer_token_calls_tools_and_reads_resources(
    deployment: Deployment, url: str
) -> None:
    resource = f"scalemule://tenants/{deployment.slug}"
    async with _client(url, deployment.agent_key, "http-agent", "7.7") as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        whoami = await client.call_tool("whoami", {})
        denied = await client.call_tool("tenants_create", {"slug": "rogue", "name": "Rogue"})
        read = json.loads((await client.read_resource(resource)).contents[0].text)  # type: ignore[union-attr]
    assert tools["whoami"].annotations is not None and tools["whoami"].output_schema
    assert whoami.structured_content is not None and not whoami.is_error
    assert json.loads(whoami.content[0].text) == whoami.structured_content  # type: ignore[union-attr]
    assert denied.is_error and denied.content[0].text.startswith("permission_denied: ")  # type: ignore[union-attr]
    assert read["tenant"]["slug"] == deployment.slug
    async with deployment.beside() as (_, probe):
        mine = [e for e in await probe.audit_events() if e["client_name"] == "http-agent"]
    assert [(e["operation"], e["outcome"]) for e in mine] == [
        ("whoami", "ok"),
        ("tenants_create", "denied"),
        ("tenants_get", "ok"),
    ]
    assert all((e["transport"], e["client_version"]) == ("http", "7.7") for e in mine)
    assert mine[-1]["target"] == resource
    assert {e["actor_id"] for e in mine} == {whoami.structured_content["principal"]["id"]}


async def test_each_request_acts_as_the_holder_of_its_own_bearer_token(deployment: Deployment, url: str) -> None:
    seen: dict[str, str] = {}

    async def whoami(label: str, token: str) -> None:
        async with _client(url, token, f"http-{label}") as client:
            result = await client.call_tool("whoami", {})
            assert result.structured_content is not None
            seen[label] = result.structured_content["principal"]["kind"]

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(whoami, "owner", deployment.owner_key)
            group.start_soon(whoami, "agent", deployment.agent_key)
    assert seen == {"owner": "user", "agent": "agent"}
