"""Run the MCP conformance suite's server scenarios against `scalemule serve --transport http`.

`make conformance` runs this module; tests/e2e/test_conformance.py runs it under pytest. The suite is
installed with npm into ``.conformance/`` (git-ignored) the first time.

The suite's scenarios send no credentials, and ScaleMule answers every request without a bearer token
with 401. Rather than a way to switch authentication off, a small relay in this process adds the
header: it forwards each request unchanged (method, path, Host and Origin included, so the
DNS-rebinding scenario still reaches the server's own check) with ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx2
import uvicorn
from starlette.types import Receive, Scope, Send

# The newest release that runs on Node 20 (later ones call fs.globSync, Node 22+).
SUITE = "@modelcontextprotocol/conformance@0.1.13"
# The server scenarios that need no fixture on the server's side (no particular tool, prompt or resource).
SCENARIOS = ("server-initialize", "ping", "tools-list", "resources-list", "prompts-list", "dns-rebinding-protection")
ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / ".conformance"
SCALEMULE = str(Path(sys.executable).with_name("scalemule"))
STARTUP_TIMEOUT = 30.0
SCENARIO_TIMEOUT = 60.0
# Hop-by-hop headers are the relay's own business; the rest pass through unchanged.
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"authorization", b"te", b"upgrade"}


def unavailable() -> str | None:
    """Why the suite cannot run here (no Node or npm), or None."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed: the conformance suite runs on Node" if missing else None


def install() -> Path:
    """The suite's command, installed into ``.conformance/`` unless the pinned version already is."""
    marker = FOLDER / "installed.txt"
    command = FOLDER / "node_modules" / ".bin" / "conformance"
    if command.exists() and marker.exists() and marker.read_text() == SUITE:
        return command
    FOLDER.mkdir(exist_ok=True)
    subprocess.run(
        ["npm", "install", "--prefix", str(FOLDER), "--no-audit", "--no-fund", "--no-save", SUITE],
        check=True,
        capture_output=True,
        timeout=300,
    )
    marker.write_text(SUITE)
    return command


@dataclass(frozen=True)
class Scenario:
    """One scenario's outcome: passed, and the suite's output to show when it did not."""

    name: str
    passed: bool
    output: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"scalemule serve exited with {process.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listened on port {port} within {STARTUP_TIMEOUT}s") from None
            time.sleep(0.05)


class Relay:
    """An ASGI app forwarding every request to ``upstream`` with a bearer token added."""

    def __init__(self, upstream: str, token: str) -> None:
        self.upstream = upstream
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        headers.append((b"authorization", f"Bearer {self.token}".encode()))
        query = scope.get("query_string", b"").decode()
        url = f"{self.upstream}{scope['path']}" + (f"?{query}" if query else "")
        async with httpx2.AsyncClient(timeout=SCENARIO_TIMEOUT) as client:
            request = client.build_request(scope["method"], url, headers=headers, content=body)
            response = await client.send(request, stream=True)
            try:
                kept = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
                # A stream the server ends early (a GET stream when the server stops) ends here too.
                with contextlib.suppress(httpx2.HTTPError):
                    async for chunk in response.aiter_raw():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()


@contextmanager
def _relay(upstream: str, token: str) -> Iterator[int]:
    port = _free_port()
    config = uvicorn.Config(Relay(upstream, token), host="127.0.0.1", port=port, log_level="critical")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_listening(port, None, Path(os.devnull))
        yield port
    finally:
        # Streams a scenario left open are not waited for: the suite has its answers.
        server.should_exit = server.force_exit = True
        thread.join(timeout=10)


@contextmanager
def served(workdir: Path) -> Iterator[str]:
    """A fresh store served by ``scalemule serve --transport http``; yields the relay's MCP URL."""
    from scalemule.surfaces import cli

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEMULE_")}
    env["SCALEMULE_DATA_DIR"] = str(workdir / "store")
    out = io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), redirect_stdout(out):
        if cli.main(["init", "--json", "--tenant", "conformance"]) != 0:
            raise RuntimeError(f"scalemule init failed: {out.getvalue()}")
    token = str(json.loads(out.getvalue())["owner_key"])
    port = _free_port()
    log = workdir / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [SCALEMULE, "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    try:
        _wait_listening(port, process, log)
        with _relay(f"http://127.0.0.1:{port}", token) as relay_port:
            # The relay listens on a loopback address too: to the server, requests arrive as they were sent.
            yield f"http://localhost:{relay_port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def run(scenarios: tuple[str, ...] = SCENARIOS) -> list[Scenario]:
    """Install the suite if needed and run ``scenarios`` against a fresh server."""
    command = install()
    results: list[Scenario] = []
    with tempfile.TemporaryDirectory(prefix="scalemule-conformance-") as tmp, served(Path(tmp)) as url:
        # The scenarios are independent (a stateless server), so they run at once.
        running = {
            name: subprocess.Popen(
                ["node", str(command), "server", "--url", url, "--scenario", name, "-o", str(Path(tmp) / name)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in scenarios
        }
        for name, process in running.items():
            try:
                output, _ = process.communicate(timeout=SCENARIO_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                output = f"{process.communicate()[0]}\n(no answer within {SCENARIO_TIMEOUT}s)"
            results.append(Scenario(name, process.returncode == 0 and _all_passed(Path(tmp) / name), output))
    return results


def _all_passed(folder: Path) -> bool:
    # The suite writes each scenario's checks as JSON; every one must be SUCCESS (a warning counts too).
    checks: list[dict[str, Any]] = []
    for path in folder.rglob("checks.json"):
        checks += json.loads(path.read_text())
    return bool(checks) and all(check.get("status") == "SUCCESS" for check in checks)


def main() -> int:
    """Print each scenario's outcome; exit 1 when one fails, 0 (with the reason) when Node is absent."""
    reason = unavailable()
    if reason is not None:
        print(f"conformance: skipped ({reason})")
        return 0
    results = run()
    for result in results:
        print(f"{'PASS' if result.passed else 'FAIL'}  {result.name}")
        if not result.passed:
            print(result.output)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
