"""HTTP for the benchmarks: servers on free ports, keep-alive clients, JSON-RPC framed as the SDK's
client frames it at 2026-07-28, and load windows that count calls and errors by code."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
from _harness import (
    BARE_SERVER,
    CALL_TIMEOUT,
    CLIENT_INFO,
    PROTOCOL,
    SCALEMULE,
    STARTUP_TIMEOUT,
    BenchError,
    Store,
    clean_env,
)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HttpServer:
    """A server process listening on ``port``; ``url`` is its MCP endpoint."""

    name: str
    process: anyio.abc.Process
    port: int
    token: str | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def http_server(name: str, argv: list[str], env: dict[str, str], port: int, workdir: Path) -> AsyncIterator[Any]:
    """Run ``argv`` until the block ends, once it accepts connections on ``port``.

    Raises:
        BenchError: it exited or did not listen within the startup timeout.
    """
    log = workdir / f"{name}-{port}.log"
    with log.open("w") as out:
        process = await anyio.open_process(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        with anyio.move_on_after(STARTUP_TIMEOUT) as scope:
            while True:  # bounded by move_on_after
                if process.returncode is not None:
                    raise BenchError(f"{name} exited with {process.returncode}: {log.read_text()[-1500:]}")
                try:
                    await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await anyio.sleep(0.05)
        if scope.cancelled_caught:
            raise BenchError(f"{name} did not listen on {port} within {STARTUP_TIMEOUT}s: {log.read_text()[-1500:]}")
        yield process
    finally:
        process.terminate()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def scalemule_http(store: Store, workdir: Path) -> AsyncIterator[HttpServer]:
    """``scalemule serve --transport http`` on ``store`` with every toolset; requests act as its agent."""
    port = free_port()
    env = store.env | {"SCALEMULE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    argv = [SCALEMULE, "serve", "--transport", "http", "--port", str(port), "--toolsets", "all"]
    async with http_server(f"scalemule-http-{store.kind}", argv, env, port, workdir) as process:
        yield HttpServer(f"scalemule ({store.kind})", process, port, store.agent_key)


@asynccontextmanager
async def bare_http(workdir: Path) -> AsyncIterator[HttpServer]:
    """The bare low-level SDK server over stateless streamable HTTP (uvicorn), like ScaleMule's."""
    port = free_port()
    argv = [sys.executable, BARE_SERVER, "lowlevel-http", "--port", str(port)]
    async with http_server("bare-http", argv, clean_env(), port, workdir) as process:
        yield HttpServer("bare Server", process, port, None)


_SSL = ssl.create_default_context()  # one context for every client: building one costs ~0.1 s


def http_client(server: HttpServer) -> httpx2.AsyncClient:
    """A keep-alive HTTP client sending the headers the SDK's client sends at 2026-07-28."""
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": PROTOCOL,
        "mcp-method": "tools/call",
    }
    if server.token is not None:
        headers["authorization"] = f"Bearer {server.token}"
    return httpx2.AsyncClient(headers=headers, timeout=CALL_TIMEOUT, verify=_SSL)


_META = {
    "io.modelcontextprotocol/protocolVersion": PROTOCOL,
    "io.modelcontextprotocol/clientInfo": {"name": CLIENT_INFO.name, "version": CLIENT_INFO.version},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def call_body(tool: str, args: dict[str, Any], request_id: int = 1) -> bytes:
    """A ``tools/call`` request as the SDK's client frames it at 2026-07-28."""
    params = {"name": tool, "arguments": args, "_meta": _META}
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}).encode()


def classify(status: int, payload: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """``(error code or None, structured result)`` of one HTTP ``tools/call`` response."""
    if status != 200:
        return f"http_{status}", None
    try:
        reply = json.loads(payload)
    except ValueError:
        return "unparsable_response", None
    if "error" in reply:
        return f"jsonrpc_{reply['error'].get('code')}", None
    result = reply.get("result") or {}
    if result.get("isError"):
        text = "".join(c.get("text", "") for c in result.get("content", []))
        return text.split(":", 1)[0] or "error", None
    return None, result.get("structuredContent") or {}


async def http_call(client: httpx2.AsyncClient, server: HttpServer, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """One ``tools/call`` over HTTP; returns its structured content.

    Raises:
        BenchError: the call failed.
    """
    reply = await client.post(server.url, content=call_body(tool, args), headers={"mcp-name": tool})
    code, result = classify(reply.status_code, reply.content)
    if code is not None or result is None:
        raise BenchError(f"{server.name}: {tool} failed: {code}: {reply.text[:500]}")
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """What a load window achieved: calls, errors by code, wall time, the server's CPU time."""

    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def rate(self) -> float:
        """Successful calls per second."""
        return (self.calls - sum(self.errors.values())) / self.seconds if self.seconds else 0.0

    def add(self, other: Load) -> None:
        """Accumulate ``other`` into this one."""
        self.calls += other.calls
        self.seconds += other.seconds
        self.cpu += other.cpu
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n


Request = Callable[[int, int], tuple[str, dict[str, Any]]]  # (worker, i) -> (tool, args)


async def http_load(
    server: HttpServer,
    clients: Sequence[httpx2.AsyncClient],
    request: Request,
    *,
    seconds: float | None = None,
    calls_each: int | None = None,
    pid: int | None = None,
) -> Load:
    """Drive ``server`` with one worker per client (keep-alive), for ``seconds`` or ``calls_each`` calls."""
    load = Load()
    deadline = time.perf_counter() + (seconds or 0)

    async def worker(w: int, client: httpx2.AsyncClient) -> None:
        i = 0
        while (calls_each is not None and i < calls_each) or (calls_each is None and time.perf_counter() < deadline):
            tool, args = request(w, i)
            reply = await client.post(server.url, content=call_body(tool, args, i + 1), headers={"mcp-name": tool})
            code, _ = classify(reply.status_code, reply.content)
            load.calls += 1
            if code is not None:
                load.errors[code] = load.errors.get(code, 0) + 1
            i += 1

    cpu0 = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for w, client in enumerate(clients):
            group.start_soon(worker, w, client)
    load.seconds = time.perf_counter() - started
    load.cpu = cpu_seconds(pid) - cpu0 if pid else 0.0
    return load


@asynccontextmanager
async def http_clients(server: HttpServer, n: int) -> AsyncIterator[list[httpx2.AsyncClient]]:
    """``n`` keep-alive clients of ``server``, closed at the end."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(http_client(server)) for _ in range(n)]
