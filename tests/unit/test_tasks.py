"""A job read as an MCP Task: status, message, poll interval and times (operations.tasks)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from scalemule.core.jobs import Job
from scalemule.operations.tasks import TaskView, pace
from scalemule.surfaces import tasks

NOW = datetime(2026, 7, 28, 12, 0, tzinfo=UTC)
TTL = timedelta(days=7)
QUEUED = Job(
    id="job_1",
    tenant_id="ten_1",
    queue="default",
    kind="describe_dishes",
    payload={},
    state="queued",
    priority=0,
    attempt=0,
    max_attempts=5,
    timeout_seconds=None,
    run_at=NOW,
    lease_token=None,
    lease_expires_at=None,
    worker_id=None,
    cancel_requested=False,
    progress=None,
    progress_message=None,
    result=None,
    last_error=None,
    created_by=None,
    created_key=None,
    created_at=NOW,
    started_at=None,
    finished_at=None,
)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("queued", "working"),
        ("running", "working"),
        ("failed", "working"),
        ("succeeded", "completed"),
        ("dead", "completed"),
        ("cancelled", "cancelled"),
    ],
)
def test_every_job_state_maps_to_a_task_status_and_never_to_failed(state: str, status: str) -> None:
    view = TaskView.of(replace(QUEUED, state=state), ttl=TTL, now=NOW)
    assert view.status == status
    assert view.is_error is (state == "dead")


def test_a_running_task_says_its_progress_attempt_and_a_requested_cancellation() -> None:
    job = replace(QUEUED, state="running", attempt=2, progress=0.5, progress_message="halfway", cancel_requested=True)
    message = TaskView.of(job, ttl=TTL, now=NOW).status_message
    assert message == "running 50%: halfway (attempt 2 of 5, cancellation requested)"


def test_the_poll_interval_follows_the_jobs_pace_within_one_and_thirty_seconds() -> None:
    assert pace(QUEUED, NOW) == timedelta(seconds=2)
    assert pace(replace(QUEUED, timeout_seconds=10), NOW) == timedelta(seconds=1)
    assert pace(replace(QUEUED, timeout_seconds=3600), NOW) == timedelta(seconds=30)
    later = replace(QUEUED, state="failed", run_at=NOW + timedelta(seconds=12))
    assert pace(later, NOW) == timedelta(seconds=12)


def test_last_updated_is_the_latest_of_creation_start_and_finish() -> None:
    done = replace(
        QUEUED, state="succeeded", started_at=NOW + timedelta(seconds=1), finished_at=NOW + timedelta(seconds=5)
    )
    view = TaskView.of(done, ttl=TTL, now=NOW)
    assert view.last_updated_at == NOW + timedelta(seconds=5) and view.ttl_ms == 7 * 24 * 3600 * 1000


def test_a_completed_task_carries_the_tool_result_and_its_creation_never_does() -> None:
    done = replace(QUEUED, state="succeeded", attempt=1, result={"n": 1}, finished_at=NOW)
    view = TaskView.of(done, ttl=TTL, now=NOW).model_dump(mode="json")
    body = tasks.task(view)
    assert body["result"]["structuredContent"]["result"] == {"n": 1} and body["result"]["isError"] is False
    assert "result" not in tasks.created(view) and tasks.created(view)["resultType"] == "task"


def test_a_dead_jobs_task_result_is_an_error_naming_the_last_error() -> None:
    dead = replace(QUEUED, state="dead", attempt=5, last_error="model refused", finished_at=NOW)
    body = tasks.task(TaskView.of(dead, ttl=TTL, now=NOW).model_dump(mode="json"))
    assert body["status"] == "completed" and body["result"]["isError"] is True
    assert body["result"]["structuredContent"]["error"]["code"] == "failed_precondition"
    assert "model refused" in body["result"]["content"][0]["text"]
