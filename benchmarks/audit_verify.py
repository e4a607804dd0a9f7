"""Audit verification throughput against raw SHA-256 over the same canonical bytes, in one run.

Builds one chain of ``--events`` events with batched appends (signed checkpoints every 1,000 events,
digest objects in the blob store), then measures, each timed pass the best of ``--rounds``:

- raw SHA-256: hashing every event's canonical bytes, prepared beforehand (the floor of any verifier);
- canonical + SHA-256: rebuilding those bytes from the event's fields, then hashing (what verifying a
  hash needs at least, in Python; one round);
- verify (database): ``audit_verify.verify_stored``, every link, hash, checkpoint signature and digest
  object checked; a long chain is split across segment processes, one per CPU;
- verify (export file): the offline verifier (``audit_export.verify_file``) over ``scalemule audit
  export`` output, split the same way.

Prints events/s and each ratio to raw SHA-256 (target for verification: at least 0.5), and the peak
memory the database pass allocated in process (it, and each segment process, reads bounded batches,
so memory does not grow with the log). It is a benchmark, not a test: it exits 0 whatever the ratios.

Usage: ``make bench`` or ``.venv/bin/python benchmarks/audit_verify.py [--events N] [--rounds R]
[--postgres]`` (PostgreSQL at ``SCALEMULE_BENCH_POSTGRES``, default ``postgresql://postgres@127.0.0.1:5432/test``,
in a schema of its own, dropped afterwards).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import sqlalchemy as sa
from _harness import POSTGRES_ADMIN_URL, postgres_schema

from scalemule.core import audit, audit_export, audit_verify
from scalemule.core.audit import AuditEvent
from scalemule.core.ids import new_id, utcnow
from scalemule.db import migrate
from scalemule.db.tables import audit_events
from scalemule.runtime import Runtime
from scalemule.settings import Settings

TARGET_RATIO = 0.5
# Long enough that what a verification pays once (a process per CPU started, about 30 ms, and the
# checkpoints' signatures) does not stand for its throughput.
EVENTS = 300_000
BATCH = 1000


def _events(chain: str, start: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            at=utcnow(),
            operation=("whoami", "config_get", "storage_put_object")[i % 3],
            outcome="ok",
            transport="stdio",
            duration_ms=1.25,
            args={"env": "dev", "key": f"vision.model.{start + i}"},
            tenant_id=chain,
            actor_id="agt_0123456789abcdef0123456789abcdef",
            actor_kind="agent",
            actor_name="menu-bot",
            key_id="key_0123456789abcdef0123456789abcdef",
            client_name="claude-code",
            client_version="2.1.0",
            session_id="sess-1",
            request_id=str(start + i),
            permission="config:read",
            target=f"vision.model.{start + i}",
        )
        for i in range(BATCH)
    ]


async def build(runtime: Runtime, events: int) -> str:
    """One chain of ``events`` events, its head checkpointed; returns the chain."""
    chain = new_id("ten")
    for start in range(0, events, BATCH):
        async with runtime.db.transaction() as conn:
            await audit.append(conn, _events(chain, start))
    async with runtime.db.transaction() as conn:
        await audit.checkpoint_head(conn, runtime.notary, chain)
    return chain


async def stored_events(runtime: Runtime, chain: str) -> list[AuditEvent]:
    """Every event of ``chain``, read from its stored rows."""
    events: list[AuditEvent] = []
    table = audit_events
    last = 0
    while True:
        async with runtime.db.reader() as conn:
            query = sa.select(table.c.seq, table.c.hash, table.c.body).where(table.c.chain == chain, table.c.seq > last)
            rows = list(await conn.execute(query.order_by(table.c.seq).limit(10_000)))
        if not rows:
            return events
        events += [AuditEvent.from_row(row) for row in rows]
        last = events[-1].seq


def rate(count: int, seconds: float) -> float:
    """Events per second."""
    return count / seconds if seconds > 0 else float("inf")


async def best(rounds: int, events: int, run: Callable[[], Awaitable[object]]) -> float:
    """The highest events/s of ``rounds`` runs of ``run``."""
    fastest = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        await run()
        fastest = min(fastest, time.perf_counter() - started)
    return rate(events, fastest)


async def measure(events: int, rounds: int, workdir: Path, database_url: str | None) -> dict[str, float]:
    """Build the log, then time each pass (the best of ``rounds``); returns events/s per label and the
    peak memory in MB."""
    settings = Settings(data_dir=workdir / "data", database_url=database_url)
    settings.data_dir.mkdir(parents=True)
    runtime = Runtime.open(settings)
    try:
        await migrate.upgrade(runtime.db.engine)
        chain = await build(runtime, events)
        loaded = await stored_events(runtime, chain)
        canonical = [e.canonical() for e in loaded]
        results: dict[str, float] = {}

        async def raw() -> None:
            for body in canonical:
                hashlib.sha256(body).hexdigest()

        async def rebuilt() -> None:
            for event in loaded:
                event.digest()

        async def stored() -> None:
            report, _ = await audit_verify.verify_stored(runtime.db, runtime.notary, chain)
            if not report.ok:
                raise SystemExit(f"verification failed: {report.problem}")

        results["raw SHA-256 of canonical bytes"] = await best(rounds, events, raw)
        results["canonical bytes + SHA-256"] = await best(1, events, rebuilt)
        results["verify (database)"] = await best(rounds, events, stored)
        # Memory in a pass of its own: tracing allocations slows Python down several times.
        loaded.clear()
        canonical.clear()
        tracemalloc.start()
        await audit_verify.verify_stored(runtime.db, runtime.notary, chain)
        results["peak MB (database pass)"] = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()

        export = workdir / "export.jsonl"
        window = audit_export.Window(chain, "bench")
        with export.open("w", encoding="utf-8") as out:
            async for line in audit_export.export(runtime.db, runtime.notary, window):
                out.write(line + "\n")
        keys = runtime.notary.keys.public_keys()

        async def offline() -> None:
            report = await audit_export.verify_file(str(export), keys)
            if not report.ok:
                raise SystemExit(f"offline verification failed: {report.problem}")

        results["verify (export file)"] = await best(rounds, events, offline)
        return results
    finally:
        await runtime.close()


async def run(events: int, rounds: int, postgres: bool) -> dict[str, float]:
    """Measure on a fresh SQLite file, or in a fresh PostgreSQL schema dropped afterwards."""
    with tempfile.TemporaryDirectory(prefix="scalemule-bench-") as workdir:
        if not postgres:
            return await measure(events, rounds, Path(workdir), None)
        async with postgres_schema() as url:
            return await measure(events, rounds, Path(workdir), url)


def report(results: dict[str, float], events: int, store: str) -> None:
    """Print events/s and the ratio of each pass to raw SHA-256."""
    baseline = results["raw SHA-256 of canonical bytes"]
    print(f"Audit verification over {events} events ({store}), ratios to raw SHA-256 in the same run")
    print(f"{'pass':<32} {'events/s':>12} {'ratio':>8}")
    for label, value in results.items():
        if label.startswith("peak"):
            continue
        verdict = ""
        if label.startswith("verify"):
            verdict = "PASS" if value / baseline >= TARGET_RATIO else "UNDER"
        print(f"{label:<32} {value:>12,.0f} {value / baseline:>7.3f}x  {verdict}")
    print(f"peak memory of the database pass: {results['peak MB (database pass)']:.1f} MB in process")
    print(f"target: verification at least {TARGET_RATIO}x raw SHA-256")


def main() -> int:
    """Parse options, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=EVENTS, help=f"events in the chain (default {EVENTS})")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each timed pass, the best kept (default 3)")
    parser.add_argument(
        "--postgres", action="store_true", help=f"measure on PostgreSQL ({POSTGRES_ADMIN_URL}, in a schema of its own)"
    )
    options = parser.parse_args()
    if options.events < BATCH or options.events % BATCH:
        parser.error(f"--events must be a positive multiple of {BATCH}")
    results = anyio.run(run, options.events, max(1, options.rounds), options.postgres)
    report(results, options.events, "PostgreSQL" if options.postgres else "SQLite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
