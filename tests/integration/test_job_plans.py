"""Claims and listings stay cheap however many jobs a tenant has.

A claim reads the tenant's waiting jobs in the order it takes them: the plan of its pick, for every
filter shape, walks the partial index ``ix_jobs_claim`` and never sorts the queue or scans the table.
``jobs_list`` filtered by a state, kind or queue that few jobs have reads that filter's index, newest
first, without sorting or reading the rest.

The tenant holds thousands of waiting jobs of several queues, kinds and priorities beside thousands of
finished ones (analysed on PostgreSQL, so its planner weighs a real table).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from scalemule.core import jobs as core_jobs
from scalemule.core.ids import new_id, utcnow
from scalemule.db.tables import jobs
from tests import plans
from tests.conftest import World

pytestmark = pytest.mark.anyio

WAITING = 3000
NOW = utcnow()


def _rows(tenant_id: str) -> list[dict[str, Any]]:
    rows = []
    for n in range(2 * WAITING):
        state = ("queued", "failed", "succeeded", "succeeded")[n % 4]
        row: dict[str, Any] = {column.name: None for column in jobs.columns}
        row |= {"id": new_id("job"), "tenant_id": tenant_id, "queue": ("default", "bulk")[n % 3 == 0]}
        row |= {"kind": ("resize", "email", "describe")[n % 3], "payload": n, "state": state}
        row |= {"priority": n % 5, "attempt": int(state != "queued"), "max_attempts": 5}
        row |= {"run_at": NOW + timedelta(seconds=(n % 7) - 3), "cancel_requested": False, "created_at": NOW}
        if state == "succeeded":
            row["finished_at"] = NOW
        rows.append(row)
    return rows


@pytest.fixture
async def deep_queue(world: World) -> World:
    """``world`` whose tenant has thousands of waiting and finished jobs, analysed on PostgreSQL."""
    db = world.dispatcher.runtime.db
    async with db.transaction() as conn:
        await conn.execute(jobs.insert(), _rows(world.made.tenant.id))
    if db.dialect == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execute(sa.text("ANALYZE jobs"))
            await conn.commit()
    return world


SHAPES = [(False, False), (True, False), (False, True), (True, True)]


def _params(world: World) -> dict[str, Any]:
    return {
        "t": world.made.tenant.id,
        "now": NOW,
        "until": NOW + timedelta(minutes=1),
        "worker": "agt_worker",
        "token": "token",
        "new_state": "running",
        "queues": ["default"],
        "kinds": ["describe", "email"],
        "n": 10,
    }


@pytest.mark.parametrize("shape", SHAPES, ids=["all", "by queue", "by kind", "by queue and kind"])
async def test_a_claim_reads_the_claim_index_in_order_without_sorting_the_queue(
    deep_queue: World, shape: tuple[bool, bool]
) -> None:
    plan = await plans.plan(deep_queue.dispatcher.runtime.db, core_jobs._pick(*shape), _params(deep_queue))
    text = "\n".join(plan)
    assert "ix_jobs_claim" in text, text
    assert not plans.scans(plan, "jobs"), text
    assert not plans.sorts(plan), text


@pytest.mark.parametrize("column", ["state", "kind", "queue"])
@pytest.mark.parametrize("page", ["first", "next"])
async def test_a_listing_filtered_by_a_rare_value_reads_that_filters_index_newest_first(
    deep_queue: World, column: str, page: str
) -> None:
    rare = {"state": "dead", "kind": "rare-kind", "queue": "rare-queue"}
    filters: dict[str, str | None] = {"state": None, "kind": None, "queue": None} | {column: rare[column]}
    after = f"{NOW.isoformat()}|job_zzz" if page == "next" else None
    query = core_jobs.listing(deep_queue.made.tenant.id, **filters, after=after, limit=50)
    plan = await plans.plan(deep_queue.dispatcher.runtime.db, query, {})
    text = "\n".join(plan)
    assert f"ix_jobs_listing_{column}" in text, text
    assert not plans.scans(plan, "jobs"), text
    assert not plans.sorts(plan), text


async def test_a_claim_from_a_deep_queue_takes_the_best_due_job_of_its_kinds(deep_queue: World) -> None:
    params = _params(deep_queue)
    db = deep_queue.dispatcher.runtime.db
    async with db.transaction() as conn:
        waiting = (
            await conn.execute(
                sa.select(jobs.c.id, jobs.c.priority, jobs.c.run_at).where(
                    jobs.c.tenant_id == params["t"],
                    jobs.c.state.in_(["queued", "failed"]),
                    jobs.c.run_at <= NOW,
                    jobs.c.kind.in_(params["kinds"]),
                )
            )
        ).all()
        best = min(waiting, key=lambda r: (-r.priority, r.run_at, r.id))
        claimed = await core_jobs.claim(
            conn,
            params["t"],
            worker=deep_queue.made.agent,
            queues=None,
            kinds=params["kinds"],
            limit=1,
            lease=timedelta(minutes=1),
            now=NOW,
        )
    assert [job.id for job in claimed] == [best.id]
