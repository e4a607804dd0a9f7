"""Latency of audited ScaleMule tool calls over stdio against the SDK's floor, on SQLite and PostgreSQL.

The baseline is a bare low-level ``mcp.server.Server`` (what ScaleMule is built on) with a no-op
tool, served over stdio the way ``scalemule serve`` is. Every server is driven by the official MCP
client; one round calls the no-op and then every measured operation on every store, so drift in
machine load hits all alike. Each audited call authenticates the key, resolves the tenant, authorizes,
validates, runs the handler and appends a hash-chained audit event in the same transaction.

Prints p50 and p99 per operation and the p50 ratio to the no-op against the targets.

Usage: ``.venv/bin/python benchmarks/tool_call_latency.py [--quick] [--stores sqlite,postgresql]``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from _harness import Bench, Row, Stdio, Target, bare_stdio, interleave, percentile, run, scalemule_stdio

KIB = "k" * 1024

# (label, tool, arguments for round i, target per store). Targets are the performance issue's.
Args = Callable[[int], dict[str, Any]]
OPERATIONS: list[tuple[str, str, Args, dict[str, float]]] = [
    ("whoami", "whoami", lambda i: {}, {"sqlite": 1.15, "postgresql": 1.6}),
    ("config_get", "config_get", lambda i: {"env": "dev", "key": "bench.read"}, {"sqlite": 1.15}),
    (
        "config_set",
        "config_set",
        lambda i: {"env": "dev", "key": "bench.write", "value": i},
        {"sqlite": 1.4, "postgresql": 2.2},
    ),
    ("1 KiB put", "storage_put_object", lambda i: {"key": "bench/latency-1k", "content": KIB}, {"sqlite": 1.8}),
    ("1 KiB get", "storage_get_object", lambda i: {"key": "bench/latency-1k"}, {"sqlite": 1.3}),
]


def _op(client: Stdio, tool: str, args: Args) -> Any:
    counter = iter(range(1 << 62))
    return lambda: client.call(tool, args(next(counter)))


async def latency(bench: Bench) -> None:
    """Interleave the no-op and every operation that has a target on each store; add the rows."""
    rounds, warmup, budget = bench.size(1000, 300), bench.size(20, 10), bench.seconds(25, 12)
    async with AsyncExitStack() as stack:
        bare = await stack.enter_async_context(bare_stdio(bench.workdir))
        ops = [("no-op", _op(bare, "noop", lambda i: {}))]
        for kind in bench.kinds:
            store = await bench.store(kind)
            server = await stack.enter_async_context(scalemule_stdio(store, bench.workdir))
            await server.call("config_set", {"env": "dev", "key": "bench.read", "value": "menu-reader-large"})
            await server.call("storage_put_object", {"key": "bench/latency-1k", "content": KIB})
            ops += [(f"{kind} {label}", _op(server, tool, args)) for label, tool, args, t in OPERATIONS if kind in t]
        samples = await interleave(ops, rounds, warmup, budget=budget, min_rounds=100)
    n = len(samples["no-op"])
    bench.say(
        f"  stdio, official client: {n} interleaved rounds (at most {rounds}, {budget:g} s) after {warmup} warm-up"
    )
    base50, base99 = percentile(samples["no-op"], 50), percentile(samples["no-op"], 99)
    bench.say(f"  bare low-level Server no-op: p50 {base50 * 1000:.3f} ms, p99 {base99 * 1000:.3f} ms")
    for kind in bench.kinds:
        for label, _, _, targets in OPERATIONS:
            if kind not in targets:
                continue
            got = samples[f"{kind} {label}"]
            p50, p99 = percentile(got, 50), percentile(got, 99)
            figures = (
                f"p50 {p50 * 1000:.2f} vs {base50 * 1000:.2f} ms; "
                f"p99 {p99 * 1000:.2f} vs {base99 * 1000:.2f} ms ({p99 / base99:.2f}x)"
            )
            row = Row(
                f"stdio {label} p50 vs bare Server no-op", kind, figures, p50 / base50, Target("<=", targets[kind])
            )
            bench.add(row)


AREAS = [("latency", latency)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
