"""Streamable HTTP: every request authenticated by its bearer token, the same tools and audit as stdio."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from scalemule.core import tokens
from scalemule.core.object_rules import MAX_INLINE_BYTES
from scalemule.dispatch import Dispatcher, Invocation
from scalemule.operations import REGISTRY
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces.http import MAX_REQUEST_BYTES, Health
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


@pytest.fixture(params=["sqlite", "postgresql"])
def any_deployment(request: pytest.FixtureRequest) -> Deployment:
    """The module's SQLite deployment, then a fresh PostgreSQL one."""
    name = "deployment" if request.param == "sqlite" else "postgres_deployment"
    deployment: Deployment = request.getfixturevalue(name)
    return deployment


async def test_requests_with_refused_bearer_tokens_are_tallied_per_source_not_recorded_one_event_each(
    any_deployment: Deployment,
) -> None:
    deployment = any_deployment
    async with deployment.beside() as (_, probe):
        tallied = await probe.tallied()
        before = await probe.audit_count()
    with http_server(deployment) as url:
        async with httpx2.AsyncClient(timeout=30) as http:
            for token in [tokens.generate(), mistyped(deployment.agent_key), "smk_malformed"] * 10:
                response = await http.post(url, json=INITIALIZE, headers=ACCEPT | {"Authorization": f"Bearer {token}"})
                assert response.status_code == 401
    async with deployment.beside() as (_, probe):
        # Counted, not appended: at most the bucket of a minute that closed meanwhile was folded.
        assert await probe.audit_count() <= before + 1
        assert await probe.tallied() == tallied + 30
        folded = [e for e in await probe.audit_events() if e["operation"] == "mcp_request"]
    assert folded and {(e["transport"], e["outcome"], e["chain"]) for e in folded} == {("http", "denied", "-")}
    assert {e["args"]["source"] for e in folded} == {"127.0.0.1"}


async def test_a_put_of_the_documented_16_mib_passes_over_http(deployment: Deployment, url: str) -> None:
    data = os.urandom(MAX_INLINE_BYTES)
    arguments = {"key": "big/16mib.bin", "content": base64.b64encode(data).decode(), "encoding": "base64"}
    async with _client(url, deployment.agent_key, "big-put") as client:
        result = await client.call_tool("storage_put_object", arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None and result.structured_content["size"] == MAX_INLINE_BYTES


async def test_a_body_over_the_limit_gets_a_json_rpc_error_naming_it_and_signed_put_urls_and_is_audited(
    deployment: Deployment, url: str
) -> None:
    body = b"x" * (MAX_REQUEST_BYTES + 1)
    headers = ACCEPT | {"Authorization": f"Bearer {deployment.agent_key}", "Mcp-Name": "storage_put_object"}
    async with httpx2.AsyncClient(timeout=60) as http:
        response = await http.post(url, content=body, headers=headers)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == -32600 and error["data"]["code"] == "invalid_argument"
    assert f"{MAX_REQUEST_BYTES:,}" in error["message"]
    assert 'storage_create_signed_url(method="PUT")' in error["data"]["hint"]
    async with deployment.beside() as (_, probe):
        events = [e for e in await probe.audit_events() if e["error_code"] == "invalid_argument"]
    refused = [e for e in events if e["operation"] == "storage_put_object" and e["transport"] == "http"]
    assert refused and refused[-1]["actor_name"] == f"{deployment.slug}-agent"


@asynccontextmanager
async def _chosen_client(url: str, token: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    auth = {"Authorization": f"Bearer {token}", **headers}
    async with httpx2.AsyncClient(headers=auth, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        info = types.Implementation(name="chooser", version="1")
        async with Client(transport, client_info=info, read_timeout_seconds=30) as client:
            yield client


async def test_each_request_chooses_its_toolsets_by_header_or_path(deployment: Deployment, url: str) -> None:
    base = url.removesuffix("/mcp")
    choices = {
        "server default": (url, {}),
        "header": (url, {"X-MCP-Toolsets": "audit,worker"}),
        "path": (f"{base}/mcp/x/audit", {}),
        "read-only path": (f"{base}/mcp/x/default,config/readonly", {}),
    }
    listed: dict[str, set[str]] = {}
    for label, (endpoint, headers) in choices.items():
        async with _chosen_client(endpoint, deployment.agent_key, headers) as client:
            listed[label] = {t.name for t in (await client.list_tools()).tools}
            if label == "path":
                refused = await client.call_tool("whoami", {})
                allowed = await client.call_tool("audit_query", {"limit": 1})

    def toolset(*names: str) -> set[str]:
        return {op.name for op in REGISTRY.values() if op.tool and op.toolset in names}

    assert "whoami" in listed["server default"] and "audit_query" not in listed["server default"]
    assert listed["header"] == toolset("audit", "worker")
    assert listed["path"] == toolset("audit")
    assert "config_history" in listed["read-only path"] and "config_set" not in listed["read-only path"]
    refusal = str(refused.content[0].text)  # type: ignore[union-attr]
    assert refused.is_error and refusal.startswith("permission_denied: ") and "X-MCP-Toolsets" in refusal
    assert not allowed.is_error


async def test_an_unknown_toolset_is_answered_400_with_a_suggestion(deployment: Deployment, url: str) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        headers = {**ACCEPT, "Authorization": f"Bearer {deployment.agent_key}", "X-MCP-Toolsets": "identiy"}
        response = await http.post(url, json=INITIALIZE, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == -32602 and error["data"]["code"] == "invalid_argument"
    assert "Did you mean 'identity'?" in error["data"]["hint"]


# --- Probes -------------------------------------------------------------------------------------------


async def test_health_and_readiness_answer_without_credentials_and_reveal_nothing_else(url: str) -> None:
    base = url.removesuffix("/mcp")
    async with httpx2.AsyncClient(timeout=30) as http:
        for path in ("/healthz", "/readyz"):
            response = await http.get(base + path)
            assert (response.status_code, response.json()) == (200, {"status": "ok"}), path
            assert "www-authenticate" not in response.headers
        assert (await http.post(base + "/healthz")).status_code == 405


class _Unreachable:
    """A blob store whose every call fails, as one behind a broken network would."""

    kind = "broken"

    async def read(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        raise OSError("no route to host")

    async def close(self) -> None:
        return None


async def _probe(app: Any, path: str) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


async def test_readiness_is_503_naming_only_which_store_failed(tmp_path: Path) -> None:
    async def never_reached(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("probes are answered before anything else")

    unreachable = Settings(data_dir=tmp_path, database_url="postgresql://scalemule@127.0.0.1:1/nothing")
    runtime = Runtime.open(unreachable)
    try:
        status, body = await _probe(Health(never_reached, Dispatcher(runtime)), "/readyz")
        assert (status, body) == (503, {"status": "unavailable", "checks": {"database": "failed", "storage": "ok"}})
        assert (await _probe(Health(never_reached, Dispatcher(runtime)), "/healthz")) == (200, {"status": "ok"})
    finally:
        await runtime.close()
    reachable = Runtime.open(Settings(data_dir=tmp_path))
    broken = dataclasses.replace(reachable, blobs=_Unreachable())  # type: ignore[arg-type]
    try:
        status, body = await _probe(Health(never_reached, Dispatcher(broken)), "/readyz")
        assert (status, body) == (503, {"status": "unavailable", "checks": {"database": "ok", "storage": "failed"}})
    finally:
        await reachable.close()


async def test_an_http_server_signs_object_urls_for_the_port_it_listens_on(deployment: Deployment, url: str) -> None:
    base = url.removesuffix("/mcp")
    async with _client(url + "/x/storage", deployment.agent_key, "signer") as client:
        put = await client.call_tool("storage_put_object", {"key": "signed/port.txt", "content": "served here"})
        assert not put.is_error
        signed = await client.call_tool("storage_create_signed_url", {"key": "signed/port.txt"})
    assert signed.structured_content is not None and not signed.is_error
    assert signed.structured_content["url"].startswith(f"{base}/blobs/")
    assert base in signed.structured_content["served_by"]
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.get(signed.structured_content["url"])
    assert (response.status_code, response.text) == (200, "served here")
