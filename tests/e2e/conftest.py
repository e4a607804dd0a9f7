"""Real processes: `scalemule init` into a fresh store, `scalemule serve` over stdio or HTTP.

Stores are SQLite in a temporary directory, or a fresh PostgreSQL schema that `scalemule init` migrates
itself. Servers are waited for with a bounded poll and stopped when the test ends.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import mcp_types as types
import pytest
import sqlalchemy as sa
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from scalemule.db.engine import create_engine
from scalemule.dispatch import Dispatcher, Exposure
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.surfaces import cli
from tests.conftest import POSTGRES_ADMIN_URL, StoreProbe

SCALEMULE = str(Path(sys.executable).with_name("scalemule"))
STARTUP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


def clean_env(**scalemule: str) -> dict[str, str]:
    """This process's environment without any SCALEMULE_* variable, plus ``scalemule``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEMULE_")}
    return env | scalemule


def run_cli(*args: str | bytes, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``scalemule`` command to completion and capture its output."""
    return subprocess.run(
        [SCALEMULE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass
class Deployment:
    """A store made by ``scalemule init --json`` and the environment that reaches it."""

    env: dict[str, str]
    settings: Settings
    made: dict[str, Any]
    logs: Path

    @property
    def owner_key(self) -> str:
        return str(self.made["owner_key"])

    @property
    def agent_key(self) -> str:
        return str(self.made["agent_key"])

    @property
    def slug(self) -> str:
        return str(self.made["tenant"]["slug"])

    @asynccontextmanager
    async def stdio(
        self, key: str, *serve_args: str, name: str = "e2e-stdio", version: str = "1.0"
    ) -> AsyncIterator[Client]:
        """An MCP client connected to ``scalemule serve`` over stdio, started with ``key``."""
        params = StdioServerParameters(
            command=SCALEMULE, args=["serve", *serve_args], env=self.env | {"SCALEMULE_API_KEY": key}
        )
        info = types.Implementation(name=name, version=version)
        with (self.logs / f"stdio-{secrets.token_hex(4)}.log").open("w") as errlog:
            transport = stdio_client(params, errlog=errlog)
            async with Client(transport, client_info=info, read_timeout_seconds=STARTUP_TIMEOUT) as client:
                yield client

    @asynccontextmanager
    async def beside(self) -> AsyncIterator[tuple[Dispatcher, StoreProbe]]:
        """An in-process dispatcher and probe over the same store, to act and look beside the server."""
        runtime = Runtime.open(self.settings)
        try:
            yield Dispatcher(runtime, Exposure(toolsets=None)), StoreProbe(runtime)
        finally:
            await runtime.close()


def _deploy(tmp: Path, database_url: str | None, slug: str) -> Deployment:
    # `scalemule init` runs in this process (its own subprocess form is tested in test_cli): one
    # interpreter start less per store keeps the suite fast.
    data_dir = tmp / "store"
    env = clean_env(SCALEMULE_DATA_DIR=str(data_dir))
    if database_url is not None:
        env["SCALEMULE_DATABASE_URL"] = database_url
    out = io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), redirect_stdout(out):
        assert cli.main(["init", "--json", "--tenant", slug]) == 0
    logs = tmp / "logs"
    logs.mkdir()
    return Deployment(env, Settings(data_dir=data_dir, database_url=database_url), json.loads(out.getvalue()), logs)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """An initialised SQLite store shared by a module's tests (tenant 'menugen')."""
    return _deploy(tmp_path_factory.mktemp("e2e"), None, "menugen")


async def _schema(action: str, schema: str) -> None:
    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'{action} SCHEMA "{schema}"' + (" CASCADE" if action == "DROP" else "")))
    finally:
        await engine.dispose()


@pytest.fixture
def postgres_deployment(tmp_path: Path, postgres_url: str | None) -> Iterator[Deployment]:
    """An initialised store in a fresh, empty PostgreSQL schema (``scalemule init`` migrates it)."""
    if postgres_url is None:
        pytest.skip(os.environ.get("SCALEMULE_TEST_POSTGRES_SKIP", "PostgreSQL unreachable"))
    schema = f"sm_e2e_{os.getpid()}_{secrets.token_hex(4)}"
    anyio.run(_schema, "CREATE", schema)
    try:
        yield _deploy(tmp_path, f"{POSTGRES_ADMIN_URL}?search_path={schema}", "pgtenant")
    finally:
        anyio.run(_schema, "DROP", schema)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def http_server(deployment: Deployment, *serve_args: str, port: int | None = None) -> Iterator[str]:
    """Run ``scalemule serve --transport http`` until the block ends; yields the MCP endpoint URL."""
    port = port or free_port()
    log_path = deployment.logs / f"http-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [SCALEMULE, "serve", "--transport", "http", "--port", str(port), *serve_args],
            env=deployment.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"the HTTP server exited with {process.returncode}: {log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the HTTP server did not listen within {STARTUP_TIMEOUT}s: {log_path.read_text()}")
                time.sleep(POLL_INTERVAL)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def mistyped(token: str) -> str:
    """``token`` with its last character changed (never to itself)."""
    return token[:-1] + ("x" if token[-1] != "x" else "y")
