"""Throughput of ScaleMule over stateless streamable HTTP with 16 keep-alive clients, against the SDK's floor.

The baseline is a bare low-level ``mcp.server.Server`` no-op served over stateless streamable HTTP by
uvicorn, as ``scalemule serve --transport http`` serves ScaleMule. Sixteen clients, each on its own
keep-alive connection, send ``tools/call`` requests framed as the SDK's client frames them at protocol
2026-07-28 (``_meta`` with protocol version and client capabilities; ``MCP-Protocol-Version``,
``Mcp-Method`` and ``Mcp-Name`` headers). Load windows alternate between the no-op, ``config_get`` and
``config_set`` (each client its own key), so drift in machine load hits all alike. The server, the
database and the load share this machine.

Then, on PostgreSQL, 16 clients send blind ``config_set`` calls (no ``expected_version``) to one key;
every error is counted by its code (the target is none). Last, as the store's owner, 16 clients write
their own keys in one tenant, alternated with the same 16 spread over 8 tenants: one tenant's writes
take turns on its audit chain's head, different tenants' do not, so the ratio is what one tenant
would gain from several chains (information, see docs/scaling.md).

Usage: ``.venv/bin/python benchmarks/http_concurrency.py [--quick] [--stores sqlite,postgresql]``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

from _harness import Bench, BenchError, Row, Store, Target, run
from _http import HttpServer, Load, Request, bare_http, http_call, http_clients, http_load, scalemule_http

CLIENTS = 16
WINDOW = {False: 1.5, True: 1.0}  # seconds per load window, full / quick run
ROUNDS = {False: 3, True: 2}
TARGETS: dict[str, dict[str, float]] = {"sqlite": {"get": 0.8, "set": 0.6}, "postgresql": {"get": 0.5, "set": 0.4}}
SPREAD = 8  # tenants the spread writers share


def _noop(w: int, i: int) -> tuple[str, dict[str, Any]]:
    return "noop", {}


def _get(w: int, i: int) -> tuple[str, dict[str, Any]]:
    return "config_get", {"env": "dev", "key": "bench.read"}


def _set(w: int, i: int) -> tuple[str, dict[str, Any]]:
    return "config_set", {"env": "dev", "key": f"bench.http.{w}", "value": i}


def _blind(w: int, i: int) -> tuple[str, dict[str, Any]]:
    return "config_set", {"env": "dev", "key": "bench.blind", "value": w * 100_000 + i}


def _check(label: str, load: Load) -> None:
    if load.errors:
        raise BenchError(f"{label}: {sum(load.errors.values())} of {load.calls} calls failed: {load.errors}")


async def _windows(bench: Bench, bare: HttpServer, sm: HttpServer) -> dict[str, Load]:
    """Alternate load windows of the no-op, get and set; returns the summed load of each."""
    window, rounds = WINDOW[bench.quick], ROUNDS[bench.quick]
    plan: list[tuple[str, HttpServer, Request]] = [("no-op", bare, _noop), ("get", sm, _get), ("set", sm, _set)]
    totals = {label: Load() for label, _, _ in plan}
    async with http_clients(bare, CLIENTS) as bare_clients, http_clients(sm, CLIENTS) as sm_clients:
        clients = {bare.name: bare_clients, sm.name: sm_clients}
        for label, server, request in plan:  # warm-up: connections open, statements prepared
            _check(label, await http_load(server, clients[server.name], request, seconds=window / 4))
        for _ in range(rounds):
            for label, server, request in plan:
                load = await http_load(server, clients[server.name], request, seconds=window, pid=server.process.pid)
                _check(f"{server.name} {label}", load)
                totals[label].add(load)
    return totals


async def _blind_sets(bench: Bench, sm: HttpServer, baseline: float) -> None:
    seconds = bench.seconds(4, 2)
    async with http_clients(sm, CLIENTS) as clients:
        load = await http_load(sm, clients, _blind, seconds=seconds)
    failed = sum(load.errors.values())
    codes = ", ".join(f"{code} {n}" for code, n in sorted(load.errors.items())) or "none"
    figures = (
        f"{load.calls} calls in {load.seconds:.1f} s: {failed} failed (by code: {codes});"
        f" {load.rate:.0f} successful/s = {load.rate / baseline:.2f}x the no-op's calls/s"
    )
    row = Row(
        f"HTTP blind config_set, {CLIENTS} clients, one key",
        "postgresql",
        figures,
        100 * failed / max(1, load.calls),
        Target("<=", 0, "% fail"),
        ratio_unit="% fail",
    )
    bench.add(row)


def _one_tenant(w: int, i: int) -> tuple[str, dict[str, Any]]:
    return "config_set", {"tenant": "bench", "env": "dev", "key": f"bench.spread.{w}", "value": i}


def _spread(w: int, i: int) -> tuple[str, dict[str, Any]]:
    return "config_set", {"tenant": f"spread-{w % SPREAD}", "env": "dev", "key": f"bench.spread.{w}", "value": i}


async def _tenant_spread(bench: Bench, store: Store, sm: HttpServer) -> None:
    """16 writers in one tenant, alternated with the same writers over SPREAD tenants (one audit chain
    each), all as the owner so both pay the same tenant lookup; adds the row."""
    owner = replace(sm, token=str(store.made["owner_key"]))
    window, rounds = WINDOW[bench.quick], ROUNDS[bench.quick]
    totals = {"one": Load(), "spread": Load()}
    async with http_clients(owner, CLIENTS) as clients:
        for n in range(SPREAD):
            await http_call(clients[0], owner, "tenants_create", {"slug": f"spread-{n}", "name": f"spread {n}"})
        for label, request in (("one", _one_tenant), ("spread", _spread)):  # warm-up
            _check(label, await http_load(owner, clients, request, seconds=window / 4))
        for _ in range(rounds):
            for label, request in (("one", _one_tenant), ("spread", _spread)):
                load = await http_load(owner, clients, request, seconds=window)
                _check(f"config_set {label}", load)
                totals[label].add(load)
    one, spread = totals["one"].rate, totals["spread"].rate
    figures = f"{CLIENTS} clients in one tenant {one:.0f} calls/s; over {SPREAD} tenants {spread:.0f} calls/s"
    path = f"HTTP config_set, {CLIENTS} clients over {SPREAD} tenants vs one"
    bench.add(Row(path, "postgresql", figures, spread / one, None))


async def throughput(bench: Bench) -> None:
    """Per store: interleaved load windows, then (PostgreSQL) blind sets on one key; adds the rows."""
    async with bare_http(bench.workdir) as bare:
        for kind in bench.kinds:
            store = await bench.store(kind)
            async with scalemule_http(store, bench.workdir) as sm, http_clients(sm, 1) as (client,):
                await http_call(client, sm, "config_set", {"env": "dev", "key": "bench.read", "value": "m"})
                totals = await _windows(bench, bare, sm)
                base = totals["no-op"]
                busy = ", ".join(f"{label} {load.cpu / load.seconds:.2f}" for label, load in totals.items())
                bench.say(
                    f"  {CLIENTS} keep-alive clients, {ROUNDS[bench.quick]} rounds of {WINDOW[bench.quick]:g} s"
                    f" windows; server CPU seconds per second: {busy}"
                )
                for label in ("get", "set"):
                    load = totals[label]
                    figures = f"{load.rate:.0f} vs {base.rate:.0f} calls/s"
                    target = Target(">=", TARGETS[kind][label])
                    bench.add(
                        Row(
                            f"HTTP config_{label} throughput vs bare Server no-op",
                            kind,
                            figures,
                            load.rate / base.rate,
                            target,
                        )
                    )
                if kind == "postgresql":
                    await _blind_sets(bench, sm, base.rate)
                    await _tenant_spread(bench, store, sm)


AREAS = [("http", throughput)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
