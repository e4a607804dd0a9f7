"""The error tree every layer raises and only dispatch translates.

Each error carries a stable ``code`` (the error contract in docs/errors.md), a message that says what
went wrong and a hint that says what to do next.
"""

from __future__ import annotations


class ScaleMuleError(Exception):
    """Base of every error a caller may see; ``code`` is stable, messages are not."""

    code = "internal"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        end = "" if self.message.endswith((".", "!", "?")) else "."
        return f"{self.code}: {self.message}{end}" + (f" {self.hint}" if self.hint else "")


class InvalidArgument(ScaleMuleError):
    """An argument is malformed or out of range."""

    code = "invalid_argument"


class Unauthenticated(ScaleMuleError):
    """No credential, or one that is unknown, revoked or expired."""

    code = "unauthenticated"


class PermissionDenied(ScaleMuleError):
    """The caller is known but may not do this here."""

    code = "permission_denied"


class NotFound(ScaleMuleError):
    """The named thing does not exist in the caller's tenant."""

    code = "not_found"


class AlreadyExists(ScaleMuleError):
    """A create collided with an existing thing of the same name."""

    code = "already_exists"


class Conflict(ScaleMuleError):
    """A concurrent change or a reused idempotency key with other arguments."""

    code = "conflict"


class FailedPrecondition(ScaleMuleError):
    """The system is not in a state that allows this call."""

    code = "failed_precondition"


class QuotaExceeded(ScaleMuleError):
    """A tenant limit would be passed."""

    code = "quota_exceeded"


class RateLimited(ScaleMuleError):
    """Too many calls; retry later."""

    code = "rate_limited"


class Internal(ScaleMuleError):
    """A fault on our side; details go to the server log, never to the caller."""

    code = "internal"


ERROR_CODES: tuple[str, ...] = tuple(
    cls.code
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        Conflict,
        FailedPrecondition,
        QuotaExceeded,
        RateLimited,
        Internal,
    )
)
