"""Chaos: 4 worker processes, 2,000 jobs, one worker SIGKILLed mid-run (and, on PostgreSQL, every worker's
database connection terminated as a restarting server would): every job succeeds exactly once, and every
attempt is in the audit log."""

from __future__ import annotations

import secrets
import signal
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from scalemule.db.engine import create_engine
from scalemule.db.tables import audit_events, jobs
from scalemule.dispatch import Invocation
from tests.conftest import POSTGRES_ADMIN_URL, stored_event
from tests.e2e.conftest import SCALEMULE, Deployment

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = 2000
WORKERS = 4
LEASE_SECONDS = 5


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _worker_key(deployment: Deployment) -> str:
    async with deployment.beside() as (dispatcher, _):

        async def ok(tool: str, **args: Any) -> dict[str, Any]:
            outcome = await dispatcher.call(Invocation(tool, args, deployment.owner_key, "cli"))
            assert outcome.result is not None, outcome.error
            return outcome.result

        made = await ok("agents_create", name="chaos-worker", role="worker")
        return str((await ok("keys_create", name="chaos", principal_id=made["principal"]["id"]))["token"])


async def _enqueue(deployment: Deployment, ids: set[str]) -> None:
    # Four agents' sessions at once, while the workers already run: enqueueing overlaps the work.
    async with deployment.beside() as (dispatcher, _):

        async def some(start: int) -> None:
            for n in range(start, JOBS, 4):
                args = {"kind": "count", "payload": {"n": n}}
                outcome = await dispatcher.call(Invocation("jobs_enqueue", args, deployment.agent_key, "cli"))
                assert outcome.result is not None, outcome.error
                ids.add(outcome.result["id"])

        async with anyio.create_task_group() as tg:
            for start in range(4):
                tg.start_soon(some, start)


async def _count(deployment: Deployment, state: str) -> int:
    async with deployment.beside() as (dispatcher, _), dispatcher.runtime.db.transaction() as conn:
        query = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.state == state)
        return int((await conn.execute(query)).scalar_one())


async def _wait_for(deployment: Deployment, processes: list[anyio.abc.Process], succeeded: int) -> None:
    # Other processes do the work: poll the store, bounded, failing early if a worker died on its own.
    with anyio.fail_after(90):
        while await _count(deployment, "succeeded") < succeeded:
            assert all(p.returncode is None for p in processes), "a worker exited on its own"
            await anyio.sleep(0.2)


async def _holding_a_job(deployment: Deployment, process: anyio.abc.Process, log_dir: Path) -> None:
    """Make ``process``'s handlers block, and wait until it runs one of them: it then holds a lease
    until it dies, however fast jobs go."""
    (log_dir / f"hold-{process.pid}").touch()
    path = log_dir / f"{process.pid}.log"
    with anyio.fail_after(30):
        while True:
            lines = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
            unfinished = {job for event, job, _ in lines if event == "start"} - {
                job for event, job, _ in lines if event == "end"
            }
            async with deployment.beside() as (dispatcher, _), dispatcher.runtime.db.transaction() as conn:
                query = sa.select(jobs.c.id).where(jobs.c.state == "running", jobs.c.id.in_(unfinished))
                if (await conn.execute(query)).first() is not None:
                    return
            await anyio.sleep(0.05)


async def _terminate_connections(application_name: str) -> int:
    engine = create_engine(POSTGRES_ADMIN_URL)
    try:
        async with engine.begin() as conn:
            query = sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = :name AND pid <> pg_backend_pid()"
            )
            return int((await conn.execute(query, {"name": application_name})).scalar_one())
    finally:
        await engine.dispose()


def _side_effects(log_dir: Path) -> list[tuple[int, str, str, int]]:
    lines = []
    for path in log_dir.glob("*.log"):
        pid = int(path.stem)
        for line in path.read_text().splitlines():
            event, job_id, attempt = line.split()
            lines.append((pid, event, job_id, int(attempt)))
    return lines


async def _run_chaos(deployment: Deployment, tmp_path: Path, *, postgres: bool) -> None:
    key = await _worker_key(deployment)
    ids: set[str] = set()
    log_dir = tmp_path / "effects"
    log_dir.mkdir()
    env = deployment.env | {"SCALEMULE_API_KEY": key, "CHAOS_LOG_DIR": str(log_dir)}
    app_name = f"sm_chaos_{secrets.token_hex(4)}"
    if postgres:
        env["SCALEMULE_DATABASE_URL"] += f"&application_name={app_name}"
    argv = [SCALEMULE, "worker", "--handlers", "tests.e2e.chaos_handlers", "--concurrency", "4"]
    argv += ["--lease-seconds", str(LEASE_SECONDS), "--grace-seconds", "10"]
    processes = []
    logs = [(deployment.logs / f"worker-{i}.log").open("w") for i in range(WORKERS)]
    try:
        for log in logs:
            processes.append(await anyio.open_process(argv, env=env, cwd=REPO_ROOT, stdout=log, stderr=log))
        async with anyio.create_task_group() as enqueueing:
            enqueueing.start_soon(_enqueue, deployment, ids)
            await _wait_for(deployment, processes, JOBS // 5)
            victim = processes[0]
            await _holding_a_job(deployment, victim, log_dir)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
        survivors = [p for p in processes if p is not victim]
        if postgres:
            await _wait_for(deployment, survivors, JOBS // 2)
            assert await _terminate_connections(app_name) > 0
        await _wait_for(deployment, survivors, JOBS)
        for process in survivors:
            process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            for process in survivors:
                assert await process.wait() == 0
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
        for log in logs:
            log.close()
    await _check(deployment, ids, log_dir, victim.pid)


async def _check(deployment: Deployment, ids: set[str], log_dir: Path, victim: int) -> None:
    async with deployment.beside() as (dispatcher, _), dispatcher.runtime.db.transaction() as conn:
        rows = {r.id: r for r in await conn.execute(sa.select(jobs.c.id, jobs.c.state, jobs.c.attempt))}
        events = [
            stored_event(r)
            for r in await conn.execute(
                sa.select(audit_events).where(
                    audit_events.c.operation.in_(["jobs_claim", "jobs_complete", "jobs_rescue", "jobs_fail"])
                )
            )
        ]
    assert set(rows) == ids and {r.state for r in rows.values()} == {"succeeded"}
    completions = Counter(e["target"] for e in events if e["operation"] == "jobs_complete" and e["outcome"] == "ok")
    assert completions == Counter(ids), "every job completed exactly once"
    attempts: dict[str, list[int]] = defaultdict(list)
    for event in events:
        if event["operation"] == "jobs_claim" and event["outcome"] == "ok":
            for claimed in event["args"].get("claimed", []):
                attempts[claimed["job_id"]].append(claimed["attempt"])
    for job_id, row in rows.items():
        assert sorted(attempts[job_id]) == list(range(1, row.attempt + 1)), f"{job_id}: attempts not all audited"
    rescued = Counter(e["target"] for e in events if e["operation"] == "jobs_rescue")
    retried = {job_id for job_id, row in rows.items() if row.attempt > 1}
    assert retried == set(rescued), "every extra attempt follows an audited rescue"
    effects = _side_effects(log_dir)
    ends = Counter(job_id for _, event, job_id, _ in effects if event == "end")
    assert set(ends) == ids
    interrupted = {job_id for pid, event, job_id, _ in effects if pid == victim and event == "start"} - {
        job_id for pid, event, job_id, _ in effects if pid == victim and event == "end"
    }
    # The killed worker held leases when it died (in a handler or finishing one): those jobs were rescued
    # and run again by the others.
    assert retried, "the killed worker should have died holding jobs"
    assert interrupted <= retried
    # A side effect runs again only for a job whose earlier attempt lost its lease (the killed worker's).
    assert {job_id for job_id, n in ends.items() if n > 1} <= retried
    assert all(n <= 2 for n in ends.values())


async def test_four_workers_one_killed_run_two_thousand_jobs_exactly_once_on_sqlite(
    deployment: Deployment, tmp_path: Path
) -> None:
    await _run_chaos(deployment, tmp_path, postgres=False)


async def test_four_workers_one_killed_and_the_database_cut_run_two_thousand_jobs_exactly_once_on_postgres(
    postgres_deployment: Deployment, tmp_path: Path
) -> None:
    await _run_chaos(postgres_deployment, tmp_path, postgres=True)
