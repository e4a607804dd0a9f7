from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.dialects import sqlite

from scalemule.core.errors import InvalidArgument
from scalemule.core.job_states import (
    BACKOFF_CAP,
    CLAIMABLE,
    MAX_JSON_BYTES,
    TRANSITIONS,
    after_failure,
    backoff,
    check_json_size,
    transition,
)
from scalemule.db.tables.jobs import CLAIMABLE_ROWS


def test_backoff_doubles_per_attempt_at_its_upper_jitter_bound() -> None:
    assert [backoff(n, rand=lambda: 1.0).total_seconds() for n in (1, 2, 3, 4)] == [2, 4, 8, 16]


def test_backoff_jitter_keeps_each_delay_between_half_and_all_of_its_nominal_value() -> None:
    assert backoff(3, rand=lambda: 0.0) == timedelta(seconds=4)
    assert backoff(3, rand=lambda: 0.5) == timedelta(seconds=6)


@pytest.mark.parametrize("attempt", [10, 50, 10_000])
def test_backoff_is_capped(attempt: int) -> None:
    assert backoff(attempt, rand=lambda: 1.0) == BACKOFF_CAP


def test_a_failed_attempt_runs_again_until_attempts_are_exhausted_or_it_is_not_retryable() -> None:
    assert after_failure(attempt=1, max_attempts=3, retryable=True, cancel_requested=False) == "fail"
    assert after_failure(attempt=3, max_attempts=3, retryable=True, cancel_requested=False) == "give_up"
    assert after_failure(attempt=1, max_attempts=3, retryable=False, cancel_requested=False) == "give_up"
    assert after_failure(attempt=1, max_attempts=3, retryable=True, cancel_requested=True) == "stop"


def test_no_move_leaves_a_finished_state_except_retry() -> None:
    for (state, action), _ in TRANSITIONS.items():
        if state in ("succeeded", "dead", "cancelled"):
            assert action == "retry"
    assert transition("dead", "retry") == "queued"


def test_a_value_whose_json_is_exactly_the_limit_is_accepted_and_one_byte_more_is_not() -> None:
    exactly = "x" * (MAX_JSON_BYTES - 2)  # the quotes make up the rest
    assert check_json_size(exactly, "payload") == exactly
    with pytest.raises(InvalidArgument):
        check_json_size(exactly + "x", "payload")


def test_the_claim_index_and_claims_name_exactly_the_claimable_states() -> None:
    # Written out in SQL (tables.jobs.CLAIMABLE_ROWS) so the partial index ix_jobs_claim serves claims.
    listed = ", ".join(f"'{state}'" for state in CLAIMABLE)
    assert str(CLAIMABLE_ROWS.compile(dialect=sqlite.dialect())) == f"jobs.state IN ({listed})"
    assert {transition(state, "claim") for state in CLAIMABLE} == {"running"}
