"""Secrets toolset: set, list (metadata only), reveal (on purpose) and delete."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from scalemule.core import secrets
from scalemule.core.config import check_env_name, check_key
from scalemule.core.pages import paginate
from scalemule.core.secrets import SecretInfo, VersionInfo
from scalemule.operations.base import Call, Result, SecretText, TenantArgs, TenantPageArgs
from scalemule.operations.config import ConfigKey, EnvName, Version, readable_env, writable_env
from scalemule.operations.registry import operation


class SecretView(Result):
    name: str
    version: int
    updated_at: datetime
    updated_by: str | None
    versions_kept: int

    @classmethod
    def of(cls, info: SecretInfo) -> SecretView:
        """View of ``info`` (never the value)."""
        return cls(
            name=info.name,
            version=info.version,
            updated_at=info.updated_at,
            updated_by=info.updated_by,
            versions_kept=info.versions_kept,
        )


class SecretsSetArgs(TenantArgs):
    env: EnvName = Field(description="Environment, e.g. 'prod'.")
    name: ConfigKey = Field(description="e.g. IMAGE_API_KEY")
    value: SecretText = Field(description="up to 64 KiB; never shown again except by secrets_reveal")
    expected_version: Version | None = Field(default=None, description="fail unless current; 0 = must not exist")
    max_versions: int | None = Field(default=None, ge=1, le=100, description="versions kept (stored on the secret)")


async def _write(call: Call, args: SecretsSetArgs) -> SecretInfo:
    # secrets_set and secrets_rotate write a new version the same way.
    await writable_env(call, args.env, "secrets:write")
    return await secrets.set_secret(
        call.conn,
        call.runtime.keyring,
        call.tenant_id,
        args.env,
        args.name,
        args.value,
        expected_version=args.expected_version,
        by=call.principal.id,
        keep=call.runtime.settings.secret_versions_kept,
        max_versions=args.max_versions,
    )


@operation("secrets_set", title="Set a secret", permission="secrets:write", toolset="secrets", target="name")
async def secrets_set(call: Call, args: SecretsSetArgs) -> SecretView:
    """Store a secret (API key, password) encrypted as a new version; the value is never echoed.

    For non-secret settings use config_set.
    """
    info = await _write(call, args)
    return SecretView.of(info)


class SecretsListArgs(TenantPageArgs):
    env: EnvName = Field(description="Environment, e.g. 'prod'.")


class SecretsPage(Result):
    items: list[SecretView]
    next_cursor: str | None


@operation(
    "secrets_list", title="List secrets", permission="secrets:read", toolset="secrets", read_only=True, idempotent=True
)
async def secrets_list(call: Call, args: SecretsListArgs) -> SecretsPage:
    """List an environment's secrets: names, versions, who set them and when. Never values."""
    await readable_env(call, args.env)
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: secrets.list_secrets(call.conn, call.tenant_id, args.env, after=after, limit=n),
        lambda s: s.name,
    )
    return SecretsPage(items=[SecretView.of(s) for s in page], next_cursor=next_cursor)


class SecretNameArgs(TenantArgs):
    env: EnvName = Field(description="Environment, e.g. 'prod'.")
    name: ConfigKey = Field(description="Secret name.")


class SecretsRevealArgs(SecretNameArgs):
    version: Version | None = Field(default=None, description="a kept older version")


class Revealed(Result):
    name: str
    version: int
    value: SecretText


@operation(
    "secrets_reveal",
    title="Reveal a secret value",
    permission="secrets:reveal",
    toolset="secrets",
    read_only=True,
    idempotent=True,
    target="name",
)
async def secrets_reveal(call: Call, args: SecretsRevealArgs) -> Revealed:
    """Return a secret's value. Needs secrets:reveal (owner/admin by default); use secrets_list for metadata."""
    check_env_name(args.env)
    check_key(args.name, what="secret name")
    await call.require_on("secrets:reveal", (args.env, args.name), doing="reveal it")
    info, value = await secrets.reveal(
        call.conn, call.runtime.keyring, call.tenant_id, args.env, args.name, args.version
    )
    return Revealed(name=info.name, version=info.version, value=value)


@operation(
    "secrets_delete",
    title="Delete a secret",
    permission="secrets:write",
    toolset="secrets",
    destructive=True,
    target="name",
)
async def secrets_delete(call: Call, args: SecretNameArgs) -> SecretView:
    """Delete a secret and all its kept versions. Irreversible."""
    await writable_env(call, args.env, "secrets:write")
    check_key(args.name, what="secret name")
    return SecretView.of(await secrets.delete_secret(call.conn, call.tenant_id, args.env, args.name))


class VersionView(Result):
    version: int
    created_at: datetime
    created_by: str | None
    destroyed_at: datetime | None = Field(description="set: the value is gone for good")
    destroyed_by: str | None
    destroy_after: datetime | None = Field(description="scheduled destruction (secrets_rotate)")

    @classmethod
    def of(cls, info: VersionInfo) -> VersionView:
        """View of ``info`` (never the value)."""
        return cls.model_validate(info, from_attributes=True)


class VersionsPage(Result):
    name: str
    items: list[VersionView]


@operation(
    "secrets_versions",
    title="List a secret's versions",
    permission="secrets:read",
    toolset="secrets",
    read_only=True,
    idempotent=True,
)
async def secrets_versions(call: Call, args: SecretNameArgs) -> VersionsPage:
    """List a secret's kept versions, newest first, destroyed ones marked. Never values."""
    await readable_env(call, args.env)
    check_key(args.name, what="secret name")
    found = await secrets.list_versions(call.conn, call.tenant_id, args.env, args.name)
    return VersionsPage(name=args.name, items=[VersionView.of(v) for v in found])


class DestroyVersionArgs(SecretNameArgs):
    version: Version = Field(description="The version to destroy (see secrets_versions).")


@operation(
    "secrets_destroy_version",
    title="Destroy a secret version",
    permission="secrets:write",
    toolset="secrets",
    destructive=True,
    idempotent=True,
    target="name",
)
async def secrets_destroy_version(call: Call, args: DestroyVersionArgs) -> VersionView:
    """Destroy one version of a secret for good: its encrypted value and key are deleted, its metadata
    kept as destroyed. To remove the whole secret use secrets_delete."""
    await writable_env(call, args.env, "secrets:write")
    check_key(args.name, what="secret name")
    info = await secrets.destroy_version(
        call.conn, call.tenant_id, args.env, args.name, args.version, by=call.principal.id
    )
    return VersionView.of(info)


class SecretsRotateArgs(SecretsSetArgs):
    destroy_previous_after_seconds: int | None = Field(
        default=None, ge=0, le=90 * 86400, description="grace period, then the previous version is destroyed"
    )


@operation("secrets_rotate", title="Rotate a secret", permission="secrets:write", toolset="secrets", target="name")
async def secrets_rotate(call: Call, args: SecretsRotateArgs) -> SecretView:
    """Set a secret's new value and schedule the previous version's destruction after a grace period
    (0: now), so old credentials stop being revealable. Plain writes: secrets_set."""
    info = await _write(call, args)
    if info.version > 1 and args.destroy_previous_after_seconds is not None:
        previous = info.version - 1
        if args.destroy_previous_after_seconds == 0:
            await secrets.destroy_version(
                call.conn, call.tenant_id, args.env, args.name, previous, by=call.principal.id
            )
        else:
            await secrets.schedule_destroy(
                call.conn, call.tenant_id, args.env, args.name, previous, after=args.destroy_previous_after_seconds
            )
    return SecretView.of(info)
