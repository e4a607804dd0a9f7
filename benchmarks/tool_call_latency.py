"""Latency of an audited ScaleMule tool call against a bare MCP SDK no-op tool, over stdio.

Both servers run on this machine in this run, each driven by the official MCP client. Calls are
interleaved (one to each server per round) so that drift in machine load hits both sides alike.
Each audited call authenticates the key, resolves the tenant, authorizes, validates, runs the handler
and appends a hash-chained audit event in the same SQLite transaction; the baseline does nothing.

Prints p50 and p99 per operation and the p50 ratio to the baseline (target: at most 1.5). It is a
benchmark, not a test: it exits 0 whatever the ratio, and non-zero only if a call fails.

Usage: ``make bench`` or ``.venv/bin/python benchmarks/tool_call_latency.py [--calls N] [--warmup N]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters

TARGET_RATIO = 1.5

# Audited operations measured on one ScaleMule connection: (label, tool, arguments).
# Add an operation here to measure it against the same baseline.
OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("audited whoami", "whoami", {}),
    ("audited config_get", "config_get", {"env": "dev", "key": "vision.model"}),
    ("audited secrets_reveal", "secrets_reveal", {"env": "dev", "name": "IMAGE_API_KEY"}),
]

BARE_SERVER = '''\
"""A bare MCP SDK server with one no-op tool: the benchmark's baseline."""
from mcp.server import MCPServer

server = MCPServer("bare")


@server.tool()
def noop() -> str:
    """Do nothing."""
    return "ok"


server.run()
'''


def scalemule_executable() -> str:
    """The ``scalemule`` command installed next to this Python."""
    path = Path(sys.executable).parent / ("scalemule.exe" if os.name == "nt" else "scalemule")
    found = str(path) if path.exists() else shutil.which("scalemule")
    if found is None:
        raise SystemExit("scalemule is not installed in this environment: run 'make install' first")
    return found


def _scalemule(env: dict[str, str], *argv: str) -> str:
    done = subprocess.run([scalemule_executable(), *argv], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scalemule {argv[0]} failed: {done.stdout or done.stderr}")
    return done.stdout


def initialise(data_dir: Path) -> str:
    """Create a store in ``data_dir`` with ``scalemule init``, the config value and secret the measured
    operations read, and an admin agent (secrets_reveal needs secrets:reveal) with a tenant-bound key,
    as an agent is normally given; returns that key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEMULE_")}
    env["SCALEMULE_DATA_DIR"] = str(data_dir)
    env["SCALEMULE_API_KEY"] = str(json.loads(_scalemule(env, "init", "--json", "--tenant", "bench"))["owner_key"])
    _scalemule(env, "call", "config_set", "env=dev", "key=vision.model", 'value="menu-reader-large"')
    _scalemule(env, "call", "secrets_set", "env=dev", "name=IMAGE_API_KEY", "value=sk-bench-0000")
    agent = json.loads(_scalemule(env, "call", "agents_create", "name=bench-admin", "role=admin"))
    made = json.loads(_scalemule(env, "call", "keys_create", "name=bench", f"principal_id={agent['principal']['id']}"))
    return str(made["token"])


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def timed(client: Client, tool: str, args: dict[str, Any]) -> float:
    """One call's round trip in milliseconds.

    Raises:
        SystemExit: the call failed (a failing call would measure an error path).
    """
    started = time.perf_counter()
    result = await client.call_tool(tool, args)
    elapsed = (time.perf_counter() - started) * 1000
    if result.is_error:
        text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
        raise SystemExit(f"{tool} failed: {text}")
    return elapsed


async def measure(calls: int, warmup: int, workdir: Path) -> dict[str, list[float]]:
    """Run ``warmup`` then ``calls`` interleaved rounds; returns each label's samples in ms."""
    data_dir = workdir / "data"
    bare_script = workdir / "bare_server.py"
    bare_script.write_text(BARE_SERVER, encoding="utf-8")
    agent_key = initialise(data_dir)
    info = types.Implementation(name="scalemule-bench", version="1.0")
    bare = StdioServerParameters(command=sys.executable, args=[str(bare_script)])
    scalemule = StdioServerParameters(
        command=scalemule_executable(),
        args=["serve"],
        env={"SCALEMULE_API_KEY": agent_key, "SCALEMULE_DATA_DIR": str(data_dir)},
    )
    rounds: list[tuple[str, Client, str, dict[str, Any]]] = []
    samples: dict[str, list[float]] = {}
    async with Client(bare, client_info=info) as bare_client, Client(scalemule, client_info=info) as sm_client:
        rounds.append(("bare MCPServer no-op", bare_client, "noop", {}))
        rounds += [(label, sm_client, tool, args) for label, tool, args in OPERATIONS]
        for _ in range(warmup):
            for _label, client, tool, args in rounds:
                await timed(client, tool, args)
        for label, *_ in rounds:
            samples[label] = []
        for _ in range(calls):
            for label, client, tool, args in rounds:
                samples[label].append(await timed(client, tool, args))
    return samples


def report(samples: dict[str, list[float]], calls: int, warmup: int) -> None:
    """Print p50/p99 per operation and the p50 ratio to the baseline (the first entry)."""
    labels = list(samples)
    baseline = percentile(samples[labels[0]], 50)
    print(f"Tool-call latency over stdio: {calls} calls each after {warmup} warm-up, interleaved")
    print(f"{'operation':<26} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>10}")
    for i, label in enumerate(labels):
        p50, p99 = percentile(samples[label], 50), percentile(samples[label], 99)
        ratio = p50 / baseline
        verdict = "baseline" if i == 0 else ("PASS" if ratio <= TARGET_RATIO else "OVER")
        print(f"{label:<26} {p50:>8.3f} {p99:>8.3f} {ratio:>9.2f}x  {verdict}")
    print(f"target: audited p50 at most {TARGET_RATIO}x the bare no-op p50")


def main() -> int:
    """Parse options, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per operation (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls per operation (default 200)")
    options = parser.parse_args()
    if options.calls < 1 or options.warmup < 0:
        parser.error("--calls must be at least 1 and --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="scalemule-bench-") as workdir:
        samples = anyio.run(measure, options.calls, options.warmup, Path(workdir))
    report(samples, options.calls, options.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
