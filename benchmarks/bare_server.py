"""The SDK's own floor: bare MCP servers with no-op tools, the baselines every benchmark divides by.

Run as a child process, over the same transport as the server it is compared with:

- ``lowlevel-stdio``: a low-level ``mcp.server.Server`` (what ScaleMule is built on) over stdio,
  started the way ``scalemule serve`` starts its own;
- ``lowlevel-http --port P``: the same server over stateless streamable HTTP under uvicorn, the way
  ``scalemule serve --transport http`` serves it;
- ``mcpserver-stdio``: the high-level ``MCPServer`` over stdio (the spawn-to-first-``tools/list``
  baseline).

Tools: ``noop`` does nothing; ``blob`` returns ``size`` bytes as base64 text (the floor for moving an
object's bytes through the transport once) and ignores any ``content`` it is given (the floor for
sending them). Over HTTP, ``/blob`` moves raw bytes (the floor beside signed object URLs).
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server import MCPServer, Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TOOLS = [
    types.Tool(name="noop", description="Do nothing.", input_schema={"type": "object"}),
    types.Tool(
        name="blob",
        description="Return `size` bytes as base64 text; ignore `content`.",
        input_schema={"type": "object", "properties": {"size": {"type": "integer"}, "content": {"type": "string"}}},
    ),
]


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    size = int((params.arguments or {}).get("size", 0)) if params.name == "blob" else 0
    text = base64.b64encode(bytes(size)).decode() if size else "ok"
    return types.CallToolResult(content=[types.TextContent(text=text)])


def lowlevel() -> Server[Any]:
    """A low-level server with the two tools, built like ScaleMule's (handlers passed to ``Server``)."""
    return Server("bare", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio() -> None:
    server = lowlevel()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


async def blob_route(request: Request) -> Response:
    """``GET /blob?size=N``: N bytes; ``PUT /blob``: read the body, answer its length."""
    if request.method == "PUT":
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return Response(str(size).encode(), media_type="text/plain")
    return Response(bytes(int(request.query_params.get("size", "0"))), media_type="application/octet-stream")


async def serve_http(port: int) -> None:
    import uvicorn

    # /blob: the floor for moving an object's bytes over the same HTTP stack, beside signed URLs.
    routes = [Route("/blob", blob_route, methods=["GET", "PUT"])]
    app = lowlevel().streamable_http_app(stateless_http=True, host="127.0.0.1", custom_starlette_routes=routes)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    await uvicorn.Server(config).serve()


def serve_mcpserver() -> None:
    server = MCPServer("bare")

    @server.tool()
    def noop() -> str:
        """Do nothing."""
        return "ok"

    server.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=["lowlevel-stdio", "lowlevel-http", "mcpserver-stdio"])
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    if options.mode == "lowlevel-stdio":
        anyio.run(serve_stdio)
    elif options.mode == "lowlevel-http":
        if not options.port:
            parser.error("lowlevel-http needs --port")
        anyio.run(serve_http, options.port)
    else:
        serve_mcpserver()


if __name__ == "__main__":
    sys.exit(main())
