"""Spawn to first ``tools/list``: ``scalemule serve`` against a bare high-level ``MCPServer``, over stdio.

Each round starts both servers with the official client (a fresh process, the client's connection
set-up, then ``tools/list``) and stops them; rounds alternate baseline and subject so drift in machine
load hits both. The baseline is the
SDK's high-level ``MCPServer`` with one no-op tool, as the performance issue states it.

The judged figure is wall time, as a client waits it (stopping the server included). On a shared
machine it also holds time spent waiting for a core, so an info row gives the CPU time each server used
until it had answered ``tools/list``: the work startup does, whatever the load.

Usage: ``.venv/bin/python benchmarks/startup.py [--quick]``.
"""

from __future__ import annotations

import sys
from typing import Any

from _harness import Bench, BenchError, Row, Target, bare_stdio, cpu_seconds, interleave, median, run, scalemule_stdio

TARGET = 1.3


async def _first_list(server: Any, cpu: list[float]) -> None:
    async with server as connected:
        tools = await connected.client.list_tools()
        cpu.append(cpu_seconds(connected.pid))
        if not tools.tools:
            raise BenchError(f"{connected.name}: tools/list returned no tools")


async def startup(bench: Bench) -> None:
    """Interleaved spawns of each server; the ratio of median spawn-to-tools/list times."""
    store = await bench.store("sqlite")
    cpu: dict[str, list[float]] = {"bare": [], "scalemule": []}
    ops = [
        ("bare MCPServer", lambda: _first_list(bare_stdio(bench.workdir, "mcpserver-stdio"), cpu["bare"])),
        ("scalemule serve", lambda: _first_list(scalemule_stdio(store, bench.workdir), cpu["scalemule"])),
    ]
    # No warm-up round: earlier spawns in the run (or this one's first) warm the disk cache for both alike.
    samples = await interleave(ops, bench.size(8, 3), 0, budget=bench.seconds(15, 6), min_rounds=3)
    mine, floor = median(samples["scalemule serve"]), median(samples["bare MCPServer"])
    figures = f"{mine * 1000:.0f} vs {floor * 1000:.0f} ms (median of {len(samples['bare MCPServer'])} spawns each)"
    bench.add(Row("spawn to first tools/list vs bare MCPServer", "sqlite", figures, mine / floor, Target("<=", TARGET)))
    mine, floor = median(cpu["scalemule"]), median(cpu["bare"])
    figures = f"{mine * 1000:.0f} vs {floor * 1000:.0f} ms of CPU (user + system) until tools/list was answered"
    bench.add(Row("server CPU from spawn to tools/list vs bare MCPServer", "sqlite", figures, mine / floor, None))


AREAS = [("startup", startup)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
