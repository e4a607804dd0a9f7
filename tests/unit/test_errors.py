from __future__ import annotations

from scalemule.core import errors
from scalemule.core.errors import ERROR_CODES, NotFound, ScaleMuleError

DESIGNED_CODES = {
    "invalid_argument",
    "unauthenticated",
    "permission_denied",
    "not_found",
    "already_exists",
    "conflict",
    "failed_precondition",
    "quota_exceeded",
    "rate_limited",
    "internal",
}


def test_the_error_codes_are_exactly_the_documented_ones() -> None:
    assert set(ERROR_CODES) == DESIGNED_CODES
    assert len(ERROR_CODES) == len(DESIGNED_CODES)


def test_every_error_class_carries_a_documented_code() -> None:
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, ScaleMuleError)]
    assert {cls.code for cls in classes} <= DESIGNED_CODES


def test_an_error_reads_as_its_code_then_the_message_then_the_next_step() -> None:
    error = NotFound("no key 'k'", hint="List keys with keys_list.")
    text = str(error)
    assert text.startswith("not_found: no key 'k'") and text.endswith("List keys with keys_list.")
    assert str(NotFound("gone")).startswith("not_found: gone")
