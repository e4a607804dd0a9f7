"""The official MCP client drives `scalemule serve` over stdio, as Claude or another client would."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from scalemule.dispatch import Exposure, Invocation
from scalemule.operations import REGISTRY
from tests.e2e.conftest import SCALEMULE, Deployment, mistyped

pytestmark = pytest.mark.anyio


def _text(result: Any) -> str:
    return str(result.content[0].text)


async def test_an_agent_lists_tools_calls_them_and_reads_resources_over_stdio(deployment: Deployment) -> None:
    tenant_uri = f"scalemule://tenants/{deployment.slug}"
    recent_uri = f"{tenant_uri}/audit/recent"
    other_uri = "scalemule://tenants/someone-else"
    async with deployment.stdio(deployment.agent_key, name="claude-code", version="2.0.1") as client:
        listed = (await client.list_tools()).tools
        whoami = await client.call_tool("whoami", {})
        denied = await client.call_tool("tenants_create", {"slug": "rogue", "name": "Rogue"})
        invalid = await client.call_tool("keys_create", {"name": "k", "nonsense": 1})
        missing = await client.call_tool("jobs_get", {"job_id": "job_missing"})
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        tenant = json.loads((await client.read_resource(tenant_uri)).contents[0].text)  # type: ignore[union-attr]
        recent = json.loads((await client.read_resource(recent_uri)).contents[0].text)  # type: ignore[union-attr]
        with pytest.raises(MCPError) as refused:
            await client.read_resource(other_uri)
        resources = [str(r.uri) for r in (await client.list_resources()).resources]
        docs = [uri for uri in resources if uri.startswith("scalemule://docs/")]
        doc = (await client.read_resource(docs[0])).contents[0].text if docs else None  # type: ignore[union-attr]

    # tools/list: the default toolsets, each tool with its four annotations and both schemas.
    exposure = Exposure.parse("default")
    assert {tool.name for tool in listed} == {op.name for op in REGISTRY.values() if op.tool and exposure.allows(op)}
    for tool in listed:
        op = REGISTRY[tool.name]
        assert tool.annotations is not None and tool.description
        assert tool.annotations.read_only_hint is op.read_only
        assert tool.annotations.destructive_hint is op.destructive
        assert tool.annotations.idempotent_hint is op.idempotent
        assert tool.annotations.open_world_hint is False
        assert tool.output_schema == op.output_schema and tool.input_schema == op.input_schema

    # A result is structuredContent plus the same JSON as text.
    assert not whoami.is_error and whoami.structured_content is not None
    assert json.loads(_text(whoami)) == whoami.structured_content
    assert whoami.structured_content["tenant"]["slug"] == deployment.slug

    # An error is an isError result whose text starts with the stable code.
    for result, code in ((denied, "permission_denied"), (invalid, "invalid_argument"), (missing, "not_found")):
        assert result.is_error and _text(result).startswith(f"{code}: ")
        assert result.structured_content is not None and result.structured_content["error"]["code"] == code

    # Resources read through the same path.
    assert {"scalemule://tenants/{tenant}", "scalemule://tenants/{tenant}/audit/recent"} <= templates
    assert tenant["tenant"]["slug"] == deployment.slug and tenant["role"] == "developer"
    assert recent["items"][0]["operation"] == "tenants_get" and recent["items"][0]["client"] == "claude-code/2.0.1"
    assert refused.value.error.message.startswith("permission_denied: ")
    if docs:
        assert doc is not None and doc.lstrip().startswith("#")

    # Every call and read was audited once, attributed to the agent and the client it announced.
    async with deployment.beside() as (_, probe):
        mine = [e for e in await probe.audit_events() if e["client_name"] == "claude-code"]
    assert [(e["operation"], e["outcome"], e["target"]) for e in mine] == [
        ("whoami", "ok", None),
        ("tenants_create", "denied", "rogue"),
        ("keys_create", "error", None),
        ("jobs_get", "error", "job_missing"),
        ("tenants_get", "ok", tenant_uri),
        ("audit_query", "ok", recent_uri),
        ("tenants_get", "denied", other_uri),
        *([("docs_get", "ok", docs[0])] if docs else []),
    ]
    agent = whoami.structured_content["principal"]["id"]
    for event in mine:
        assert (event["actor_id"], event["client_version"], event["transport"]) == (agent, "2.0.1", "stdio")
        assert event["on_behalf_of"] == whoami.structured_content["on_behalf_of"] is not None
        assert event["request_id"] is not None


async def test_a_key_revoked_while_the_server_runs_fails_the_next_call(deployment: Deployment) -> None:
    async with deployment.beside() as (dispatcher, _):
        made = await dispatcher.call(Invocation("keys_create", {"name": "short-lived"}, deployment.owner_key, "cli"))
        assert made.result is not None
        async with deployment.stdio(made.result["token"]) as client:
            assert not (await client.call_tool("whoami", {})).is_error
            revoke = {"key_id": made.result["key"]["id"]}
            assert (await dispatcher.call(Invocation("keys_revoke", revoke, deployment.owner_key, "cli"))).error is None
            after = await client.call_tool("whoami", {})
    assert after.is_error and _text(after).startswith("unauthenticated: ")


async def test_the_stdio_server_refuses_to_start_without_a_valid_key(deployment: Deployment) -> None:
    cases = {
        "no key": deployment.env,
        "mistyped key": deployment.env | {"SCALEMULE_API_KEY": mistyped(deployment.agent_key)},
    }
    done: dict[str, Any] = {}

    async def start(name: str, env: dict[str, str]) -> None:
        done[name] = await anyio.run_process([SCALEMULE, "serve"], env=env, check=False, stdin=subprocess.DEVNULL)

    # Independent processes: started together, so the wait is one interpreter start, not two.
    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for name, env in cases.items():
                group.start_soon(start, name, env)
    for name, process in done.items():
        stderr = process.stderr.decode()
        assert process.returncode != 0, name
        assert process.stdout == b"", name  # stdout is the protocol channel: nothing else goes there
        assert "Traceback" not in stderr, name
        assert "scalemule: unauthenticated: " in stderr, (name, stderr)
    assert "SCALEMULE_API_KEY" in done["no key"].stderr.decode()


async def test_the_stdio_server_runs_on_postgresql(postgres_deployment: Deployment) -> None:
    async with postgres_deployment.stdio(postgres_deployment.agent_key, name="pg-client", version="9") as client:
        me = (await client.call_tool("whoami", {})).structured_content
        created = await client.call_tool("agents_create", {"name": "pg-worker", "role": "worker"})
        denied = await client.call_tool("tenants_create", {"slug": "rogue", "name": "Rogue"})
    assert me is not None and me["tenant"]["slug"] == "pgtenant"
    assert not created.is_error and denied.is_error
    async with postgres_deployment.beside() as (dispatcher, probe):
        assert dispatcher.runtime.db.dialect == "postgresql"
        events = [e for e in await probe.audit_events() if e["client_name"] == "pg-client"]
    assert [(e["operation"], e["outcome"]) for e in events] == [
        ("whoami", "ok"),
        ("agents_create", "ok"),
        ("tenants_create", "denied"),
    ]


async def test_prompts_are_listed_and_fetched_through_the_audited_path(deployment: Deployment) -> None:
    async with deployment.stdio(deployment.agent_key, name="prompt-client", version="1") as client:
        listed = (await client.list_prompts()).prompts
        fetched = await client.get_prompt("set_up_app_backend", {"app": "menugen"})
        with pytest.raises(MCPError) as missing_argument:
            await client.get_prompt("set_up_app_backend", {})
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("no_such_prompt", {})
        as_tool = await client.call_tool("prompts_get", {"name": "set_up_app_backend"})

    assert {p.name for p in listed} == {"set_up_app_backend", "ship_config_to_prod", "investigate_agent"}
    setup = next(p for p in listed if p.name == "set_up_app_backend")
    assert setup.title and setup.arguments and setup.arguments[0].name == "app" and setup.arguments[0].required
    (message,) = fetched.messages
    assert message.role == "user" and "menugen" in message.content.text  # type: ignore[union-attr]
    assert missing_argument.value.error.message.startswith("invalid_argument: ")
    assert unknown.value.error.message.startswith("not_found: ")
    # Prompts are not tools.
    assert as_tool.is_error and _text(as_tool).startswith("not_found: ")

    async with deployment.beside() as (_, probe):
        mine = [e for e in await probe.audit_events() if e["client_name"] == "prompt-client"]
    assert [(e["operation"], e["outcome"]) for e in mine] == [
        ("prompts_list", "ok"),
        ("prompts_get", "ok"),
        ("prompts_get", "error"),
        ("prompts_get", "error"),
        ("prompts_get", "error"),
    ]


def _request(request_id: int, arguments: str) -> str:
    return (
        f'{{"jsonrpc":"2.0","id":{request_id},"method":"tools/call",'
        f'"params":{{"name":"whoami","arguments":{{"x":{arguments}}}}}}}'
    )


# Each line, and the JSON-RPC error (code, id) the server must answer it with.
MALFORMED = {
    "a lone surrogate escape": (_request(7, '"\\ud800"'), -32700, 7),
    "nesting of 200 levels": (_request(8, "[" * 200 + "]" * 200), -32700, 8),
    "a 5,000-digit integer": (_request(9, "9" * 5000), -32700, 9),
    "invalid JSON": ('{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{', -32700, None),
    "a batch array": ('[{"jsonrpc":"2.0","id":11,"method":"ping"}]', -32600, None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_line_over_stdio_is_answered_with_a_json_rpc_error_not_left_hanging(
    deployment: Deployment, case: str
) -> None:
    line, code, request_id = MALFORMED[case]
    env = deployment.env | {"SCALEMULE_API_KEY": deployment.agent_key}
    process = await anyio.open_process([SCALEMULE, "serve"], env=env)
    assert process.stdin is not None and process.stdout is not None
    try:
        # The malformed line, then a ping: the ping's answer proves the server read past the bad line.
        await process.stdin.send(f'{line}\n{{"jsonrpc":"2.0","id":99,"method":"ping"}}\n'.encode())
        replies: list[dict[str, Any]] = []
        buffer = b""
        with anyio.fail_after(30):
            while len(replies) < 2:
                buffer += await process.stdout.receive()
                *complete, buffer = buffer.split(b"\n")
                replies += [json.loads(piece) for piece in complete if piece.strip()]
    finally:
        await process.stdin.aclose()
        with anyio.fail_after(30):
            await process.wait()
    refusal, pong = replies
    assert (refusal["id"], refusal["error"]["code"]) == (request_id, code), refusal
    assert pong == {"jsonrpc": "2.0", "id": 99, "result": {}}
