"""The MCP Tasks extension (``io.modelcontextprotocol/tasks``) on the wire: which requests opted in,
the Task and CreateTaskResult shapes, and waiting for a job on behalf of a client without tasks.

A task-aware client gets a task for ``jobs_run`` (its handler enqueues a job, ``TASK_TOOLS``) and for
every operation declared ``task=True`` (dispatch queues it as a server task: ``Outcome.task``).

The SDK (mcp 2.3) has the 2025-11-25 task types but no 2026-07-28 ``tasks/*`` methods, so the shapes
are written here as the extension's specification gives them (flat ``Result & Task``, ``ttlMs``,
``pollIntervalMs``); the lowlevel server passes a result whose ``resultType`` is an extension's through
unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import MISSING_REQUIRED_CLIENT_CAPABILITY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from scalemule.dispatch import ErrorBody, Outcome
from scalemule.surfaces.results import error_result, ok_result

TASKS = "io.modelcontextprotocol/tasks"
# Tools whose handler enqueues a tenant's job, handed to a task-aware client as a task handle (operations
# declared task=True are the other kind: dispatch queues them as server tasks).
TASK_TOOLS = frozenset({"jobs_run"})
# Waiting for a client without tasks: the first look comes soon (most jobs are short), then backs off.
FIRST_LOOK = 0.05
MAX_LOOK = 1.0

# Runs a task operation through dispatch: (operation, arguments) -> outcome.
Invoke = Callable[[str, dict[str, Any]], Awaitable[Outcome]]


def task_aware(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request carries the Tasks extension in its per-request client capabilities."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS or not ctx.meta:
        return False
    capabilities = ctx.meta.get(types.CLIENT_CAPABILITIES_META_KEY)
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and TASKS in extensions


def require_tasks(ctx: ServerRequestContext[Any, Any]) -> None:
    """Refuse a ``tasks/*`` request from a client that did not declare the extension (the spec's -32021).

    Raises:
        MCPError: the request does not declare ``io.modelcontextprotocol/tasks``.
    """
    if not task_aware(ctx):
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="Missing required client capability",
            data={"requiredCapabilities": {"extensions": {TASKS: {}}}},
        )


def protocol_error(error: ErrorBody) -> MCPError:
    """A refused task method as a JSON-RPC error: -32602 (unknown task, bad or refused request), or
    -32603 for an internal error; ``data`` carries the error contract."""
    code = types.INTERNAL_ERROR if error.code == "internal" else types.INVALID_PARAMS
    return MCPError(
        code=code, message=error.text, data={"code": error.code, "message": error.message, "hint": error.hint}
    )


def tool_result(view: dict[str, Any]) -> dict[str, Any]:
    """The CallToolResult a finished task stands for: a server task's operation result, or jobs_run's
    outcome; a dead job is an error result."""
    outcome = view["outcome"]
    if view.get("operation") is not None:
        return server_result(view)
    if not view["is_error"]:
        return ok_result(outcome)
    job_id = outcome["job_id"]
    return error_result(
        ErrorBody(
            "failed_precondition",
            f"job {job_id} ({outcome['kind']}) is dead after {outcome['attempt']} attempts: {outcome['last_error']}",
            f"Fix the cause, then run it again with jobs_retry(job_id='{job_id}'); details: jobs_get.",
        )
    )


def server_result(view: dict[str, Any]) -> dict[str, Any]:
    """The CallToolResult of a finished server task: what its operation returned, or the error it
    ended with (kept in the job's result, code and hint included), exactly as the tool answers it."""
    outcome, operation = view["outcome"], view["operation"]
    if not view["is_error"]:
        return ok_result(outcome["result"])
    kept = outcome["result"].get("error") if isinstance(outcome["result"], dict) else None
    if isinstance(kept, dict) and isinstance(kept.get("code"), str):
        return error_result(ErrorBody(kept["code"], str(kept.get("message", "")), kept.get("hint")))
    # No error of the operation's own: every run stopped with its server (the lease ran out each time).
    return error_result(
        ErrorBody(
            "internal",
            f"{operation} stopped before it finished, {outcome['attempt']} times: {outcome['last_error']}",
            f"Call {operation} again.",
        )
    )


def task(view: dict[str, Any]) -> dict[str, Any]:
    """A ``tasks_get`` result as the extension's Task, with the tool's result once completed."""
    body: dict[str, Any] = {
        "taskId": view["task_id"],
        "status": view["status"],
        "statusMessage": view["status_message"],
        "createdAt": view["created_at"],
        "lastUpdatedAt": view["last_updated_at"],
        "ttlMs": view["ttl_ms"],
        "pollIntervalMs": view["poll_interval_ms"],
    }
    if view["status"] == "completed":
        body["result"] = tool_result(view)
    return body


def created(view: dict[str, Any]) -> dict[str, Any]:
    """The CreateTaskResult for a new task: the Task itself, discriminated by ``resultType: "task"``."""
    body = task(view)
    body.pop("result", None)  # a handle, never the outcome: that is what tasks/get is for
    return {"resultType": "task", **body}


async def wait_for(invoke: Invoke, job_id: str, tenant: str | None, wait_seconds: float) -> dict[str, Any]:
    """Poll the job (short read transactions through dispatch, tallied) until it finishes or
    ``wait_seconds`` pass; the CallToolResult a client without tasks gets."""
    args: dict[str, Any] = {"task_id": job_id} if tenant is None else {"task_id": job_id, "tenant": tenant}
    look = FIRST_LOOK
    with anyio.move_on_after(wait_seconds):
        while True:
            outcome = await invoke("tasks_get", args)
            if outcome.error is not None:
                return error_result(outcome.error)
            assert outcome.result is not None
            if outcome.result["status"] in ("completed", "cancelled"):
                break
            await anyio.sleep(look)
            look = min(look * 2, MAX_LOOK)
    outcome = await invoke("tasks_get", args)
    if outcome.error is not None:
        return error_result(outcome.error)
    assert outcome.result is not None
    view = outcome.result
    # Cancelled, or still going: where it stands, with the call that follows it.
    return tool_result(view) if view["status"] == "completed" else ok_result(view["outcome"])
