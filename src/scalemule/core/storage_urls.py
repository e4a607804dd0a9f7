"""Serving signed object URLs: the one path other than dispatch by which objects are read or written.

The token is the credential, so these requests bypass API-key authentication; they are authorized
again here (the signer must still hold the permission) and audited like dispatch: a write and its
audit event commit in one transaction, and a refused or failed request is recorded in a fresh one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from scalemule.blobs import BlobStore
from scalemule.core import audit, object_rules, storage
from scalemule.core.audit import AuditEvent
from scalemule.core.errors import Internal, NotFound, PermissionDenied, ScaleMuleError, Unauthenticated
from scalemule.core.ids import utcnow
from scalemule.core.signed_urls import Grant, Signer, UrlSigner, authorize
from scalemule.core.storage import StoredObject, WriteRequest
from scalemule.db.engine import Connection, Database

if TYPE_CHECKING:
    from scalemule.runtime import Runtime

log = logging.getLogger("scalemule")

URL_PATH = "/blobs/"
_FORM_DEFAULT = "application/x-www-form-urlencoded"


@dataclass
class _Trace:
    """What is known of a request so far, for its audit event."""

    operation: str
    client: str | None
    started: float
    grant: Grant | None = None
    signer: Signer | None = None


class ObjectUrls:
    """Signs object URLs served by ScaleMule and serves them (GET and PUT) with audit."""

    def __init__(self, *, db: Database, blobs: BlobStore, signer: UrlSigner, quota: int, public_url: str) -> None:
        self.db = db
        self.blobs = blobs
        self.signer = signer
        self.quota = quota
        self.public_url = public_url.rstrip("/")

    def url(self, grant: Grant) -> str:
        """The URL under which ScaleMule's HTTP surface serves ``grant``."""
        return f"{self.public_url}{URL_PATH}{self.signer.sign(grant)}"

    async def open_get(self, token: str, *, client: str | None = None) -> Download:
        """Authorize a signed GET and record it; the returned download streams verified bytes.

        Raises:
            Unauthenticated: the token is malformed, tampered with or expired.
            PermissionDenied: not a GET token, or its signer lost access.
            NotFound: the object was deleted or replaced since signing.
        """
        trace = _Trace("storage_url_get", client, time.perf_counter())
        try:
            grant = trace.grant = self.signer.verify(token)
            self._check(grant, "GET")
            async with self.db.transaction() as conn:
                trace.signer = await authorize(conn, grant, "storage:read")
                obj = await storage.find(conn, tenant_id=grant.tenant_id, key=grant.key)
                if obj is None or obj.etag != grant.etag:
                    raise NotFound(
                        "the object was deleted or replaced since this URL was signed",
                        hint="Ask for a new URL with storage_create_signed_url.",
                    )
                await self._record(conn, trace, "ok", None)
            return Download(self, obj, trace)
        except Exception as exc:
            raise await self.failed(trace, exc) from None

    async def put(
        self,
        token: str,
        body: AsyncIterable[bytes],
        *,
        content_type: str | None,
        content_length: int | None,
        client: str | None = None,
        refuse: ScaleMuleError | None = None,
    ) -> StoredObject:
        """Store the request body as the object a signed PUT names, and record it.

        The body streams to a fresh blob outside any transaction; metadata and the audit event then
        commit together.

        Raises:
            Unauthenticated: the token is malformed, tampered with or expired.
            PermissionDenied: not a PUT token, or its signer lost access.
            InvalidArgument: a malformed content type.
            QuotaExceeded: the body does not fit in the tenant's quota.
            ScaleMuleError: ``refuse``, when the surface does not take uploads (recorded all the same).
        """
        trace = _Trace("storage_url_put", client, time.perf_counter())
        try:
            grant = trace.grant = self.signer.verify(token)
            self._check(grant, "PUT")
            if refuse is not None:
                raise refuse
            if content_type is not None and content_type.split(";")[0].strip().lower() == _FORM_DEFAULT:
                content_type = None  # what curl and urllib send for any body: says nothing of the object
            chosen = grant.content_type or content_type or object_rules.guess_content_type(grant.key, text=False)
            async with self.db.transaction() as conn:
                trace.signer = await authorize(conn, grant, "storage:write")
                request = WriteRequest(
                    tenant_id=grant.tenant_id,
                    key=object_rules.check_key(grant.key),
                    content_type=object_rules.check_content_type(chosen),
                    metadata={},
                    writer=grant.principal_id,
                )
                room = await storage.allowance(conn, request, quota=self.quota)
            if content_length is not None:
                room.refuse(content_length, self.quota)
            blob = await storage.write_blob(self.blobs, grant.tenant_id, body, limit=room.limit)
            async with self.db.transaction() as conn:
                trace.signer = await authorize(conn, grant, "storage:write")
                obj = await storage.commit(conn, self.blobs, request, blob, quota=self.quota)
                await self._record(conn, trace, "ok", None)
            return obj
        except Exception as exc:
            raise await self.failed(trace, exc) from None

    def _check(self, grant: Grant, method: str) -> None:
        grant.check_live()
        if grant.method != method:
            raise PermissionDenied(
                f"this URL was signed for {grant.method}, not {method}",
                hint=f"Use {grant.method}, or ask for a {method} URL with storage_create_signed_url.",
            )

    async def failed(self, trace: _Trace, exc: Exception) -> ScaleMuleError:
        """Record a refused or failed request in a fresh transaction; returns the error to report."""
        # This path stands in for dispatch, so it too turns any failure into an error and records it.
        if isinstance(exc, ScaleMuleError):
            error = exc
        else:
            log.error("internal error serving %s", trace.operation, exc_info=exc)
            error = Internal("an unexpected error occurred; nothing was changed", hint="Retry later.")
        outcome: audit.Outcome = "denied" if isinstance(error, PermissionDenied | Unauthenticated) else "error"
        async with self.db.transaction() as conn:
            await self._record(conn, trace, outcome, error.code)
        return error

    async def _record(self, conn: Connection, trace: _Trace, outcome: audit.Outcome, code: str | None) -> None:
        grant, signer = trace.grant, trace.signer
        principal = signer.principal if signer is not None else None
        args: dict[str, object] = {}
        if grant is not None:
            args = {"key": grant.key, "method": grant.method, "expires_at": grant.expires.isoformat()}
        event = AuditEvent(
            at=utcnow(),
            operation=trace.operation,
            outcome=outcome,
            transport="http",
            duration_ms=(time.perf_counter() - trace.started) * 1000,
            args=args,
            tenant_id=grant.tenant_id if grant is not None else None,
            actor_id=principal.id if principal else (grant.principal_id if grant else None),
            actor_kind=principal.kind if principal else None,
            actor_name=principal.name if principal else None,
            key_id=grant.key_id if grant is not None else None,
            on_behalf_of=principal.on_behalf_of if principal else None,
            client_name=None if trace.client is None else trace.client[:200],
            permission="storage:read" if trace.operation.endswith("get") else "storage:write",
            target=None if grant is None else grant.key,
            error_code=code,
        )
        await audit.append(conn, [event])


class Download:
    """An authorized signed GET: the object's metadata and its verified bytes."""

    def __init__(self, urls: ObjectUrls, obj: StoredObject, trace: _Trace) -> None:
        self._urls = urls
        self._trace = trace
        self.object = obj

    @property
    def last_modified(self) -> datetime:
        """When the object was last written."""
        return self.object.updated_at.astimezone(UTC)

    async def chunks(self, offset: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``offset``..``end``, each window verified before it is yielded.

        Raises:
            Internal: the stored bytes fail verification (recorded as a failed read).
        """
        try:
            async for piece in storage.stream(self._urls.blobs, self.object, offset, end):
                yield piece
        except ScaleMuleError as exc:
            raise await self._urls.failed(self._trace, exc) from None


def object_urls(runtime: Runtime) -> ObjectUrls:
    """The signed-URL service over a runtime's stores and settings."""
    settings = runtime.settings
    return ObjectUrls(
        db=runtime.db,
        blobs=runtime.blobs,
        signer=UrlSigner(runtime.keyring, settings.data_dir),
        quota=settings.storage_quota_bytes,
        public_url=settings.public_url,
    )
