"""A job read as an MCP Task: status, message, poll interval, times and result (operations.tasks), for a
jobs_run task and for a task the server runs (audit_verify); which operations may run as tasks."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from scalemule.core.jobs import SERVER_QUEUE, Job
from scalemule.operations.base import Args, SecretText, TenantArgs
from scalemule.operations.registry import check_task
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


SERVER = replace(QUEUED, queue=SERVER_QUEUE, kind="audit_verify", max_attempts=3)
REPORT = {"ok": True, "from_seq": 1, "to_seq": 9, "events": 9, "checkpoints": 1, "last_checkpoint": 8}


def test_a_server_task_names_its_operation_and_a_jobs_run_task_none() -> None:
    assert TaskView.of(SERVER, ttl=TTL, now=NOW).operation == "audit_verify"
    assert TaskView.of(QUEUED, ttl=TTL, now=NOW).operation is None


def test_a_completed_server_task_carries_exactly_the_result_its_tool_returns() -> None:
    done = replace(SERVER, state="succeeded", attempt=1, result=REPORT, finished_at=NOW)
    view = TaskView.of(done, ttl=TTL, now=NOW).model_dump(mode="json")
    body = tasks.task(view)
    assert body["status"] == "completed" and body["result"] == tasks.ok_result(REPORT)
    assert json.loads(body["result"]["content"][0]["text"]) == REPORT
    assert "result" not in tasks.created(view)


def test_a_server_task_that_failed_answers_its_operations_error_with_code_and_hint() -> None:
    error = {"code": "unauthenticated", "message": "API key smk_ab… was revoked", "hint": "Create a key."}
    dead = replace(SERVER, state="dead", attempt=1, result={"error": error}, last_error="unauthenticated: …")
    body = tasks.task(TaskView.of(dead, ttl=TTL, now=NOW).model_dump(mode="json"))
    assert body["status"] == "completed" and body["result"]["isError"] is True
    assert body["statusMessage"] == "ended with an error (attempt 1 of 3): unauthenticated: …"
    assert body["result"]["structuredContent"] == {"error": error}
    assert body["result"]["content"][0]["text"] == "unauthenticated: API key smk_ab… was revoked. Create a key."


def test_a_server_task_whose_every_run_lost_its_server_is_an_internal_error_naming_the_tool() -> None:
    dead = replace(SERVER, state="dead", attempt=3, last_error="lease expired at … during attempt 3")
    result = tasks.task(TaskView.of(dead, ttl=TTL, now=NOW).model_dump(mode="json"))["result"]
    assert result["isError"] is True and result["structuredContent"]["error"]["code"] == "internal"
    assert "audit_verify stopped before it finished, 3 times" in result["content"][0]["text"]


class _Reading(TenantArgs):
    since: int = 0


class _Keyed(TenantArgs):
    idempotency_key: str | None = None


class _Secretive(TenantArgs):
    value: SecretText = ""


@pytest.mark.parametrize(
    ("args", "read_only", "rule"),
    [
        (_Reading, False, "read-only"),
        (Args, True, "tenant-scoped"),
        (_Keyed, True, "idempotency_key"),
        (_Secretive, True, "'value'"),
    ],
)
def test_only_a_read_only_tenant_operation_without_secrets_may_run_as_a_task(
    args: type[Args], read_only: bool, rule: str
) -> None:
    with pytest.raises(ValueError, match=rule):
        check_task("x_run", args, read_only=read_only)
    check_task("x_run", _Reading, read_only=True)
