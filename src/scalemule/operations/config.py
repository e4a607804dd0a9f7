"""Config toolset: environments and versioned configuration values, diff and promotion."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, StringConstraints

from scalemule.core import access, config, secrets
from scalemule.core.config import Entry, Environment
from scalemule.core.pages import paginate
from scalemule.operations.base import Call, Result, SecretText, TenantArgs, TenantPageArgs
from scalemule.operations.registry import Resource, operation

EnvName = Annotated[str, StringConstraints(max_length=64)]
ConfigKey = Annotated[str, StringConstraints(max_length=300)]
Version = Annotated[int, Field(ge=0)]


class EnvView(Result):
    name: str
    protected: bool
    created_at: datetime

    @classmethod
    def of(cls, env: Environment) -> EnvView:
        """View of ``env``."""
        return cls(name=env.name, protected=env.protected, created_at=env.created_at)


class EntryView(Result):
    key: str
    value: JsonValue
    version: int
    updated_at: datetime
    updated_by: str | None
    deleted: bool = False

    @classmethod
    def of(cls, entry: Entry) -> EntryView:
        """View of ``entry``."""
        return cls(
            key=entry.key,
            value=entry.value,
            version=entry.version,
            updated_at=entry.at,
            updated_by=entry.by,
            deleted=entry.deleted,
        )


async def writable_env(call: Call, name: str, permission: str = "config:write") -> Environment:
    """The environment ``name`` if the caller may write to it with ``permission``.

    Raises:
        NotFound: no such environment.
        PermissionDenied: it is protected and the caller lacks ``envs:write_protected``.
    """
    env = await config.get_environment(call.conn, call.tenant_id, config.check_env_name(name))
    kind = "protected environment" if env.protected else "environment"
    call.require(permission, protected_env=env.protected, doing=f"write to {kind} '{env.name}'")
    return env


async def readable_env(call: Call, name: str) -> Environment:
    """The environment ``name``.

    Raises:
        NotFound: no such environment (with the list of existing ones).
    """
    return await config.get_environment(call.conn, call.tenant_id, config.check_env_name(name))


# --- environments ----------------------------------------------------------------------------


class EnvsPage(Result):
    items: list[EnvView]


@operation(
    "envs_list", title="List environments", permission="config:read", toolset="config", read_only=True, idempotent=True
)
async def envs_list(call: Call, args: TenantArgs) -> EnvsPage:
    """List the tenant's environments (dev, staging, prod and any created) and which are protected."""
    return EnvsPage(items=[EnvView.of(e) for e in await config.list_environments(call.conn, call.tenant_id)])


class EnvsCreateArgs(TenantArgs):
    name: EnvName = Field(description="e.g. 'qa': lowercase, digits, hyphens")
    protected: bool = Field(default=False, description="writes need envs:write_protected (owner, admin)")


@operation("envs_create", title="Create an environment", permission="config:write", toolset="config", target="name")
async def envs_create(call: Call, args: EnvsCreateArgs) -> EnvView:
    """Create an environment. Writing to a protected one, or creating it, needs envs:write_protected
    (owners and admins)."""
    call.require("config:write", protected_env=args.protected, doing="create a protected environment")
    env = await config.create_environment(
        call.conn, call.tenant_id, args.name, protected=args.protected, created_by=call.principal.id
    )
    return EnvView.of(env)


# --- values ----------------------------------------------------------------------------------


class ConfigSetArgs(TenantArgs):
    env: EnvName = Field(description="Environment, e.g. 'dev'.")
    key: ConfigKey = Field(description="letters, digits, _ . : / -")
    value: JsonValue = Field(description="any JSON value, up to 64 KiB")
    expected_version: Version | None = Field(default=None, description="fail unless current; 0 = must not exist")


@operation("config_set", title="Set a config value", permission="config:write", toolset="config", target="key")
async def config_set(call: Call, args: ConfigSetArgs) -> EntryView:
    """Set a config value (a new version). Pass expected_version to avoid overwriting a concurrent change.

    For credentials use secrets_set instead.
    """
    await writable_env(call, args.env)
    entry = await config.set_value(
        call.conn,
        call.tenant_id,
        args.env,
        args.key,
        args.value,
        expected_version=args.expected_version,
        by=call.principal.id,
    )
    return EntryView.of(entry)


class ConfigGetArgs(TenantArgs):
    env: EnvName = Field(description="Environment, e.g. 'dev'.")
    key: ConfigKey = Field(description="Config key.")
    version: Version | None = Field(default=None, description="an older version (see config_history)")


@operation(
    "config_get",
    title="Get a config value",
    permission="config:read",
    toolset="config",
    read_only=True,
    idempotent=True,
    target="key",
)
async def config_get(call: Call, args: ConfigGetArgs) -> EntryView:
    """Read a config value, the current one or an older version. Use config_list to browse keys."""
    config.check_env_name(args.env)
    config.check_key(args.key)
    # No separate environment lookup: config.get names a missing environment when the key is missing.
    return EntryView.of(await config.get(call.conn, call.tenant_id, args.env, args.key, args.version))


class ConfigListArgs(TenantPageArgs):
    env: EnvName = Field(description="Environment, e.g. 'dev'.")
    prefix: ConfigKey = Field(default="", description="Only keys starting with this.")


class EntriesPage(Result):
    items: list[EntryView]
    next_cursor: str | None


@operation(
    "config_list",
    title="List config values",
    permission="config:read",
    toolset="config",
    read_only=True,
    idempotent=True,
)
async def config_list(call: Call, args: ConfigListArgs) -> EntriesPage:
    """List an environment's config keys and values, optionally under a prefix."""
    await readable_env(call, args.env)
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: config.list_entries(
            call.conn, call.tenant_id, args.env, prefix=args.prefix, after=after, limit=n
        ),
        lambda e: e.key,
    )
    return EntriesPage(items=[EntryView.of(e) for e in page], next_cursor=next_cursor)


class ConfigDeleteArgs(TenantArgs):
    env: EnvName = Field(description="Environment, e.g. 'dev'.")
    key: ConfigKey = Field(description="Config key.")
    expected_version: Version | None = Field(default=None, description="fail unless current")


@operation(
    "config_delete",
    title="Delete a config key",
    permission="config:write",
    toolset="config",
    destructive=True,
    target="key",
)
async def config_delete(call: Call, args: ConfigDeleteArgs) -> EntryView:
    """Delete a config key; its history is kept (config_history) and a later config_set revives it."""
    await writable_env(call, args.env)
    config.check_key(args.key)
    entry = await config.delete(
        call.conn, call.tenant_id, args.env, args.key, expected_version=args.expected_version, by=call.principal.id
    )
    return EntryView.of(entry)


class ConfigHistoryArgs(TenantPageArgs):
    env: EnvName = Field(description="Environment, e.g. 'dev'.")
    key: ConfigKey = Field(description="Config key.")


@operation(
    "config_history",
    title="Show a config key's history",
    permission="config:read",
    toolset="config",
    read_only=True,
    idempotent=True,
    target="key",
)
async def config_history(call: Call, args: ConfigHistoryArgs) -> EntriesPage:
    """List the versions of a config key, newest first, deletes included."""
    await readable_env(call, args.env)
    config.check_key(args.key)
    page, next_cursor = await paginate(
        args.cursor,
        args.limit,
        lambda after, n: config.history(call.conn, call.tenant_id, args.env, args.key, before=after, limit=n),
        lambda e: e.version,
    )
    return EntriesPage(items=[EntryView.of(e) for e in page], next_cursor=next_cursor)


# --- diff and promote ------------------------------------------------------------------------


class Change(Result):
    name: str
    kind: Literal["config", "secret"]
    from_version: int | None
    to_version: int | None
    # Config only: a secret's change shows versions and the environment it comes from, never values.
    old_value: JsonValue = None
    new_value: JsonValue = None
    applied_version: int | None = None


class Diff(Result):
    from_env: str
    to_env: str
    only_in_from: list[Change]
    only_in_to: list[Change]
    changed: list[Change] = Field(description="config keys whose values differ")
    secrets_in_both: list[Change] = Field(description="secrets are compared by name and version, never by value")
    unchanged: int
    secrets_included: bool


class DiffArgs(TenantArgs):
    from_env: EnvName = Field(description="Source environment, e.g. 'staging'.")
    to_env: EnvName = Field(description="Target environment, e.g. 'prod'.")


async def _diff(call: Call, from_env: str, to_env: str) -> Diff:
    await readable_env(call, from_env)
    await readable_env(call, to_env)
    source = {e.key: e for e in await config.list_entries(call.conn, call.tenant_id, from_env, limit=100_000)}
    target = {e.key: e for e in await config.list_entries(call.conn, call.tenant_id, to_env, limit=100_000)}
    only_from = [
        Change(name=k, kind="config", from_version=e.version, to_version=None, new_value=e.value)
        for k, e in source.items()
        if k not in target
    ]
    only_to = [
        Change(name=k, kind="config", from_version=None, to_version=e.version, old_value=e.value)
        for k, e in target.items()
        if k not in source
    ]
    both = [k for k in source if k in target]
    changed = [
        Change(
            name=k,
            kind="config",
            from_version=source[k].version,
            to_version=target[k].version,
            old_value=target[k].value,
            new_value=source[k].value,
        )
        for k in both
        if source[k].value != target[k].value
    ]
    in_both: list[Change] = []
    with_secrets = call.allows("secrets:read")
    if with_secrets:
        s_from = {s.name: s for s in await secrets.list_secrets(call.conn, call.tenant_id, from_env, limit=100_000)}
        s_to = {s.name: s for s in await secrets.list_secrets(call.conn, call.tenant_id, to_env, limit=100_000)}
        only_from += [
            Change(name=n, kind="secret", from_version=s.version, to_version=None)
            for n, s in s_from.items()
            if n not in s_to
        ]
        only_to += [
            Change(name=n, kind="secret", from_version=None, to_version=s.version)
            for n, s in s_to.items()
            if n not in s_from
        ]
        in_both = [
            Change(name=n, kind="secret", from_version=s.version, to_version=s_to[n].version)
            for n, s in s_from.items()
            if n in s_to
        ]
    return Diff(
        from_env=from_env,
        to_env=to_env,
        only_in_from=only_from,
        only_in_to=only_to,
        changed=changed,
        secrets_in_both=in_both,
        unchanged=len(both) - len(changed),
        secrets_included=with_secrets,
    )


@operation(
    "config_diff",
    title="Compare two environments",
    permission="config:read",
    toolset="config",
    read_only=True,
    idempotent=True,
)
async def config_diff(call: Call, args: DiffArgs) -> Diff:
    """Compare two environments: keys only in one, config values that differ, secrets by name and version.

    Use config_promote to copy the differences.
    """
    return await _diff(call, args.from_env, args.to_env)


class PromoteArgs(DiffArgs):
    keys: list[ConfigKey] | None = Field(
        default=None, max_length=1000, description="config keys and secret names to copy (default: all that differ)"
    )
    dry_run: bool = Field(default=True, description="only return the plan")


class Plan(Result):
    from_env: str
    to_env: str
    dry_run: bool
    applied: bool
    steps: list[Change] = Field(description="what is (or would be) copied into to_env")
    left_alone: list[Change] = Field(description="only in to_env; promotion never deletes")
    can_apply: bool = Field(description="whether you may apply this plan")
    lacking: list[str] = Field(description="permissions you would need to apply it")
    who_can: list[str] = Field(description="roles that may apply it")


async def _who_may_apply(call: Call, to_env: str, steps: list[Change]) -> tuple[list[str], list[str]]:
    # What applying needs, from the same rules (core.access) writable_env enforces when it is applied.
    protected = (await readable_env(call, to_env)).protected
    kinds = ["config:write"] + (["secrets:write"] if any(s.kind == "secret" for s in steps) else [])
    needed = sorted({p for k in kinds for p in access.needs(k, protected_env=protected)})
    return [p for p in needed if p not in call.permissions], access.roles_holding(needed)


@operation(
    "config_promote",
    title="Promote config between environments",
    permission="config:write",
    toolset="config",
    target="to_env",
)
async def config_promote(call: Call, args: PromoteArgs) -> Plan:
    """Copy differing config and missing secrets from one environment to another. dry_run (default)
    returns the plan; a protected target needs envs:write_protected (owners and admins)."""
    diff = await _diff(call, args.from_env, args.to_env)
    wanted = None if args.keys is None else set(args.keys)
    candidates = diff.only_in_from + diff.changed + (diff.secrets_in_both if wanted is not None else [])
    steps = [c for c in candidates if wanted is None or c.name in wanted]
    lacking, who_can = await _who_may_apply(call, args.to_env, steps)
    if args.dry_run:
        return Plan(
            from_env=args.from_env,
            to_env=args.to_env,
            dry_run=True,
            applied=False,
            steps=steps,
            left_alone=diff.only_in_to,
            can_apply=not lacking,
            lacking=lacking,
            who_can=who_can,
        )
    await writable_env(call, args.to_env)
    if any(s.kind == "secret" for s in steps):
        await writable_env(call, args.to_env, "secrets:write")
    applied = []
    for step in steps:
        if step.kind == "config":
            entry = await config.get(call.conn, call.tenant_id, args.from_env, step.name)
            written = await config.set_value(
                call.conn,
                call.tenant_id,
                args.to_env,
                step.name,
                entry.value,
                expected_version=step.to_version or 0,
                by=call.principal.id,
            )
            version = written.version
        else:
            _, value = await secrets.reveal(call.conn, call.runtime.keyring, call.tenant_id, args.from_env, step.name)
            stored = await secrets.set_secret(
                call.conn,
                call.runtime.keyring,
                call.tenant_id,
                args.to_env,
                step.name,
                value,
                expected_version=step.to_version or 0,
                by=call.principal.id,
                keep=call.runtime.settings.secret_versions_kept,
            )
            version = stored.version
        applied.append(step.model_copy(update={"applied_version": version}))
    return Plan(
        from_env=args.from_env,
        to_env=args.to_env,
        dry_run=False,
        applied=True,
        steps=applied,
        left_alone=diff.only_in_to,
        can_apply=True,
        lacking=[],
        who_can=who_can,
    )


# --- operator views: export and the config resource ------------------------------------------


class ExportArgs(TenantArgs):
    env: EnvName = Field(description="Environment, e.g. 'prod'.")
    format: Literal["dotenv", "json"] = Field(default="dotenv", description="Output format.")


class Export(Result):
    env: str
    format: str
    count: int
    text: SecretText


def _dotenv_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).upper()


def _dotenv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in " \t\n\"'#$\\") else text


@operation(
    "config_export",
    title="Export an environment",
    permission="secrets:reveal",
    toolset="config",
    read_only=True,
    idempotent=True,
    tool=False,
)
async def config_export(call: Call, args: ExportArgs) -> Export:
    """Export an environment's config and secret values for deployment (dotenv or JSON). CLI only."""
    await readable_env(call, args.env)
    values = {e.key: e.value for e in await config.list_entries(call.conn, call.tenant_id, args.env, limit=100_000)}
    revealed: dict[str, str] = {}
    for info in await secrets.list_secrets(call.conn, call.tenant_id, args.env, limit=100_000):
        _, revealed[info.name] = await secrets.reveal(
            call.conn, call.runtime.keyring, call.tenant_id, args.env, info.name
        )
    if args.format == "json":
        text = json.dumps({"config": values, "secrets": revealed}, ensure_ascii=False, indent=2) + "\n"
    else:
        lines = [f"{_dotenv_name(k)}={_dotenv_value(v)}" for k, v in {**values, **revealed}.items()]
        text = "".join(line + "\n" for line in lines)
    return Export(env=args.env, format=args.format, count=len(values) + len(revealed), text=text)


class SecretMeta(Result):
    name: str
    version: int
    updated_at: datetime
    updated_by: str | None


class Snapshot(Result):
    env: EnvView
    config: list[EntryView]
    secrets: list[SecretMeta] | None = Field(description="metadata only; null without secrets:read")


@operation(
    "config_snapshot",
    title="Read an environment's config",
    permission="config:read",
    toolset="config",
    read_only=True,
    idempotent=True,
    tool=False,
    resources=(
        Resource(
            "scalemule://tenants/{tenant}/config/{env}",
            "An environment's config values and secret metadata",
            name="config-snapshot",
        ),
    ),
)
async def config_snapshot(call: Call, args: ExportArgs) -> Snapshot:
    """An environment's config values and secret metadata (never secret values)."""
    env = await readable_env(call, args.env)
    entries = await config.list_entries(call.conn, call.tenant_id, args.env, limit=100_000)
    metas = None
    if call.allows("secrets:read"):
        infos = await secrets.list_secrets(call.conn, call.tenant_id, args.env, limit=100_000)
        metas = [
            SecretMeta(name=i.name, version=i.version, updated_at=i.updated_at, updated_by=i.updated_by) for i in infos
        ]
    return Snapshot(env=EnvView.of(env), config=[EntryView.of(e) for e in entries], secrets=metas)
