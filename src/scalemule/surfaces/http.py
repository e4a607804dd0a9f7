"""Streamable HTTP: every request authenticated by its ``Authorization: Bearer`` header.

Requests refused here are recorded through dispatch like any call: a refused credential is tallied
(one audit event per source and minute), an oversized body is an event of the caller's.
"""

from __future__ import annotations

import json
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from mcp.server import ServerRequestContext
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalemule.core.errors import InvalidArgument
from scalemule.core.object_rules import MAX_INLINE_BYTES
from scalemule.dispatch import Dispatcher, ErrorBody, Exposure, Invocation
from scalemule.surfaces.blobs_http import SignedObjects, client_source
from scalemule.surfaces.mcp import bearer_token, build_server

# A storage_put_object call carries up to MAX_INLINE_BYTES as base64 (4 bytes for every 3) plus its
# JSON envelope (key, metadata, protocol fields, escapes): the body limit follows the object limit.
ENVELOPE_BYTES = 1 << 20
MAX_REQUEST_BYTES = 4 * -(-MAX_INLINE_BYTES // 3) + ENVELOPE_BYTES
# JSON-RPC "Invalid Request" (an oversized request) and "Invalid params" (an unknown toolset).
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602


def _invocation(scope: Scope, headers: Headers, arguments: Any = None) -> Invocation:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return Invocation(
        # The tool a 2026-07-28 client names in its routing header, else the request as a whole.
        operation=headers.get("mcp-name") or "mcp_request",
        arguments=arguments,
        credential=token.strip() if scheme.lower() == "bearer" and token.strip() else None,
        transport="http",
        client_name=headers.get("user-agent"),
        source=client_source(scope),
    )


class BearerAuth:
    """Answer 401 with ``WWW-Authenticate`` unless the request carries a valid, live API key.

    Dispatch authenticates the same token again for the call itself, so a key revoked between the
    two checks is still refused.
    """

    def __init__(self, app: ASGIApp, dispatcher: Dispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        invocation = _invocation(scope, Headers(scope=scope), {})
        error = await self.dispatcher.screen(invocation)
        if error is None:
            await self.app(scope, receive, send)
            return
        if invocation.credential is None:
            error = ErrorBody(error.code, "no bearer token", "Send 'Authorization: Bearer smk_...' with every request.")
        await _unauthorized(send, error)


async def _unauthorized(send: Send, error: ErrorBody) -> None:
    body = json.dumps({"error": {"code": error.code, "message": error.message, "hint": error.hint}}).encode()
    challenge = f'Bearer realm="scalemule", error="invalid_token", error_description="{error.message}"'
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode("latin-1", "replace")),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse a request body over ``limit`` bytes with a JSON-RPC error that names the limit and says
    how to send large objects, recorded in the audit log as the caller's.

    Bodies within the limit are read here and handed on whole.
    """

    def __init__(self, app: ASGIApp, dispatcher: Dispatcher, limit: int = MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.dispatcher = dispatcher
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, headers, send, f"{int(declared):,} bytes")
            return
        received: deque[Message] = deque()
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, headers, send, f"over {self.limit:,} bytes")
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.popleft() if received else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, headers: Headers, send: Send, size: str) -> None:
        refusal = InvalidArgument(
            f"the request body is {size}, over the {self.limit:,} bytes a request may carry "
            f"(objects up to {MAX_INLINE_BYTES:,} bytes per storage_put_object call, sent as base64)",
            hint='Upload larger objects with a signed URL: call storage_create_signed_url(method="PUT") '
            "and PUT the bytes to the url it returns.",
        )
        error = await self.dispatcher.screen(_invocation(scope, headers, {"request_size": size}), refusal)
        await _json_rpc_error(send, 413, INVALID_REQUEST, error or ErrorBody.of(refusal))


# Where a request's own choice of toolsets is kept for the MCP handlers (the scope's state).
_CHOSEN = "scalemule.exposure"
_TOOLSET_PATH = "/mcp/x/"


class ToolsetChoice:
    """Let each request choose its toolsets, as the GitHub MCP server does: the ``X-MCP-Toolsets``
    header (``X-MCP-Readonly: true`` for read-only), or the path ``/mcp/x/{toolsets}[/readonly]``, served
    as ``/mcp``. A stateless server so serves different agents different tool lists without a restart;
    the server's ``--read-only`` still holds. An unknown toolset is answered 400 with a JSON-RPC error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        value, read_only = headers.get("x-mcp-toolsets"), headers.get("x-mcp-readonly", "").lower() == "true"
        path: str = scope["path"]
        if path.startswith(_TOOLSET_PATH):
            value, _, rest = path[len(_TOOLSET_PATH) :].partition("/")
            read_only = read_only or rest.rstrip("/") == "readonly"
            scope = {**scope, "path": "/mcp", "raw_path": b"/mcp"}
        if value is not None or read_only:
            try:
                chosen = Exposure.parse(unquote(value or "default"), read_only=read_only)
            except InvalidArgument as exc:
                await _json_rpc_error(send, 400, INVALID_PARAMS, ErrorBody.of(exc))
                return
            scope = {**scope, "state": {**scope.get("state", {}), _CHOSEN: chosen}}
        await self.app(scope, receive, send)


def chosen_exposure(ctx: ServerRequestContext[Any, Any]) -> Exposure | None:
    """The toolsets the HTTP request chose for itself (see ToolsetChoice), or None for the server's."""
    request = ctx.request
    state = request.scope.get("state", {}) if request is not None else {}
    chosen = state.get(_CHOSEN)
    return chosen if isinstance(chosen, Exposure) else None


async def _json_rpc_error(send: Send, status: int, code: int, error: ErrorBody) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": None,  # answered before the body is read: clients match the error to their request
        "error": {
            "code": code,
            "message": error.text,
            "data": {"code": error.code, "message": error.message, "hint": error.hint},
        },
    }
    payload = json.dumps(body, ensure_ascii=False).encode()
    start = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": payload})


class Health:
    """``GET /healthz`` (the process answers) and ``GET /readyz`` (its database and object store do),
    without authentication, so a load balancer or orchestrator can probe every replica.

    They reveal nothing but the status: no version, no store kind, no error text (that goes to the log).
    """

    def __init__(self, app: ASGIApp, dispatcher: Dispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path not in ("/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _json(send, 405, {"status": "method not allowed"}, ((b"allow", b"GET, HEAD"),))
            return
        if path == "/healthz":
            await _json(send, 200, {"status": "ok"})
            return
        checks = await self.dispatcher.runtime.readiness()
        if all(checks.values()):
            await _json(send, 200, {"status": "ok"})
            return
        named = {name: "ok" if fine else "failed" for name, fine in checks.items()}
        await _json(send, 503, {"status": "unavailable", "checks": named})


async def _json(send: Send, status: int, body: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def build_app(dispatcher: Dispatcher, *, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving MCP at ``/mcp``; stateless, so replicas can share a load balancer."""
    server = build_server(dispatcher, bearer_token, "http", chosen_exposure)
    # The SDK's own limit stays above ours, so an oversized request always gets our answer.
    app = server.streamable_http_app(stateless_http=True, host=host, max_request_body_size=MAX_REQUEST_BYTES + 1)
    app.add_middleware(BodyLimit, dispatcher=dispatcher)
    app.add_middleware(BearerAuth, dispatcher=dispatcher)
    app.add_middleware(ToolsetChoice)
    # Outermost: signed object URLs carry their own credential, so they are answered before BearerAuth.
    app.add_middleware(SignedObjects, dispatcher=dispatcher)
    # Probes carry no credential and must answer even when nothing else would.
    app.add_middleware(Health, dispatcher=dispatcher)
    return app


async def serve_http(app: ASGIApp, *, host: str, port: int, before_exit: Callable[[], Awaitable[None]]) -> None:
    """Serve ``app`` with uvicorn until SIGINT or SIGTERM.

    ``before_exit`` runs once the requests in flight have drained: uvicorn then re-raises the signal it
    caught, which ends the process at once, so what must happen on the way out (the server's tasks
    handed back) happens here.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            await before_exit()

    await Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).serve()
