"""The MCP server: tools and resources generated from the registry, every call through dispatch."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.shared.exceptions import MCPError

from scalemule import __version__
from scalemule.core.unit_of_work import network_source
from scalemule.dispatch import Dispatcher, Exposure, Invocation, Outcome, Via, toolsets
from scalemule.operations import REGISTRY, Operation, resource_for
from scalemule.operations.docs import topics
from scalemule.operations.prompts import PROMPTS
from scalemule.surfaces import results, tasks


def task_tools() -> list[str]:
    """The tools that run as server tasks for a task-aware client (declared ``task=True``)."""
    return [op.name for op in REGISTRY.values() if op.task and op.tool]


def instructions(exposure: Exposure) -> str:
    """The server's instructions: what ScaleMule is, how to call it, and what this server serves."""
    chosen = "every toolset" if exposure.toolsets is None else ", ".join(sorted(exposure.toolsets))
    others = [t for t in toolsets() if exposure.toolsets is not None and t not in exposure.toolsets]
    # The default list takes tools from several toolsets: the others are not absent, only incomplete.
    partly = exposure.toolsets is not None and "default" in exposure.toolsets
    more = (
        f" {'More tools in' if partly else 'Not served here'}: {', '.join(others)} (start the server with "
        "--toolsets, or over HTTP send the X-MCP-Toolsets header)."
        if others
        else ""
    )
    return (
        "ScaleMule is the production backend for the app you are building: identity and API keys, "
        "tenants, config and secrets per environment, object storage, background jobs and an audit log. "
        "Start with whoami. Tenant-scoped tools take an optional `tenant` slug; without it they act in "
        "your key's tenant (or your only one). Lists page with `limit` and `cursor` (pass `next_cursor`). "
        "Creates take an optional `idempotency_key`: a retry with the same key replays the first result. "
        "Errors begin with a stable code and say what to do next. "
        "Work that takes longer than a call: jobs_run, or jobs_enqueue, then poll jobs_get. MCP Tasks "
        f"clients get a task handle from {' and '.join(['jobs_run', *task_tools()])}. "
        f"Tools served: {chosen}{' (read-only)' if exposure.read_only else ''}.{more} "
        f"Prompts: {', '.join(PROMPTS)}. Docs: scalemule://docs/{{topic}}."
    )


# How a request's credential is found: stdio uses the process key, HTTP the request's bearer token.
CredentialOf = Callable[[ServerRequestContext[Any, Any]], str | None]
# The toolsets a request chose for itself (HTTP), or None for the server's.
ExposureOf = Callable[[ServerRequestContext[Any, Any]], Exposure | None]


def tool_definition(op: Operation) -> types.Tool:
    """The MCP tool for ``op``: name, title, description, schemas and the four annotations."""
    return types.Tool(
        name=op.name,
        title=op.title,
        description=op.description,
        input_schema=op.input_schema,
        output_schema=op.output_schema,
        annotations=types.ToolAnnotations(
            read_only_hint=op.read_only,
            destructive_hint=op.destructive,
            idempotent_hint=op.idempotent,
            open_world_hint=False,
        ),
    )


def bearer_token(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The token of the HTTP request's ``Authorization: Bearer`` header."""
    request = ctx.request
    header = request.headers.get("authorization", "") if request is not None else ""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def build_server(
    dispatcher: Dispatcher,
    credential_of: CredentialOf,
    transport: str,
    exposure_of: ExposureOf = lambda ctx: None,
) -> Server[Any]:
    """A lowlevel MCP server whose every tool call, resource read and prompt goes through ``dispatcher``."""
    # Each distinct choice of toolsets has its tool list built once.
    tool_lists: dict[Exposure | None, list[types.Tool]] = {}

    def tools_for(chosen: Exposure | None) -> list[types.Tool]:
        if chosen not in tool_lists:
            tool_lists[chosen] = [tool_definition(op) for op in dispatcher.exposed(chosen) if op.tool]
        return tool_lists[chosen]

    async def invoke(
        ctx: ServerRequestContext[Any, Any],
        operation: str,
        arguments: Any,
        resource: str | None = None,
        *,
        via: Via = "tool",
        accepts_task: bool = False,
    ) -> Outcome:
        params = ctx.session.client_params
        client = params.client_info if params is not None else None
        connection = getattr(ctx.session, "_connection", None)
        session_id = getattr(connection, "session_id", None)
        address = None
        if ctx.request is not None:
            session_id = session_id or ctx.request.headers.get("mcp-session-id")
            address = ctx.request.client.host if ctx.request.client is not None else None
        return await dispatcher.call(
            Invocation(
                operation=operation,
                arguments=arguments,
                credential=credential_of(ctx),
                transport=transport,
                client_name=client.name if client else None,
                client_version=client.version if client else None,
                session_id=session_id,
                request_id=None if ctx.request_id is None else str(ctx.request_id),
                resource=resource,
                via="resource" if resource is not None else via,
                exposure=exposure_of(ctx),
                source=None if address is None else network_source(address),
                accepts_task=accepts_task,
            )
        )

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools_for(exposure_of(ctx)))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | dict[str, Any]:
        # Registered as a plain request method (below) so that a task-aware client may get a
        # CreateTaskResult, whose resultType the SDK passes through; every other answer is a CallToolResult.
        aware = tasks.task_aware(ctx)
        outcome = await invoke(ctx, params.name, params.arguments, accepts_task=aware)
        if outcome.error is not None:
            return types.CallToolResult.model_validate(results.error_result(outcome.error))
        assert outcome.result is not None
        if outcome.task:
            # Queued as a server task, committed: the handle now, the result through tasks/get.
            return tasks.created(outcome.result)
        if params.name not in tasks.TASK_TOOLS:
            return types.CallToolResult.model_validate(results.ok_result(outcome.result))
        answer = await as_task(ctx, params, outcome.result)
        return answer if answer.get("resultType") == "task" else types.CallToolResult.model_validate(answer)

    async def as_task(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams, run: dict[str, Any]
    ) -> dict[str, Any]:
        # The job is committed (dispatch returned), so the handle given here always resolves on tasks/get.
        tenant = (params.arguments or {}).get("tenant")
        args = {"task_id": run["job_id"], **({"tenant": tenant} if isinstance(tenant, str) else {})}
        if tasks.task_aware(ctx):
            seen = await invoke(ctx, "tasks_get", args, via="task")
            if seen.error is not None:
                return results.error_result(seen.error)
            assert seen.result is not None
            return tasks.created(seen.result)
        wait = (params.arguments or {}).get("wait_seconds", 20)
        return await tasks.wait_for(
            lambda name, a: invoke(ctx, name, a, via="task"), run["job_id"], args.get("tenant"), float(wait)
        )

    async def task_method(ctx: ServerRequestContext[Any, Any], operation: str, task_id: str) -> dict[str, Any]:
        tasks.require_tasks(ctx)
        outcome = await invoke(ctx, operation, {"task_id": task_id}, via="task")
        if outcome.error is not None:
            raise tasks.protocol_error(outcome.error)
        assert outcome.result is not None
        return tasks.task(outcome.result) if operation == "tasks_get" else {}

    async def get_task(ctx: ServerRequestContext[Any, Any], params: types.GetTaskRequestParams) -> dict[str, Any]:
        return await task_method(ctx, "tasks_get", params.task_id)

    async def cancel_task(ctx: ServerRequestContext[Any, Any], params: types.CancelTaskRequestParams) -> dict[str, Any]:
        return await task_method(ctx, "tasks_cancel", params.task_id)

    async def update_task(ctx: ServerRequestContext[Any, Any], params: types.GetTaskRequestParams) -> dict[str, Any]:
        tasks.require_tasks(ctx)
        raise MCPError(
            code=types.INVALID_PARAMS,
            message=f"task {params.task_id[:64]!r} asks for no input: no ScaleMule task ever does (input_required "
            "is never used). Poll it with tasks/get.",
        )

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(uri=f"scalemule://docs/{t}", name=f"docs/{t}", mime_type="text/markdown")
                for t in topics()
            ]
        )

    async def list_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template=r.template, name=r.name, description=r.description, mime_type=r.mime_type
                )
                for op in REGISTRY.values()
                for r in op.resources
            ]
        )

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        found = resource_for(uri)
        name, args = (found[0].name, found[2]) if found is not None else ("resources_read", {})
        outcome = await invoke(ctx, name, args, resource=uri[:1000])
        if outcome.error is not None:
            raise MCPError(code=types.INVALID_PARAMS, message=outcome.error.text)
        assert found is not None and outcome.result is not None
        resource = found[1]
        if resource.body is None:
            text = json.dumps(outcome.result, ensure_ascii=False, indent=1)
            return types.ReadResourceResult(
                contents=[types.TextResourceContents(uri=uri, mime_type=resource.mime_type, text=text)]
            )
        body = str(outcome.result[resource.body])
        content: types.TextResourceContents | types.BlobResourceContents = (
            # A blob's own content type (an object's) is more precise than the template's.
            types.BlobResourceContents(
                uri=uri, mime_type=str(outcome.result.get("content_type") or resource.mime_type), blob=body
            )
            if resource.blob
            else types.TextResourceContents(uri=uri, mime_type=resource.mime_type, text=body)
        )
        return types.ReadResourceResult(contents=[content])

    async def list_prompts(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        outcome = await invoke(ctx, "prompts_list", {}, via="prompt")
        if outcome.error is not None:
            raise MCPError(code=types.INVALID_PARAMS, message=outcome.error.text)
        assert outcome.result is not None
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(
                    name=p["name"],
                    title=p["title"],
                    description=p["description"],
                    arguments=[types.PromptArgument(**a) for a in p["arguments"]],
                )
                for p in outcome.result["items"]
            ]
        )

    async def get_prompt(
        ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult:
        arguments = {"name": params.name, "arguments": params.arguments or {}}
        outcome = await invoke(ctx, "prompts_get", arguments, via="prompt")
        if outcome.error is not None:
            raise MCPError(code=types.INVALID_PARAMS, message=outcome.error.text)
        assert outcome.result is not None
        message = types.PromptMessage(role="user", content=types.TextContent(text=outcome.result["text"]))
        return types.GetPromptResult(description=outcome.result["description"], messages=[message])

    server: Server[Any] = Server(
        "scalemule",
        version=__version__,
        instructions=instructions(dispatcher.exposure),
        on_list_tools=list_tools,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
    )
    # tools/call is registered as a plain request method so that it may answer a CreateTaskResult; the
    # tasks/* methods and the extension's advertisement are the Tasks extension (surfaces/tasks.py).
    server.add_request_handler("tools/call", types.CallToolRequestParams, call_tool)
    server.add_request_handler("tasks/get", types.GetTaskRequestParams, get_task)
    server.add_request_handler("tasks/cancel", types.CancelTaskRequestParams, cancel_task)
    server.add_request_handler("tasks/update", types.GetTaskRequestParams, update_task)
    server.extensions[tasks.TASKS] = {}
    return server
