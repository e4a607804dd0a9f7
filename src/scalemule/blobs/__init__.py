"""Blob backends behind one Protocol: local disk (default) and S3 or any S3-compatible store."""

from __future__ import annotations

from scalemule.blobs.base import BlobEntry, BlobExists, BlobInfo, BlobNotFound, BlobStore
from scalemule.blobs.local import LocalBlobStore
from scalemule.settings import Settings

__all__ = ["BlobEntry", "BlobExists", "BlobInfo", "BlobNotFound", "BlobStore", "LocalBlobStore", "open_blob_store"]


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` configure: S3 when ``SCALEMULE_S3_BUCKET`` is set, else the data dir.

    Raises:
        FailedPrecondition: S3 is configured but boto3 is not installed.
    """
    if settings.s3_bucket:
        from scalemule.blobs.s3 import S3BlobStore

        return S3BlobStore(settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url)
    return LocalBlobStore(settings.data_dir / "blobs")
