"""Blobs in an S3 bucket (AWS or any S3-compatible store), through boto3 on worker threads.

Up to ``PART_SIZE`` a blob is one ``PutObject``; larger ones are multipart uploads, aborted when the
write fails and, when the writer was killed, by ``abort_stale``. Both are conditional on the key not
existing (``If-None-Match: *``), so a blob is never overwritten, and S3 makes either visible whole.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread

from scalemule.blobs.base import (
    BlobEntry,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    Digests,
    check_ref,
    hash_alongside,
    pieces,
)
from scalemule.core.errors import FailedPrecondition

# S3 parts must be at least 5 MiB (but the last); 16 MiB parts reach 160 GiB in 10,000 parts.
PART_SIZE = 16 << 20
T = TypeVar("T")

_EXISTS = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _code(exc: Exception) -> str:
    # botocore's ClientError carries the service's error code; HEAD answers carry only the status.
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3BlobStore:
    """Blobs under ``prefix`` in ``bucket``; credentials and region come from the usual AWS sources."""

    kind = "s3"

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None) -> None:
        """Describe the store (no network I/O until first use).

        Raises:
            FailedPrecondition: boto3 is not installed.
        """
        if importlib.util.find_spec("boto3") is None:
            raise FailedPrecondition(
                "SCALEMULE_S3_BUCKET is set but boto3 is not installed",
                hint="Install the S3 extra: pip install 'scalemule[s3]'.",
            )
        from botocore.exceptions import ClientError  # type: ignore[import-untyped]

        self._client_error: type[Exception] = ClientError
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = anyio.Lock()

    async def _call(self, method: str, **params: Any) -> Any:
        client = self._client or await self._connect()
        return await anyio.to_thread.run_sync(lambda: getattr(client, method)(**params))

    async def _run(self, work: Callable[[Any], T]) -> T:
        client = self._client or await self._connect()
        return await anyio.to_thread.run_sync(work, client)

    async def _connect(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await anyio.to_thread.run_sync(self._make_client)
        return self._client

    def _make_client(self) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        config = Config(
            max_pool_connections=64,
            retries={"mode": "standard", "max_attempts": 5},
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            signature_version="s3v4",
        )
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=config)

    def _key(self, ref: str) -> str:
        return self.prefix + check_ref(ref)

    async def put(self, ref: str, data: AsyncIterable[bytes]) -> BlobInfo:
        """Upload ``data`` under ``ref``, as one PutObject or a multipart upload.

        Raises:
            BlobExists: ``ref`` is taken.
        """
        key = self._key(ref)
        client = self._client or await self._connect()
        digests = Digests()
        source = pieces(data).__aiter__()
        part = await _next_part(source)
        following = await _next_part(source) if len(part) >= PART_SIZE else b""
        try:
            if not following:
                upload = partial(client.put_object, Bucket=self.bucket, Key=key, Body=part, IfNoneMatch="*")
                await hash_alongside(digests, part, upload)
                return digests.info(ref)
            await self._multipart(client, key, digests, source, part, following)
        except self._client_error as exc:
            if _code(exc) in _EXISTS:
                raise BlobExists(ref) from None
            raise
        return digests.info(ref)

    async def _multipart(
        self, client: Any, key: str, digests: Digests, source: AsyncIterator[bytes], part: bytes, following: bytes
    ) -> None:
        started = await self._call("create_multipart_upload", Bucket=self.bucket, Key=key)
        upload_id = started["UploadId"]
        etags: list[dict[str, Any]] = []
        try:
            while part:
                number = len(etags) + 1
                sent: dict[str, Any] = {}

                def job(body: bytes = part, number: int = number, sent: dict[str, Any] = sent) -> None:
                    sent.update(
                        client.upload_part(
                            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                        )
                    )

                await hash_alongside(digests, part, job)
                etags.append({"PartNumber": number, "ETag": sent["ETag"]})
                part, following = following, (await _next_part(source) if following else b"")
            await self._call(
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": etags},
                IfNoneMatch="*",
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def read(self, ref: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the blob under ``ref`` from ``offset`` (a ranged GetObject).

        Raises:
            BlobNotFound: no blob under ``ref``.
        """
        key = self._key(ref)

        def read(client: Any) -> bytes:
            params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if length == 0:
                client.head_object(**params)
                return b""
            if length is not None:
                params["Range"] = f"bytes={offset}-{offset + length - 1}"
            elif offset:
                params["Range"] = f"bytes={offset}-"
            response = client.get_object(**params)
            with response["Body"] as body:
                return bytes(body.read())

        try:
            return await self._run(read)
        except self._client_error as exc:
            code = _code(exc)
            if code in _MISSING:
                raise BlobNotFound(ref) from None
            if code == "InvalidRange":
                return b""
            raise

    async def delete(self, ref: str) -> None:
        """Remove the blob under ``ref`` (S3 deletes are idempotent)."""
        await self._call("delete_object", Bucket=self.bucket, Key=self._key(ref))

    async def entries(self, prefix: str = "") -> AsyncIterator[BlobEntry]:
        """Every blob whose ref starts with ``prefix``, a ListObjectsV2 page per thread hop."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            page = await self._call("list_objects_v2", **params)
            for item in page.get("Contents", []):
                yield BlobEntry(item["Key"][len(self.prefix) :], int(item["Size"]), item["LastModified"])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def abort_stale(self, before: datetime) -> int:
        """Abort multipart uploads under the prefix initiated before ``before``."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        aborted = 0
        while True:
            page = await self._call("list_multipart_uploads", **params)
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < before:
                    await self._call(
                        "abort_multipart_upload", Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            params["KeyMarker"] = page.get("NextKeyMarker")
            params["UploadIdMarker"] = page.get("NextUploadIdMarker")

    async def presign_get(
        self, ref: str, *, expires_in: int, content_type: str, filename: str, disposition: str = "inline"
    ) -> str | None:
        """A SigV4 presigned GetObject URL: the bytes go from S3 to the client, not through ScaleMule."""
        params = {
            "Bucket": self.bucket,
            "Key": self._key(ref),
            "ResponseContentType": content_type,
            "ResponseContentDisposition": f"{disposition}; filename*=UTF-8''{quote(filename, safe='')}",
        }
        url = await self._run(
            lambda client: client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        )
        return str(url)

    async def close(self) -> None:
        """Close the client's connection pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await anyio.to_thread.run_sync(client.close)


async def _next_part(source: AsyncIterator[bytes]) -> bytes:
    """The next upload part: pieces joined until ``PART_SIZE`` is reached or the source ends."""
    parts: list[bytes] = []
    held = 0
    while held < PART_SIZE:
        try:
            piece = await source.__anext__()
        except StopAsyncIteration:
            break
        parts.append(piece)
        held += len(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)
