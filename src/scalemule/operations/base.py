"""What every operation shares: argument bases, the per-call context, common views and redaction."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from scalemule.core import access
from scalemule.core import grants as core_grants
from scalemule.core.access import Grant, KeyInfo, Principal, Tenant
from scalemule.core.errors import FailedPrecondition, PermissionDenied
from scalemule.core.tenants import SLUG_PATTERN
from scalemule.db.engine import Connection, in_snapshot
from scalemule.runtime import Runtime

REDACTED = "[redacted]"
# What a replayed result holds in place of a one-time value (an API key token): it was shown once.
SHOWN_ONCE = "[shown once: not retrievable]"
MAX_PAGE = 200


def _printable(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")
    return value


# Printable text: the form of every name. Checked by a validator, not a pattern, to keep schemas short.
Printable = AfterValidator(_printable)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), Printable]


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError("must be letters, digits and _ : . - only")
    return value


_IDENTIFIER = re.compile(r"^[A-Za-z0-9_:.-]+$")
# Ids and permission names. Checked by a validator rather than a schema pattern: it repeats on many
# tools, and a violation names the allowed form.
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_identifier)]
Slug = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=SLUG_PATTERN)]
Email = Annotated[str, StringConstraints(min_length=3, max_length=320, pattern=r"^[^\s@]+@[^\s@]+$"), Printable]
# The tenant argument of every tenant-scoped tool: its form is checked by dispatch, which answers any
# tenant the caller cannot use with the same permission_denied, so the schema stays short.
TenantSlug = Annotated[str, StringConstraints(max_length=64)]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=200), Printable]


@dataclass(frozen=True)
class Sensitive:
    """Marks a field whose value must never reach the audit log, a replayed result or a log line."""


SecretText = Annotated[str, Sensitive()]


def _storable_text(data: Any) -> Any:
    # Every string, keys included, at any depth. NUL cannot be stored in PostgreSQL text and is never
    # meaningful here; a lone surrogate (a JSON "\ud800" escape, or command-line bytes that are not
    # UTF-8) is not Unicode and cannot be encoded for any store or hash.
    for text in _strings(data):
        if "\x00" in text:
            raise ValueError("NUL characters (\\u0000) are not accepted in any argument")
        if not text.isascii() and encodable(text) != text:
            raise ValueError("text holds a lone surrogate, which is not valid Unicode: send UTF-8 text")
    return data


def _strings(value: Any) -> Iterator[str]:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list | tuple):
            pending += item


_INT64 = range(-(2**63), 2**63)


class Args(BaseModel):
    """Base of every argument model: unknown fields, NUL and lone surrogates are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    _storable = model_validator(mode="before")(_storable_text)

    @model_validator(mode="after")
    def _integers_fit_a_column(self) -> Args:
        # Integer arguments become SQL parameters and no column holds more than 64 bits: refusing a
        # larger one here answers invalid_argument instead of failing inside the driver.
        for name in type(self).model_fields:
            value = getattr(self, name)
            if type(value) is int and value not in _INT64:
                raise ValueError(f"{name} must be between -2**63 and 2**63-1")
        return self


class TenantArgs(Args):
    """Arguments of a tenant-scoped operation."""

    tenant: TenantSlug | None = Field(default=None, description="Default: your key's tenant.")


class PageArgs(Args):
    """Pagination arguments of a list operation."""

    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    # Named like the next_cursor every list returns: the name says it, the tool list need not.
    cursor: str | None = Field(default=None, max_length=1000)


class TenantPageArgs(TenantArgs, PageArgs):
    """Pagination arguments of a tenant-scoped list operation."""


class Result(BaseModel):
    """Base of every result model."""

    model_config = ConfigDict(frozen=True, defer_build=True)


@dataclass
class AuditNote:
    """What a handler may add to its call's audit event.

    Attributes:
        tenant_id: the tenant whose log should hold it, for calls that create one (the caller had no
            tenant when the call began).
        tally: this call changed nothing (an idle poll, a bare lease extension): when it succeeds, record
            it in aggregate (core.audit_rollups) instead of as an event of its own.
        details: facts the arguments do not show (e.g. which jobs a claim took), added to the recorded
            arguments when the call succeeds.
    """

    tenant_id: str | None = None
    tally: bool = False
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class Call:
    """Everything a handler may use: the unit of work and the authorized caller."""

    conn: Connection
    runtime: Runtime
    principal: Principal
    key: KeyInfo | None
    tenant: Tenant | None
    role: str | None
    permissions: frozenset[str]
    audit: AuditNote = field(default_factory=AuditNote)
    # Where a call run as a task reports how far it got (``report``); None for an ordinary call.
    progress: Callable[[float, str | None], None] | None = None
    # The caller's grants, read at most once per call and only when asked for (see ``grants``).
    _grants: list[list[Grant]] = field(default_factory=list, repr=False)

    def report(self, fraction: float, message: str | None = None) -> None:
        """Say how far a long call got (0..1, a short note): a task's client reads it on ``tasks/get``.
        Cheap and synchronous: the task's runner writes the latest report with its next heartbeat."""
        if self.progress is not None:
            self.progress(min(max(fraction, 0.0), 1.0), message)

    async def grants(self) -> list[Grant]:
        """The grants this call may use in its tenant (core.access.Grant); read once, on first use."""
        if not self._grants:
            found: list[Grant] = []
            if self.tenant is not None:
                found = await core_grants.held(
                    self.conn, tenant_id=self.tenant.id, principal_id=self.principal.id, key=self.key
                )
            self._grants.append(found)
        return self._grants[0]

    async def require_on(self, permission: str, target: tuple[str, str], *, doing: str) -> None:
        """Refuse an action on ``target`` (env, name) unless the caller's permissions or one of its
        grants cover it (``access.allowed``). Grants are read only when the permissions fall short.

        Raises:
            PermissionDenied: naming the permission and the target.
        """
        if permission in self.permissions:
            return
        if access.allowed(self.permissions, await self.grants(), permission, target=target):
            return
        where = f" in tenant '{self.tenant.slug}'" if self.tenant is not None else ""
        raise PermissionDenied(
            f"{self.principal.kind} '{self.principal.name}' lacks {permission!r} on {'/'.join(target)!r}{where}"
            f" (role {self.role!r}, no grant matches) to {doing}",
            hint="See your grants with whoami; ask an owner or admin for a grant (grants_create) on this name.",
        )

    @asynccontextmanager
    async def bookkeeping(self) -> AsyncIterator[Connection]:
        """Where a read writes what it needs written before it reads on (audit_query folds tallied calls
        into events first): the call's own transaction, or, for a read that runs apart from writers
        (``UnitOfWork.read``), a short transaction of its own, committed before the read goes on."""
        if not in_snapshot():
            yield self.conn
            return
        async with self.runtime.db.transaction() as conn:
            yield conn

    @property
    def tenant_id(self) -> str:
        """The authorized tenant's id (tenant-scoped operations always have one)."""
        if self.tenant is None:
            raise FailedPrecondition("this operation needs a tenant", hint="Pass tenant=<slug>.")
        return self.tenant.id

    def allows(self, permission: str, *, protected_env: bool = False) -> bool:
        """True when the caller may act with ``permission`` (in a protected environment, if so)."""
        return not access.missing(self.permissions, permission, protected_env=protected_env)

    def require(self, permission: str, *, doing: str, protected_env: bool = False) -> None:
        """Refuse an action whose rule (``access.needs``) asks for more than the call's operation.

        Raises:
            PermissionDenied: naming what the caller lacks and the next step.
        """
        lacking = access.missing(self.permissions, permission, protected_env=protected_env)
        if lacking:
            where = f" in tenant '{self.tenant.slug}'" if self.tenant is not None else ""
            raise PermissionDenied(
                f"{self.principal.kind} '{self.principal.name}' lacks {', '.join(map(repr, lacking))}{where}"
                f" (role {self.role!r}) to {doing}",
                hint=access.advice(lacking, permission),
            )


class PrincipalView(Result):
    """A principal as shown to callers."""

    id: str
    kind: str
    name: str

    @classmethod
    def of(cls, principal: Principal) -> PrincipalView:
        """View of ``principal``."""
        return cls(id=principal.id, kind=principal.kind, name=principal.name)


class TenantView(Result):
    """A tenant as shown to callers."""

    id: str
    slug: str
    name: str
    created_at: datetime | None = None

    @classmethod
    def of(cls, tenant: Tenant) -> TenantView:
        """View of ``tenant``."""
        return cls(id=tenant.id, slug=tenant.slug, name=tenant.name, created_at=tenant.created_at)


def _is_sensitive(model: type[BaseModel], field: str) -> bool:
    return field in _sensitive_fields(model)


@functools.cache
def _sensitive_fields(model: type[BaseModel]) -> frozenset[str]:
    # Once per model: every audited call redacts its arguments, and a model's fields never change.
    return frozenset(
        name for name, info in model.model_fields.items() if any(isinstance(m, Sensitive) for m in info.metadata)
    )


def redacted(model: type[BaseModel], data: dict[str, Any], marker: str = REDACTED) -> dict[str, Any]:
    """``data`` (a dump of ``model``) with every Sensitive field replaced by ``marker``, at any depth.

    A field ``model`` does not declare (a misspelling, a guess) may hold anything, a secret included:
    only its name and size are kept (``unrecorded``).
    """
    out: dict[str, Any] = {}
    for name, value in data.items():
        info = model.model_fields.get(name)
        if info is None:
            out[name] = unrecorded(value)
        elif _is_sensitive(model, name):
            out[name] = marker
        elif isinstance(value, dict | list):
            out[name] = _redact_nested(info.annotation, value, marker)
        else:
            out[name] = value
    return out


def unrecorded(value: Any) -> str:
    """What the audit log keeps of a value it cannot vouch for: its JSON type and size, never the value."""
    if isinstance(value, str):
        return f"[not recorded: string of {len(value)} chars]"
    if isinstance(value, dict):
        return f"[not recorded: object of {len(value)} keys]"
    if isinstance(value, list | tuple):
        return f"[not recorded: array of {len(value)} items]"
    if value is None:
        return "[not recorded: null]"
    return f"[not recorded: {'boolean' if isinstance(value, bool) else 'number'}]"


def _redact_nested(annotation: Any, value: dict[str, Any] | list[Any], marker: str) -> Any:
    nested = _model_in(annotation)
    if nested is None:
        return value
    if isinstance(value, dict):
        return redacted(nested, value, marker)
    return [redacted(nested, v, marker) if isinstance(v, dict) else v for v in value]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def encodable(text: str) -> str:
    """``text`` with lone surrogates replaced: they cannot be encoded as UTF-8, so no store or hash takes them.

    They arrive from a JSON ``"\\ud800"`` escape or from command-line bytes that are not UTF-8.
    """
    return text if text.isascii() else text.encode(errors="replace").decode()


def bounded(value: Any, *, depth: int = 0) -> Any:
    """A copy of arbitrary JSON input small enough to record: long strings cut, deep nesting cut."""
    if depth > 6:
        return "…"
    if isinstance(value, str):
        value = encodable(value)
        return value if len(value) <= 256 else f"{value[:256]}…({len(value)} chars)"
    if isinstance(value, dict):
        items = list(value.items())
        out = {encodable(str(k))[:64]: bounded(v, depth=depth + 1) for k, v in items[:50]}
        if len(items) > 50:
            out["…"] = f"{len(items) - 50} more keys"
        return out
    if isinstance(value, list):
        return [bounded(v, depth=depth + 1) for v in value[:50]] + (["…"] if len(value) > 50 else [])
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # NaN and infinity are not JSON; PostgreSQL refuses them
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)[:256]


def recorded_args(model: type[BaseModel] | None, raw: Any) -> dict[str, Any]:
    """Arguments as the audit log keeps them: Sensitive fields replaced, size bounded.

    Works on raw input too, so calls with invalid arguments are recorded without leaking: what cannot
    be checked against a model (every argument of an unknown operation, fields the model does not
    declare, arguments that are not an object) is recorded by name and size only.
    """
    if not isinstance(raw, dict):
        return {"_invalid": unrecorded(raw)}
    if model is None:
        return {encodable(str(name))[:64]: unrecorded(value) for name, value in list(raw.items())[:50]}
    recorded: dict[str, Any] = bounded(redacted(model, raw), depth=-1)
    return recorded
