"""Process settings, read once from ``SCALEMULE_*`` environment variables at the edge (CLI or server start).

Each setting is declared once, with its default and description; docs/operations.md's settings table
is generated from this model (``scalemule schemas``), so a new field is documented by declaring it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SCALEMULE_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class Settings(BaseSettings):
    """Where ScaleMule keeps its state and how it is reached.

    ``Settings()`` reads the process environment; ``Settings.from_env(mapping)`` reads only ``mapping``.
    An empty variable counts as unset.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    data_dir: Path = Field(
        default=Path(".scalemule"),
        description="The embedded store's directory: `scalemule.db` (SQLite), `master.key`, local blobs.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "`sqlite:///path/to/file.db` or `postgresql://user:password@host:5432/db` (the async driver is "
            "chosen for you); unset: `scalemule.db` in the data dir."
        ),
    )
    api_key: str | None = Field(
        default=None, description="The key `serve` (stdio) and `call` act with; `call --api-key` overrides it."
    )
    master_key: SecretStr | None = Field(
        default=None,
        description="Master keys for secrets, `1:<base64>,2:<base64>`; unset: `master.key` in the data dir.",
    )
    secret_versions_kept: int = Field(default=10, ge=1, description="Versions kept of each secret.")
    # Read by the audit notary itself (core/audit_checkpoints.py), declared here so it is documented.
    audit_signing_key: SecretStr | None = Field(
        default=None,
        description=(
            "Base64 of the raw 32-byte Ed25519 key that signs audit checkpoints, the same on every replica; "
            "unset: `audit-signing.key` in the data dir (0600, created by `init` or on first use)."
        ),
    )
    audit_public_keys: str | None = Field(
        default=None,
        description=(
            "Extra checkpoint verification keys (`<key id> <base64>`, comma or newline separated): those of "
            "signing keys rotated out of the environment."
        ),
    )
    storage_quota_bytes: int = Field(default=1 << 30, ge=0, description="Each tenant's object storage quota, in bytes.")
    s3_bucket: str | None = Field(
        default=None, description="Store object bytes in this S3 bucket instead of under the data dir."
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible endpoint (MinIO, R2, ...); unset: AWS."
    )
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket, so deployments can share one.")
    task_ttl_seconds: int = Field(
        default=7 * 24 * 3600, ge=1, description="How long a task handle stays readable (its `ttlMs`), in seconds."
    )
    public_url: str = Field(
        default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
        description=(
            "Base URL of the HTTP server that serves signed object URLs (`<base>/blobs/...`); "
            "unset: the address `scalemule serve --transport http` listens on (other commands: the default shown)."
        ),
    )

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``SCALEMULE_*`` variables from ``environ`` (default: the process environment).

        Raises:
            pydantic.ValidationError: a variable does not parse as its setting's type.
        """
        if environ is None:
            return cls()
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = environ.get(env_name(name))
            if value:
                values[name] = value
        # model_validate skips the environment sources: only ``environ`` is read.
        return cls.model_validate(values)

    @property
    def url(self) -> str:
        """The database URL in force: the configured one, else the embedded SQLite file."""
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'scalemule.db').resolve()}"

    def keyring_environ(self) -> dict[str, str]:
        """The master key setting as the keyring reads it (an empty mapping: use the key file)."""
        if self.master_key is None:
            return {}
        return {env_name("master_key"): self.master_key.get_secret_value()}

    def for_http(self, host: str, port: int) -> Settings:
        """These settings for an HTTP server listening on ``host:port``: unless ``SCALEMULE_PUBLIC_URL``
        names another base, signed URLs point at the server that serves them."""
        if "public_url" in self.model_fields_set:
            return self
        shown = {"0.0.0.0": DEFAULT_HOST, "::": "[::1]", "": DEFAULT_HOST}.get(host, host)
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        return self.model_copy(update={"public_url": f"http://{shown}:{port}"})

    def signing_notice(self) -> str:
        """One line saying where signed URLs point and how to change it (for a server's startup)."""
        return (
            f"scalemule: signed object URLs point at {self.public_url}/blobs/, served by "
            "`scalemule serve --transport http` there; set SCALEMULE_PUBLIC_URL to change it"
        )


def env_name(field: str) -> str:
    """The environment variable of a setting, e.g. ``SCALEMULE_DATA_DIR`` for ``data_dir``."""
    return f"{ENV_PREFIX}{field.upper()}"


def settings_table() -> str:
    """The Markdown table of every setting: variable, default and description (for docs/operations.md)."""
    rows = ["| variable | default | description |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = "unset" if default is None or default == "" else f"`{default}`"
        rows.append(f"| `{env_name(name)}` | {shown} | {info.description or ''} |")
    return "\n".join(rows) + "\n"
