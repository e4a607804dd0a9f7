"""Job throughput and pickup latency: the audited worker path against a hand-written SQL loop.

For each store (a fresh SQLite file; a fresh schema on PostgreSQL, dropped afterwards), in this run:

- throughput, enqueue -> complete, with 1 and 4 workers: jobs enqueued through ``jobs_enqueue`` as an
  agent and run by ``Worker`` loops in this process (claim, handler, complete: every call authenticated,
  authorized and audited), against the floor: the same number of concurrent loops of minimal SQL on the
  same ``jobs`` table (insert; claim one with an ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP
  LOCKED)``; complete with a fenced ``UPDATE``), one transaction per statement group, no audit;
- latency, enqueue -> handler start, p50 and p90 with one idle worker (PostgreSQL: woken by NOTIFY;
  SQLite: by its probe).

Prints jobs/s, the ratio ScaleMule / raw (target: at least 0.7) and the latency (target on PostgreSQL:
p50 under 50 ms). A benchmark, not a test: exits 0 whatever the figures.

Usage: ``make bench`` or ``.venv/bin/python benchmarks/jobs_throughput.py [--jobs N] [--skip-postgres]``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa
from _harness import postgres_schema

from scalemule.core import bootstrap, identity, tenants
from scalemule.core.ids import new_id, utcnow
from scalemule.db import migrate
from scalemule.db.engine import create_engine
from scalemule.db.tables import jobs
from scalemule.db.tables.jobs import CLAIMABLE_ROWS
from scalemule.dispatch import Dispatcher, Exposure, Invocation
from scalemule.runtime import Runtime
from scalemule.settings import Settings
from scalemule.worker import Handlers, JobContext, Worker, WorkerOptions

TARGET_RATIO = 0.7
TARGET_PG_P50_MS = 50.0


async def _setup(settings: Settings) -> tuple[Runtime, str, str, str]:
    engine = create_engine(settings.url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    runtime = Runtime.open(settings)
    made = await bootstrap.initialize(runtime.db, slug="bench", owner_email="bench@example.com")
    async with runtime.db.transaction() as conn:
        worker = await identity.create_principal(conn, kind="agent", name="bench-worker", tenant_id=made.tenant.id)
        await tenants.add_member(conn, tenant_id=made.tenant.id, principal_id=worker.id, role="worker")
        _, worker_key = await identity.create_key(
            conn,
            principal_id=worker.id,
            tenant_id=made.tenant.id,
            name="bench",
            scopes=None,
            expires_at=None,
            created_by=None,
        )
        raw = await tenants.create_tenant(conn, slug="raw", name="raw", owner=made.owner)
    return runtime, made.agent_token, worker_key, raw.id


async def scalemule_run(runtime: Runtime, agent_key: str, worker_key: str, count: int, workers: int) -> float:
    """Seconds to enqueue ``count`` jobs through the tools and have ``workers`` Worker loops run them."""
    dispatcher = Dispatcher(runtime, Exposure(toolsets=None))
    handlers, done = Handlers(), anyio.Event()
    finished = 0

    def on_finished(job_id: str, state: str) -> None:
        nonlocal finished
        finished += 1
        if finished == count:
            done.set()

    @handlers("bench")
    async def bench(payload: Any, ctx: JobContext) -> Any:
        return None

    stop = anyio.Event()
    options = WorkerOptions(concurrency=1, poll_min=0.001, poll_max=0.05)
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(Worker(runtime, worker_key, handlers, options, on_finished=on_finished).run, stop)
        for n in range(count):
            outcome = await dispatcher.call(
                Invocation("jobs_enqueue", {"kind": "bench", "payload": n}, agent_key, "cli")
            )
            assert outcome.error is None, outcome.error
        await done.wait()
        elapsed = time.perf_counter() - started
        stop.set()
    return elapsed


def _raw_statements(postgresql: bool) -> tuple[Any, Any]:
    # The same order and index (ix_jobs_claim) as a claim: the floor reads the queue as cheaply.
    pick = sa.select(jobs.c.id).where(jobs.c.tenant_id == sa.bindparam("t"), CLAIMABLE_ROWS)
    pick = pick.order_by(jobs.c.priority.desc(), jobs.c.run_at, jobs.c.id).limit(1)
    if postgresql:
        pick = pick.with_for_update(skip_locked=True)
    claim = (
        jobs.update()
        .where(jobs.c.id == pick.scalar_subquery())
        .values(state="running", lease_token=sa.bindparam("token"), lease_expires_at=sa.bindparam("until"))
        .returning(jobs.c.id)
    )
    complete = (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("job"), jobs.c.lease_token == sa.bindparam("token"))
        .values(state="succeeded", lease_token=None, lease_expires_at=None, finished_at=sa.bindparam("at"))
    )
    return claim, complete


async def raw_run(runtime: Runtime, tenant_id: str, count: int, workers: int) -> float:
    """Seconds for the hand-written loop: insert ``count`` jobs while ``workers`` loops claim and complete."""
    claim, complete = _raw_statements(runtime.db.dialect == "postgresql")
    remaining = count

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            token, now = secrets.token_urlsafe(24), utcnow()
            async with runtime.db.transaction() as conn:
                row = (await conn.execute(claim, {"t": tenant_id, "token": token, "until": now})).first()
            if row is None:
                await anyio.sleep(0.001)
                continue
            async with runtime.db.transaction() as conn:
                await conn.execute(complete, {"job": row.id, "token": token, "at": utcnow()})
            remaining -= 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(loop)
        for n in range(count):
            now = utcnow()
            row = {c.name: None for c in jobs.columns}
            row |= {"id": new_id("job"), "tenant_id": tenant_id, "queue": "default", "kind": "bench", "payload": n}
            row |= {"state": "queued", "priority": 0, "attempt": 0, "max_attempts": 5, "run_at": now}
            row |= {"cancel_requested": False, "created_at": now}
            async with runtime.db.transaction() as conn:
                await conn.execute(jobs.insert(), row)
    return time.perf_counter() - started


async def pickup_latency(
    runtime: Runtime, agent_key: str, worker_key: str, samples: int
) -> tuple[list[float], list[float]]:
    """Milliseconds to the handler's start, one idle worker: from the enqueue call's start, and from its
    return (the job committed)."""
    dispatcher = Dispatcher(runtime, Exposure(toolsets=None))
    handlers, started_at, event = Handlers(), [0.0], [anyio.Event()]

    @handlers("ping")
    async def ping(payload: Any, ctx: JobContext) -> Any:
        started_at[0] = time.perf_counter()
        event[0].set()

    stop, latencies, pickups = anyio.Event(), [], []
    async with anyio.create_task_group() as tg:
        tg.start_soon(Worker(runtime, worker_key, handlers, WorkerOptions()).run, stop)
        await anyio.sleep(1.0)  # let the worker reach its idle wait (and its LISTEN connection)
        for _ in range(samples):
            event[0] = anyio.Event()
            begun = time.perf_counter()
            outcome = await dispatcher.call(
                Invocation("jobs_enqueue", {"kind": "ping", "payload": 0}, agent_key, "cli")
            )
            assert outcome.error is None, outcome.error
            committed = time.perf_counter()
            with anyio.fail_after(30):
                await event[0].wait()
            latencies.append((started_at[0] - begun) * 1000)
            pickups.append((started_at[0] - committed) * 1000)
            await anyio.sleep(0.3)  # idle again, as a worker between bursts
        stop.set()
    return latencies, pickups


async def measure(label: str, settings: Settings, count: int, samples: int) -> None:
    runtime, agent_key, worker_key, raw_tenant = await _setup(settings)
    try:
        print(f"\n{label}: {count} jobs per run")
        print(f"{'workers':>8} {'raw jobs/s':>11} {'scalemule jobs/s':>17} {'ratio':>7}")
        for workers in (1, 4):
            raw = count / await raw_run(runtime, raw_tenant, count, workers)
            ours = count / await scalemule_run(runtime, agent_key, worker_key, count, workers)
            verdict = "PASS" if ours / raw >= TARGET_RATIO else "UNDER"
            print(f"{workers:>8} {raw:>11.0f} {ours:>17.0f} {ours / raw:>6.2f}x  {verdict}")
        latencies, pickups = await pickup_latency(runtime, agent_key, worker_key, samples)
        how = "NOTIFY" if runtime.db.dialect == "postgresql" else "probe"
        for label, values in (("enqueue call -> start", latencies), ("committed -> start", pickups)):
            ordered = sorted(values)
            p50, p90 = statistics.median(ordered), ordered[int(len(ordered) * 0.9) - 1]
            print(f"{label:<22} idle worker ({how}): p50 {p50:6.1f} ms, p90 {p90:6.1f} ms")
    finally:
        await runtime.close()


async def main_async(count: int, samples: int, skip_postgres: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="scalemule-jobs-bench-") as tmp:
        await measure("SQLite", Settings(data_dir=Path(tmp)), count, samples)
    if skip_postgres:
        return
    async with postgres_schema() as url:
        with tempfile.TemporaryDirectory(prefix="scalemule-jobs-bench-") as tmp:
            await measure("PostgreSQL", Settings(data_dir=Path(tmp), database_url=url), count, samples)
    print(f"\ntargets: throughput at least {TARGET_RATIO}x the raw loop; PostgreSQL pickup p50 < {TARGET_PG_P50_MS} ms")


def main() -> int:
    """Parse options, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per throughput run (default 1000)")
    parser.add_argument("--samples", type=int, default=30, help="pickup latency samples (default 30)")
    parser.add_argument("--skip-postgres", action="store_true")
    options = parser.parse_args()
    anyio.run(main_async, options.jobs, options.samples, options.skip_postgres)
    return 0


if __name__ == "__main__":
    sys.exit(main())
