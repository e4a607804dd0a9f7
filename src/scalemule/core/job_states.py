"""The job state machine, retry backoff and the rules of a job's fields: pure functions, no I/O.

Every move of a job goes through ``transition``; core.jobs applies the result to the database with an
update that matches the state it read, so a concurrent move makes the second writer see a conflict
instead of overwriting the first.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from scalemule.core.errors import FailedPrecondition, InvalidArgument

State = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled"]
Action = Literal["claim", "heartbeat", "complete", "fail", "give_up", "cancel", "stop", "retry", "rescue"]

STATES: tuple[State, ...] = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
# States a worker may claim from: queued, and failed (waiting for its next attempt).
CLAIMABLE: tuple[State, ...] = ("queued", "failed")
FINAL: tuple[State, ...] = ("succeeded", "dead", "cancelled")

# (state, action) -> next state. Anything absent is illegal.
TRANSITIONS: dict[tuple[State, Action], State] = {
    ("queued", "claim"): "running",
    ("failed", "claim"): "running",
    ("running", "heartbeat"): "running",
    ("running", "complete"): "succeeded",
    # A failed attempt that will run again at next_run_at.
    ("running", "fail"): "failed",
    # Attempts exhausted, or an error the worker says retrying cannot fix.
    ("running", "give_up"): "dead",
    # Cancelling a running job only requests it; the worker sees the request on its next heartbeat.
    ("running", "cancel"): "running",
    ("queued", "cancel"): "cancelled",
    ("failed", "cancel"): "cancelled",
    # A running job whose cancellation was requested ends cancelled when its attempt stops.
    ("running", "stop"): "cancelled",
    ("failed", "retry"): "queued",
    ("dead", "retry"): "queued",
    ("cancelled", "retry"): "queued",
    # The lease expired: the attempt is counted and the job queued again.
    ("running", "rescue"): "queued",
}

_HINTS: dict[Action, str] = {
    "claim": "Only queued or failed jobs are claimed.",
    "heartbeat": "Only a running job takes heartbeats.",
    "complete": "Only a running job is completed.",
    "fail": "Only a running job is failed.",
    "give_up": "Only a running job is failed.",
    "cancel": "Only queued, failed or running jobs can be cancelled; use jobs_retry to run a finished one again.",
    "stop": "Only a running job is stopped.",
    "retry": "Only failed, dead or cancelled jobs can be retried; see jobs_get for its state.",
    "rescue": "Only a running job is rescued.",
}


def transition(state: str, action: Action) -> State:
    """The state a job in ``state`` moves to on ``action``.

    Raises:
        FailedPrecondition: the move is illegal; the message names the current state.
    """
    found = TRANSITIONS.get((state, action))  # type: ignore[arg-type]
    if found is None:
        raise FailedPrecondition(f"cannot {action.replace('_', ' ')} a job that is {state}", hint=_HINTS[action])
    return found


def after_failure(*, attempt: int, max_attempts: int, retryable: bool, cancel_requested: bool) -> Action:
    """What a failed (or abandoned) attempt does: stop if cancelled, else run again or give up."""
    if cancel_requested:
        return "stop"
    return "fail" if retryable and attempt < max_attempts else "give_up"


MAX_JSON_BYTES = 256 * 1024
QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
KIND_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$"
_QUEUE = re.compile(QUEUE_PATTERN)
_KIND = re.compile(KIND_PATTERN)


def check_queue(name: str) -> str:
    """Return ``name`` if it is a valid queue name.

    Raises:
        InvalidArgument: not 1-64 lowercase letters, digits, ``_`` and ``-``, starting with a letter or digit.
    """
    if not _QUEUE.match(name):
        raise InvalidArgument(
            f"queue name {name[:70]!r} is not valid: use 1-64 lowercase letters, digits, '_' and '-'",
            hint="e.g. queue='default' or queue='images-high'.",
        )
    return name


def check_kind(name: str) -> str:
    """Return ``name`` if it is a valid job kind.

    Raises:
        InvalidArgument: not 1-128 letters, digits and ``_ . : -``, starting with a letter.
    """
    if not _KIND.match(name):
        raise InvalidArgument(
            f"job kind {name[:130]!r} is not valid: use 1-128 letters, digits and _ . : -, starting with a letter",
            hint="e.g. kind='describe_dishes'.",
        )
    return name


def check_json_size(value: Any, what: str) -> Any:
    """Return ``value`` if it is JSON (no NaN or infinity) and its JSON form fits ``MAX_JSON_BYTES``.

    Raises:
        InvalidArgument: NaN or infinity inside it, or it is larger, naming the limit and where big data
            belongs.
    """
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())
    except ValueError:
        raise InvalidArgument(
            f"{what} holds NaN or infinity, which are not JSON numbers", hint="Send them as strings or null."
        ) from None
    if size > MAX_JSON_BYTES:
        raise InvalidArgument(
            f"{what} is {size:,} bytes of JSON, over the limit of {MAX_JSON_BYTES:,} (256 KiB)",
            hint=f"Store large data with storage_put_object and put its key in the {what}.",
        )
    return value


BACKOFF_BASE = timedelta(seconds=2)
BACKOFF_CAP = timedelta(minutes=10)


def backoff(attempt: int, *, rand: Callable[[], float] = random.random) -> timedelta:
    """Delay before the attempt after ``attempt`` (1-based): exponential, capped, with jitter.

    ``base * 2**(attempt-1)``, capped, then scaled into [50%, 100%] of itself ("equal jitter"), so that
    jobs failing together spread out yet none retries sooner than half its nominal delay.
    """
    exponent = min(max(attempt - 1, 0), 30)
    nominal = min(BACKOFF_BASE * (2**exponent), BACKOFF_CAP)
    return timedelta(seconds=nominal.total_seconds() * (0.5 + 0.5 * rand()))
