"""Process settings, read once from the environment at the edge (CLI or server start)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where ScaleMule keeps its state and how it is reached.

    Attributes:
        data_dir: the embedded store's directory (SQLite file, blobs, key files).
        database_url: SQLAlchemy async URL; defaults to SQLite inside ``data_dir``.
        api_key: the caller's key for stdio and CLI calls.
        storage_quota_bytes: each tenant's object storage quota.
        s3_bucket: store blobs in this S3 bucket instead of under ``data_dir``.
        s3_endpoint_url: an S3-compatible endpoint (MinIO, R2, ...); None is AWS.
        s3_prefix: key prefix inside the bucket, so deployments can share one.
        public_url: the HTTP surface's base URL, used in signed URLs it serves.
        task_ttl_seconds: how long a task handle is promised to stay readable (its ``ttlMs``).
    """

    data_dir: Path = field(default_factory=lambda: Path(".scalemule"))
    database_url: str | None = None
    api_key: str | None = None
    secret_versions_kept: int = 10
    storage_quota_bytes: int = 1 << 30
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_prefix: str = ""
    public_url: str = "http://127.0.0.1:8765"
    task_ttl_seconds: int = 7 * 24 * 3600

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read ``SCALEMULE_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        return cls(
            data_dir=Path(env.get("SCALEMULE_DATA_DIR") or ".scalemule"),
            database_url=env.get("SCALEMULE_DATABASE_URL") or None,
            api_key=env.get("SCALEMULE_API_KEY") or None,
            secret_versions_kept=int(env.get("SCALEMULE_SECRET_VERSIONS_KEPT") or 10),
            storage_quota_bytes=int(env.get("SCALEMULE_STORAGE_QUOTA_BYTES") or 1 << 30),
            s3_bucket=env.get("SCALEMULE_S3_BUCKET") or None,
            s3_endpoint_url=env.get("SCALEMULE_S3_ENDPOINT_URL") or None,
            s3_prefix=env.get("SCALEMULE_S3_PREFIX") or "",
            public_url=(env.get("SCALEMULE_PUBLIC_URL") or "http://127.0.0.1:8765").rstrip("/"),
            task_ttl_seconds=int(env.get("SCALEMULE_TASK_TTL_SECONDS") or 7 * 24 * 3600),
        )

    @property
    def url(self) -> str:
        """The database URL in force: the configured one, else the embedded SQLite file."""
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'scalemule.db').resolve()}"
