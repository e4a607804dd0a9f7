"""What the audit_query indexes cost the write path: an audited ``config_set`` with them vs without them.

Two stores of each kind are made alike (``scalemule init``, the log grown to 100k events as in
``audit_log.py``); one then has the indexes of ``audit_events`` that serve audit_query's filters
dropped. Calls go through the dispatch path in this process (authenticate, authorize, validate, run
the handler, append the audit event, commit), alternating between the two stores, so drift in machine
load hits both alike; no transport is involved, so the difference is the database's alone.

Usage: ``.venv/bin/python benchmarks/audit_index_cost.py [--quick] [--stores sqlite,postgresql]``.
"""

from __future__ import annotations

import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _harness import Bench, BenchError, Row, Store, close_store, interleave, median, ms, open_store, percentile, run
from audit_log import INTERFERENCE_EVENTS, _seed

APPEND_BATCH = 200

# Every index of audit_events but its primary key (chain, seq) and the one of event ids (audit_get): the
# ones audit_query's filters use.
_QUERY_INDEXES = sa.text(
    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'audit_events'"
    " AND indexname LIKE 'ix_audit_events_chain_%'"
)
_SQLITE_INDEXES = sa.text(
    "SELECT name FROM sqlite_master WHERE tbl_name = 'audit_events' AND name LIKE 'ix_audit_events_chain_%'"
)


async def _drop_query_indexes(store: Store) -> int:
    from scalemule.db.engine import create_engine

    engine = create_engine(store.database_url)
    try:
        async with engine.begin() as conn:
            listing = _QUERY_INDEXES if conn.dialect.name == "postgresql" else _SQLITE_INDEXES
            names = [str(name) for name in (await conn.execute(listing)).scalars()]
            for name in names:
                await conn.execute(sa.text(f'DROP INDEX "{name}"'))
        return len(names)
    finally:
        await engine.dispose()


async def _dispatcher(stack: AsyncExitStack, store: Store) -> Any:
    from scalemule.dispatch import Dispatcher, Exposure
    from scalemule.runtime import Runtime
    from scalemule.settings import Settings

    url = store.env.get("SCALEMULE_DATABASE_URL")
    runtime = Runtime.open(Settings(data_dir=Path(store.env["SCALEMULE_DATA_DIR"]), database_url=url))
    stack.push_async_callback(runtime.close)
    return Dispatcher(runtime, Exposure(toolsets=None))


async def _call(dispatcher: Any, store: Store, operation: str, arguments: dict[str, Any]) -> None:
    from scalemule.dispatch import Invocation

    outcome = await dispatcher.call(Invocation(operation, arguments, store.agent_key, "stdio"))
    if outcome.error is not None:
        raise BenchError(f"{operation} failed: {outcome.error.code}: {outcome.error.message}")


class _RollBack(Exception):
    """Leaves a transaction without committing it."""


def _appender(dispatcher: Any, store: Store, batch: int) -> Any:
    """Seconds per event of appending ``batch`` events, one at a time, in a transaction then rolled back:
    the insert and its index entries, without the commit (whose flush to disk would dominate)."""
    from scalemule.core import audit

    async def append() -> float:
        events = [
            audit.operator_event("bench_append", {}, started=0.0, tenant_id=store.tenant_id, target="t")
            for _ in range(batch)
        ]
        elapsed = 0.0
        try:
            async with dispatcher.runtime.db.transaction() as conn:
                started = time.perf_counter()
                for event in events:
                    await audit.append(conn, [event])
                elapsed = time.perf_counter() - started
                raise _RollBack
        except _RollBack:
            pass
        return elapsed / batch

    return append


def _writer(dispatcher: Any, store: Store) -> Any:
    counter = iter(range(1 << 62))
    return lambda: _call(
        dispatcher, store, "config_set", {"env": "dev", "key": "bench.index-cost", "value": next(counter)}
    )


async def index_cost(bench: Bench) -> None:
    """Alternate audited writes on a store with the indexes and one without, per store kind."""
    for kind in bench.kinds:
        stores = [await open_store(kind, bench.workdir / f"{kind}-{name}") for name in ("with", "without")]
        try:
            async with AsyncExitStack() as stack:
                ops = []
                for label, store in zip(("with indexes", "without"), stores, strict=True):
                    dispatcher = await _dispatcher(stack, store)
                    await _call(dispatcher, store, "whoami", {})  # the event the log is grown from
                    await _seed(store, INTERFERENCE_EVENTS)
                    ops.append((label, _writer(dispatcher, store)))
                dropped = await _drop_query_indexes(stores[1])
                samples = await interleave(
                    ops, bench.size(1500, 400), bench.size(30, 10), budget=bench.seconds(30, 10), min_rounds=100
                )
                appends: dict[str, list[float]] = {"with indexes": [], "without": []}
                appenders = [_appender(await _dispatcher(stack, store), store, APPEND_BATCH) for store in stores]
                for _ in range(bench.size(40, 10)):
                    for label, append in zip(appends, appenders, strict=True):
                        appends[label].append(await append())
        finally:
            for store in stores:
                await close_store(store)
        p50 = {label: percentile(s, 50) for label, s in samples.items()}
        p99 = {label: percentile(s, 99) for label, s in samples.items()}
        figures = (
            f"{len(samples['without'])} calls each at {INTERFERENCE_EVENTS // 1000}k events, {dropped} indexes:"
            f" p50 {ms(p50['with indexes'])} vs {ms(p50['without'])}; p99 {ms(p99['with indexes'])}"
            f" vs {ms(p99['without'])}"
        )
        bench.add(
            Row(
                "audited config_set in process, with the audit_query indexes vs without",
                kind,
                figures,
                p50["with indexes"] / p50["without"],
                None,
            )
        )
        each = {label: median(s) for label, s in appends.items()}
        figures = (
            f"{len(appends['without'])} batches of {APPEND_BATCH}: {each['with indexes'] * 1e6:.0f} µs vs"
            f" {each['without'] * 1e6:.0f} µs per event (+{(each['with indexes'] - each['without']) * 1e6:.0f} µs)"
        )
        bench.add(
            Row(
                "audit append of one event before commit, with the audit_query indexes vs without",
                kind,
                figures,
                each["with indexes"] / each["without"],
                None,
            )
        )


AREAS = [("index cost", index_cost)]

if __name__ == "__main__":
    sys.exit(run(AREAS, __doc__.splitlines()[0] if __doc__ else ""))
