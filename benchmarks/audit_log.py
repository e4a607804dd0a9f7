"""``audit_query`` with a rare or absent filter as the log grows, and readers beside a slow audit query.

The log is grown by copying a real event of the tenant's chain inside the database (INSERT ... SELECT
of its stored body, the id in it replaced, every other column following from the body; fresh sequence
numbers, the chain head advanced to match): a million events take seconds instead of a million calls. The copies are the
newest events, so a filter that matches nothing among them has to get past all of them. Hashes are
not recomputed: the benchmark store is thrown away and never verified.

Filters: ``outcome=error`` (rare: a few failed calls made before the log grew), an operation never
called and an actor that does not exist (absent). At each size they are timed twice:

- the store's query (``audit_filters.query``, the statement ``audit_query`` runs, on a reader connection held
  open in this process), interleaved with the same query for the newest page unfiltered, the cheapest
  page there is. The row judges the slowest filter's p50 against the target (3 ms at 1M events);
- the whole call through ``scalemule serve`` over stdio, interleaved with the bare low-level SDK
  server's no-op (information: the no-op alone takes several milliseconds over stdio).

On SQLite at 100k events: 8 HTTP clients read (``config_get``) alone, then while one more client
loops the slowest of those audit queries; windows alternate, and the row is the readers' throughput
ratio.

Usage: ``.venv/bin/python benchmarks/audit_log.py [--quick] [--stores sqlite,postgresql]``.
"""

from __future__ import annotations

import secrets
import sqlite3
import sys
import time
from contextlib import closing
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from _harness import (
    Bench,
    BenchError,
    Row,
    Stdio,
    Store,
    Target,
    bare_stdio,
    interleave,
    median,
    ms,
    run,
    scalemule_stdio,
)
from _http import HttpServer, Load, call_body, classify, http_call, http_clients, http_load, scalemule_http

RARE_ERRORS = 5
FILTERS: dict[str, dict[str, Any]] = {
    "rare outcome=error": {"outcome": "error"},
    "absent operation": {"operation": "config_delete"},
    "absent actor": {"actor": "nobody-in-this-benchmark"},
}
TARGET_MS = 3.0
TARGET_EVENTS = 1_000_000
READERS = 8
INTERFERENCE_EVENTS = 100_000


async def _seed(store: Store, upto: int) -> int:
    """Grow the tenant's chain to ``upto`` events by copying its newest ``whoami`` event; returns the count.

    Raises:
        BenchError: the audit tables are not as expected (no chain head, no event to copy).
    """
    from scalemule.db.engine import create_engine

    engine = create_engine(store.database_url)
    chain = store.tenant_id
    try:
        async with engine.begin() as conn:
            head = (await conn.execute(sa.text("SELECT seq FROM audit_heads WHERE chain = :c"), {"c": chain})).first()
            template = (
                await conn.execute(
                    sa.text(
                        "SELECT id FROM audit_events WHERE chain = :c AND operation = 'whoami'"
                        " ORDER BY seq DESC LIMIT 1"
                    ),
                    {"c": chain},
                )
            ).first()
            count = (
                await conn.execute(sa.text("SELECT count(*) FROM audit_events WHERE chain = :c"), {"c": chain})
            ).scalar_one()
            if head is None or template is None:
                raise BenchError("cannot grow the audit log: no chain head or no whoami event in the tenant's chain")
            n = upto - int(count)
            if n <= 0:
                return int(count)
            # Copies of the template under new ids (its body names it; the other columns follow from
            # the body) and new sequence numbers: a grown log to query, not a chain that verifies.
            prefix = f"evt_seed_{secrets.token_hex(4)}_"
            select = f"t.chain, :base + s.n, t.hash, replace(t.body, t.id, '{prefix}' || CAST(s.n AS VARCHAR(12)))"
            names = "chain, seq, hash, body"
            if conn.dialect.name == "postgresql":
                series = "generate_series(1, :n) AS s(n)"
                sql = (
                    f"INSERT INTO audit_events ({names}) SELECT {select} FROM {series}, audit_events t WHERE t.id = :t"
                )
            else:
                series = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :n) "
                sql = (
                    f"{series}INSERT INTO audit_events ({names}) SELECT {select} FROM s, audit_events t WHERE t.id = :t"
                )
            base = int(head.seq)
            await conn.execute(sa.text(sql), {"n": n, "base": base, "t": template.id})
            await conn.execute(sa.text("UPDATE audit_heads SET seq = :s WHERE chain = :c"), {"s": base + n, "c": chain})
        if store.kind == "postgresql":
            async with engine.connect() as conn:
                # As autovacuum would after a bulk load: the planner sees the table as it is.
                await conn.execute(sa.text("ANALYZE audit_events"))
                await conn.commit()
        else:
            # Fold the bulk load into the database file now rather than during the first timed call.
            await anyio.to_thread.run_sync(_checkpoint, store.database_url.removeprefix("sqlite:///"))
        return upto
    finally:
        await engine.dispose()


def _checkpoint(path: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _rare_errors(server: Stdio) -> None:
    """Make the rare events: calls that fail with ``not_found``."""
    for i in range(RARE_ERRORS):
        result = await server.client.call_tool("config_get", {"env": "dev", "key": f"bench.missing.{i}"})
        text = " ".join(getattr(c, "text", "") for c in result.content)
        if not result.is_error or not text.startswith("not_found"):
            raise BenchError(f"config_get of a missing key should fail with not_found, got: {text[:300]}")


async def _query_timings(bench: Bench, bare: Stdio, server: Stdio) -> dict[str, list[float]]:
    async def query(filters: dict[str, Any], expect_some: bool) -> None:
        result = await server.call("audit_query", {**filters, "limit": 10})
        items = (result.structured_content or {}).get("items", [])
        if expect_some and not items:
            raise BenchError(f"audit_filters.query {filters} found none of the {RARE_ERRORS} failed calls made for it")
        if not expect_some and items:
            raise BenchError(f"audit_query {filters} should find nothing, found {len(items)}")

    ops: list[tuple[str, Any]] = [("no-op", lambda: bare.call("noop", {}))]
    ops += [(label, lambda f=f, label=label: query(f, label.startswith("rare"))) for label, f in FILTERS.items()]
    return await interleave(ops, bench.size(30, 15), 1, budget=bench.seconds(4, 3), min_rounds=3)


async def _store_timings(bench: Bench, store: Store) -> dict[str, list[float]]:
    """The filters' query in the store, interleaved with the newest page unfiltered (``newest page``)."""
    from scalemule.core import audit_filters
    from scalemule.db.engine import Database

    db = Database(store.database_url)
    try:
        async with db.reader() as conn:

            async def page(filters: dict[str, Any], expect_some: bool) -> None:
                where = audit_filters.EventFilter(**filters)
                found = await audit_filters.query(conn, tenant_id=store.tenant_id, where=where, limit=10)
                if bool(found) != expect_some:
                    raise BenchError(f"audit_filters.query {filters} found {len(found)} events")

            ops: list[tuple[str, Any]] = [("newest page", lambda: page({}, True))]
            ops += [(label, lambda f=f, label=label: page(f, label.startswith("rare"))) for label, f in FILTERS.items()]
            return await interleave(ops, bench.size(200, 60), 3, budget=bench.seconds(4, 2), min_rounds=20)
    finally:
        await db.dispose()


async def _scaling(bench: Bench, bare: Stdio, store: Store) -> None:
    """Grow the log step by step, timing the filters at each size; on SQLite, readers beside the
    slowest filter at 100k events (the size the performance issue states)."""
    sizes = [10_000, 100_000, TARGET_EVENTS] if not bench.quick else [10_000, 100_000]
    worst: dict[int, float] = {}
    readers: Row | None = None
    noop: dict[int, float] = {}
    query: dict[int, float] = {}
    newest: dict[int, float] = {}
    async with scalemule_stdio(store, bench.workdir) as server:
        await _rare_errors(server)
        await server.call("whoami", {})
        for size in sizes:
            started = time.perf_counter()
            await _seed(store, size)
            seeded = time.perf_counter() - started
            samples = await _query_timings(bench, bare, server)
            last = {label: median(samples[label]) for label in FILTERS}
            worst[size], noop[size] = max(last.values()), median(samples["no-op"])
            each = ", ".join(f"{label} {ms(t)}" for label, t in last.items())
            bench.say(
                f"  {store.kind} at {size:>9,} events (grown in {seeded:.1f} s),"
                f" stdio p50 over {len(samples['no-op'])} rounds: {each}; no-op {ms(noop[size])}"
            )
            direct = await _store_timings(bench, store)
            in_store = {label: median(direct[label]) for label in FILTERS}
            query[size], newest[size] = max(in_store.values()), median(direct["newest page"])
            each = ", ".join(f"{label} {ms(t)}" for label, t in in_store.items())
            bench.say(
                f"  {store.kind} at {size:>9,} events, store query p50 over {len(direct['newest page'])} rounds:"
                f" {each}; newest page unfiltered {ms(newest[size])}"
            )
            if store.kind == "sqlite" and size == INTERFERENCE_EVENTS:
                slowest = FILTERS[max(last, key=lambda label: last[label])]
                async with scalemule_http(store, bench.workdir) as sm:
                    readers = await _readers(bench, sm, slowest, size)
    top, low = sizes[-1], sizes[0]
    quick = f"; quick run: judged at {top // 1000}k, not {TARGET_EVENTS // 1000:,}k" if top != TARGET_EVENTS else ""
    figures = "; ".join(f"{size // 1000:,}k: {ms(query[size])} vs {ms(newest[size])}" for size in sizes)
    figures += f" (slowest filter p50 vs newest page; x{query[top] / query[low]:.1f} from {low // 1000}k"
    figures += f" to {top // 1000:,}k events){quick}"
    bench.add(
        Row(
            "audit_query rare/absent filter, store query p50 vs the newest page",
            store.kind,
            figures,
            query[top] / newest[top],
            Target("<=", TARGET_MS, " ms"),
            judged=query[top] * 1000,
        )
    )
    figures = "; ".join(f"{size // 1000:,}k: {ms(worst[size])} vs {ms(noop[size])}" for size in sizes)
    figures += f" (slowest filter p50 vs no-op; x{worst[top] / worst[low]:.1f} from {low // 1000}k"
    figures += f" to {top // 1000:,}k events){quick}"
    bench.add(
        Row(
            "audit_query rare/absent filter over stdio, p50 vs bare Server no-op",
            store.kind,
            figures,
            worst[top] / noop[top],
            None,
        )
    )
    if readers is not None:  # listed after the scaling row it depends on
        bench.add(readers)


async def _readers(bench: Bench, sm: HttpServer, slow: dict[str, Any], events: int) -> Row:
    """8 readers alone vs beside one client looping the slow audit query; alternating windows."""
    window, rounds = bench.seconds(2.0, 1.0), bench.size(3, 2)
    alone, beside = Load(), Load()
    loops: list[float] = []

    def read(w: int, i: int) -> tuple[str, dict[str, Any]]:
        return "config_get", {"env": "dev", "key": "bench.read"}

    async with http_clients(sm, READERS + 1) as clients:
        readers, looper = clients[:READERS], clients[READERS]
        await http_call(looper, sm, "config_set", {"env": "dev", "key": "bench.read", "value": "m"})
        await http_load(sm, readers, read, seconds=window / 4)

        async def loop_audit(stop: anyio.Event) -> None:
            body = call_body("audit_query", {**slow, "limit": 10})
            while not stop.is_set():
                started = time.perf_counter()
                reply = await looper.post(sm.url, content=body, headers={"mcp-name": "audit_query"})
                code, _ = classify(reply.status_code, reply.content)
                if code is not None:
                    raise BenchError(f"audit_query {slow} failed: {code}: {reply.text[:300]}")
                loops.append(time.perf_counter() - started)

        for _ in range(rounds):
            alone.add(await http_load(sm, readers, read, seconds=window))
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                group.start_soon(loop_audit, stop)
                beside.add(await http_load(sm, readers, read, seconds=window))
                stop.set()
    for label, load in (("alone", alone), ("beside the audit loop", beside)):
        if load.errors:
            raise BenchError(f"readers {label}: {sum(load.errors.values())} of {load.calls} failed: {load.errors}")
    ratio = beside.rate / alone.rate
    figures = (
        f"{READERS} readers: {alone.rate:.0f} calls/s alone, {beside.rate:.0f} beside 1 client looping audit_query"
        f" {next(iter(slow.items()))} at {events // 1000}k events ({len(loops)} queries, p50 {ms(median(loops))}):"
        f" {100 * (ratio - 1):+.0f}%"
    )
    return Row(
        "HTTP readers beside a slow audit_query (throughput ratio)", "sqlite", figures, ratio, Target(">=", 0.85)
    )


async def audit(bench: Bench) -> None:
    """Scaling on every store (and reader interference on SQLite on the way)."""
    async with bare_stdio(bench.workdir) as bare:
        for kind in bench.kinds:
            await _scaling(bench, bare, await bench.store(kind))


AREAS = [("audit", audit)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
