"""Streamable HTTP: every request authenticated by its ``Authorization: Bearer`` header."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from scalemule.core import identity
from scalemule.core.errors import Unauthenticated
from scalemule.dispatch import Dispatcher
from scalemule.surfaces.blobs_http import SignedObjects
from scalemule.surfaces.mcp import bearer_token, build_server


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
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "no bearer token", hint="Send 'Authorization: Bearer smk_...' with every request."
                )
            async with self.dispatcher.runtime.db.transaction() as conn:
                await identity.authenticate(conn, token.strip())
        except Unauthenticated as exc:
            await _unauthorized(send, exc)
            return
        await self.app(scope, receive, send)


async def _unauthorized(send: Send, exc: Unauthenticated) -> None:
    body = json.dumps({"error": {"code": exc.code, "message": exc.message, "hint": exc.hint}}).encode()
    challenge = f'Bearer realm="scalemule", error="invalid_token", error_description="{exc.message}"'
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge.encode("latin-1", "replace")),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_app(dispatcher: Dispatcher, *, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving MCP at ``/mcp``; stateless, so replicas can share a load balancer."""
    server = build_server(dispatcher, bearer_token, "http")
    app = server.streamable_http_app(stateless_http=True, host=host)
    app.add_middleware(BearerAuth, dispatcher=dispatcher)
    # Outermost: signed object URLs carry their own credential, so they are answered before BearerAuth.
    app.add_middleware(SignedObjects, dispatcher=dispatcher)
    return app
