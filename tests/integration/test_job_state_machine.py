"""The job state machine, driven by hypothesis against a plain model, on SQLite and PostgreSQL.

The model is written independently of ``core.job_states``: a dict per job with its state, attempts,
cancel request and lease tokens. Every rule runs the real core function on the real store and
compares its outcome (new state, or error code) with what the model predicts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from scalemule.core import bootstrap, jobs
from scalemule.core.errors import ScaleMuleError
from scalemule.runtime import Runtime
from scalemule.settings import Settings

T = TypeVar("T")
LEASE = timedelta(seconds=30)
START = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


@dataclass
class ModelJob:
    state: str = "queued"
    attempt: int = 0
    max_attempts: int = 1
    cancel_requested: bool = False
    token: str | None = None
    stale: list[str] = field(default_factory=list)
    due: datetime = START
    lease_until: datetime = START


class Store:
    """The runtime and the tenant the machine acts in, reached from hypothesis's thread via a portal."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, settings: Settings) -> None:
        self.portal = portal
        self.runtime = Runtime.open(settings)
        made = portal.call(self._init)
        self.tenant_id, self.worker = made.tenant.id, made.agent

    async def _init(self) -> bootstrap.Bootstrap:
        return await bootstrap.initialize(self.runtime.db, slug="machine", owner_email="m@example.com")

    def run(self, body: Callable[[Any], Awaitable[T]]) -> T | str:
        """Run ``body(conn)`` in one unit of work; returns its value, or the error code it raised."""

        async def go() -> T | str:
            try:
                async with self.runtime.db.transaction() as conn:
                    return await body(conn)
            except ScaleMuleError as exc:
                return exc.code

        return self.portal.call(go)


class JobMachine(RuleBasedStateMachine):
    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelJob] = {}
        self.now = START

    handles = Bundle("jobs")

    @initialize()
    def clean(self) -> None:
        async def wipe(conn: Any) -> None:
            await conn.execute(jobs.jobs.delete())

        self.store.run(wipe)

    @rule(target=handles, max_attempts=st.integers(1, 3))
    def enqueue(self, max_attempts: int) -> str:
        new = jobs.NewJob(tenant_id=self.store.tenant_id, kind="k", payload={"n": 1}, max_attempts=max_attempts)
        job = self.store.run(lambda c: jobs.enqueue(c, new, now=self.now))
        assert not isinstance(job, str)
        self.model[job.id] = ModelJob(max_attempts=max_attempts, due=self.now)
        return job.id

    @rule(limit=st.integers(1, 3))
    def claim(self, limit: int) -> None:
        claimed = self.store.run(
            lambda c: jobs.claim(
                c,
                self.store.tenant_id,
                worker=self.store.worker,
                queues=None,
                kinds=None,
                limit=limit,
                lease=LEASE,
                now=self.now,
            )
        )
        assert not isinstance(claimed, str)
        due = [i for i, m in self.model.items() if m.state in ("queued", "failed") and m.due <= self.now]
        assert len(claimed) == min(limit, len(due))
        for job in claimed:
            m = self.model[job.id]
            assert job.id in due and job.state == "running"
            m.state, m.attempt = "running", m.attempt + 1
            if m.token:
                m.stale.append(m.token)
            m.token = job.lease_token
            m.lease_until = self.now + LEASE
            assert job.attempt == m.attempt

    def _settle(self, job_id: str, got: Any, expected_state: str | None, expected_code: str | None) -> None:
        if expected_code is not None:
            assert got == expected_code, (got, expected_code)
            return
        assert not isinstance(got, str), got
        assert got.state == expected_state
        m = self.model[job_id]
        if m.state == "running" and expected_state != "running" and m.token:
            m.stale.append(m.token)
            m.token = None
        m.state = expected_state

    @rule(job_id=handles)
    def complete(self, job_id: str) -> None:
        m = self.model[job_id]
        token = m.token or "no-lease"
        got = self.store.run(lambda c: jobs.complete(c, self.store.tenant_id, job_id, token, {"ok": 1}, now=self.now))
        running = m.state == "running"
        self._settle(job_id, got, "succeeded" if running else None, None if running else "conflict")

    @rule(job_id=handles, retryable=st.booleans())
    def fail(self, job_id: str, retryable: bool) -> None:
        m = self.model[job_id]
        token = m.token or "no-lease"
        got = self.store.run(
            lambda c: jobs.fail(
                c, self.store.tenant_id, job_id, token, "boom", retryable=retryable, now=self.now, rand=lambda: 1.0
            )
        )
        if m.state != "running":
            self._settle(job_id, got, None, "conflict")
            return
        if m.cancel_requested:
            expected = "cancelled"
        elif retryable and m.attempt < m.max_attempts:
            expected = "failed"
            m.due = self.now + timedelta(seconds=2 * 2 ** (m.attempt - 1))
        else:
            expected = "dead"
        self._settle(job_id, got, expected, None)

    @rule(job_id=handles)
    def stale_write(self, job_id: str) -> None:
        m = self.model[job_id]
        if not m.stale:
            return
        got = self.store.run(
            lambda c: jobs.heartbeat(
                c, self.store.tenant_id, job_id, m.stale[-1], progress=0.5, message=None, extend=None, now=self.now
            )
        )
        assert got == "conflict"

    @rule(job_id=handles)
    def cancel(self, job_id: str) -> None:
        m = self.model[job_id]
        got = self.store.run(lambda c: jobs.cancel(c, self.store.tenant_id, job_id, now=self.now))
        if m.state == "running":
            self._settle(job_id, got, "running", None)
            m.cancel_requested = True
        elif m.state in ("queued", "failed"):
            self._settle(job_id, got, "cancelled", None)
        else:
            self._settle(job_id, got, None, "failed_precondition")

    @rule(job_id=handles)
    def retry(self, job_id: str) -> None:
        m = self.model[job_id]
        got = self.store.run(lambda c: jobs.retry(c, self.store.tenant_id, job_id, now=self.now))
        if m.state in ("failed", "dead", "cancelled"):
            self._settle(job_id, got, "queued", None)
            m.attempt, m.cancel_requested, m.due = 0, False, self.now
        else:
            self._settle(job_id, got, None, "failed_precondition")

    @rule(seconds=st.sampled_from([1, 10, 31, 120]))
    def time_passes_and_leases_are_rescued(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)
        rescued = self.store.run(
            lambda c: jobs.rescue_expired(c, now=self.now, rescuer=self.store.worker, tenant_id=self.store.tenant_id)
        )
        assert not isinstance(rescued, str)
        for job in rescued:
            m = self.model[job.id]
            assert m.state == "running"
            m.stale.append(m.token or "")
            m.token = None
            m.state = "cancelled" if m.cancel_requested else "queued" if m.attempt < m.max_attempts else "dead"
            m.due = self.now
            assert job.state == m.state
        # No lease that expired before now survives a rescue pass.
        assert not [i for i, m in self.model.items() if m.state == "running" and m.lease_until < self.now]

    @invariant()
    def stored_states_match_the_model(self) -> None:
        if not self.model:
            return

        async def states(conn: Any) -> dict[str, tuple[str, int]]:
            rows = await conn.execute(jobs.sa.select(jobs.jobs.c.id, jobs.jobs.c.state, jobs.jobs.c.attempt))
            return {r.id: (r.state, r.attempt) for r in rows}

        stored = self.store.run(states)
        assert stored == {i: (m.state, m.attempt) for i, m in self.model.items()}


@contextmanager
def _machine_store(store: Settings) -> Iterator[Store]:
    with anyio.from_thread.start_blocking_portal() as portal:
        made = Store(portal, store)
        try:
            yield made
        finally:
            portal.call(made.runtime.close)


def test_the_job_state_machine_matches_a_simple_model(store: Settings) -> None:
    with _machine_store(store) as made:
        JobMachine.store = made
        run_state_machine_as_test(
            JobMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


@pytest.mark.parametrize(
    ("state", "action"),
    [("succeeded", "cancel"), ("queued", "retry"), ("running", "retry"), ("dead", "cancel"), ("queued", "complete")],
)
def test_an_illegal_move_is_a_failed_precondition_naming_the_current_state(state: str, action: Any) -> None:
    from scalemule.core.job_states import transition

    with pytest.raises(ScaleMuleError) as raised:
        transition(state, action)
    assert raised.value.code == "failed_precondition"
    assert state in raised.value.message
