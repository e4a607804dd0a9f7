"""Prompts: the workflows agents and operators repeat, as short recipes of tool calls.

Served as MCP prompts (``prompts/list``, ``prompts/get``) through the same dispatch path as tools, so
listing and fetching them is authenticated and audited. Each recipe names real tools with their
arguments; a test checks every tool it names exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Formatter

from pydantic import Field

from scalemule.core.access import AUTHENTICATED
from scalemule.core.errors import InvalidArgument, NotFound
from scalemule.operations.base import Args, Call, Result
from scalemule.operations.registry import operation


@dataclass(frozen=True)
class PromptArgument:
    """One argument a prompt takes; its value is substituted into the recipe as ``{name}``."""

    name: str
    description: str
    required: bool = True
    default: str | None = None


@dataclass(frozen=True)
class Prompt:
    """A recipe: what it is for, its arguments and its text."""

    name: str
    title: str
    description: str
    arguments: tuple[PromptArgument, ...]
    template: str

    def render(self, given: dict[str, str]) -> str:
        """The recipe with ``given`` substituted.

        Raises:
            InvalidArgument: an unknown argument, or a required one missing.
        """
        known = {a.name for a in self.arguments}
        if unknown := sorted(set(given) - known):
            raise InvalidArgument(
                f"prompt {self.name} takes no argument {', '.join(unknown)}",
                hint=f"Its arguments: {', '.join(sorted(known)) or 'none'}.",
            )
        values: dict[str, str] = {}
        for argument in self.arguments:
            value = given.get(argument.name, argument.default)
            if value is None:
                raise InvalidArgument(
                    f"prompt {self.name} needs the argument {argument.name!r}", hint=argument.description
                )
            values[argument.name] = value
        return self.template.format_map(values)

    def tools(self) -> set[str]:
        """The tool names the recipe calls (``name(``)."""
        return set(re.findall(r"\b([a-z]+_[a-z_]+)\(", self.template))


_TENANT = PromptArgument("tenant", "Tenant slug; default: your key's tenant.", required=False, default="your tenant")

PROMPTS: dict[str, Prompt] = {
    p.name: p
    for p in (
        Prompt(
            name="set_up_app_backend",
            title="Set up the backend for a new app",
            description="Provision config, secrets, a worker identity, storage and a first job for a new app.",
            arguments=(PromptArgument("app", "The app's short name, e.g. 'menugen'."), _TENANT),
            template="""\
Set up the production backend of the app "{app}" in {tenant} with ScaleMule, step by step:

1. whoami() — check your tenant, role and permissions before anything else.
2. envs_list() — dev, staging and prod exist; prod is protected, so build everything in dev first.
3. config_set(env="dev", key="app.name", value="{app}") — then one config_set per setting the app reads
   (model names, limits, feature flags). Values are any JSON; each write makes a new version.
4. secrets_set(env="dev", name="<PROVIDER>_API_KEY", value="<the credential>") — one per credential.
   Credentials never go in config; secrets_list shows names and versions, never values.
5. agents_create(name="{app}-worker", role="worker"), then keys_create(name="{app} worker",
   principal_id="<the agent's id>", expires_in_days=90) — give the token to the worker process as
   SCALEMULE_API_KEY. It is shown once.
6. storage_put_object(key="healthcheck.txt", content="ok"), then storage_get_object(key="healthcheck.txt")
   — large files go through storage_create_signed_url(key=..., method="PUT") instead.
7. jobs_enqueue(kind="healthcheck", payload={{}}), then jobs_get(job_id="<its id>") until its state is
   succeeded — this proves a worker is running.
8. access_check(permissions=["config:write", "secrets:write"], env="prod") — if not allowed, ask an
   owner or admin to run the ship_config_to_prod prompt when dev and staging are ready.
""",
        ),
        Prompt(
            name="ship_config_to_prod",
            title="Ship config from staging to prod safely",
            description="Review, plan and apply a promotion of config and secrets into a protected environment.",
            arguments=(
                PromptArgument("from_env", "Where the reviewed config lives.", required=False, default="staging"),
                PromptArgument("to_env", "The environment to update.", required=False, default="prod"),
                _TENANT,
            ),
            template="""\
Promote configuration from {from_env} to {to_env} in {tenant}, without surprises:

1. config_diff(from_env="{from_env}", to_env="{to_env}") — read every difference: keys only in
   {from_env} (will be added), changed values (will be overwritten), secrets by name and version.
2. config_promote(from_env="{from_env}", to_env="{to_env}") — a dry run: the exact plan, nothing changes.
   Keys only in {to_env} are left alone; promotion never deletes.
3. access_check(permissions=["config:write", "secrets:write"], env="{to_env}") — a protected
   environment needs envs:write_protected (owners and admins). If you lack it, stop and hand the plan
   to an owner or admin.
4. config_promote(from_env="{from_env}", to_env="{to_env}", keys=[<the keys you reviewed>], dry_run=false)
   — pass keys so nothing unreviewed ships.
5. config_get(env="{to_env}", key="<each key>") and config_history(env="{to_env}", key="<key>") — confirm
   the new versions; to roll back, config_set the previous value (config_history shows it).
""",
        ),
        Prompt(
            name="investigate_agent",
            title="Investigate what an agent did in a tenant",
            description="Reconstruct an agent's calls from the audit log and contain it if needed.",
            arguments=(
                PromptArgument("agent", "The agent's name or principal id."),
                PromptArgument("since", "ISO 8601 start time.", required=False, default="the last 24 hours"),
                _TENANT,
            ),
            template="""\
Find out what the agent "{agent}" did in {tenant} since {since}:

1. audit_query(actor="{agent}", limit=50) — its calls, newest first; page with next_cursor. Without
   the audit tools, read the resource scalemule://tenants/<tenant>/audit/recent instead.
2. audit_query(actor="{agent}", outcome="denied"), then outcome="error" — attempts that were refused
   or failed: probing for secrets or other tenants shows up here.
3. keys_list(principal_id="<the agent's id>") — its keys, their scopes, expiry and last use.
4. To contain it: keys_revoke(key_id="<key id>") stops a key at once (and every key it minted);
   members_remove(principal_id="<the agent's id>") removes the agent from the tenant.
5. Summarise: what it read, what it changed (config, secrets, objects, jobs), what it was refused,
   and which key and client (MCP clientInfo) it used.
""",
        ),
    )
}


class PromptsListArgs(Args):
    """No arguments: every prompt is listed."""


class PromptArgumentView(Result):
    name: str
    description: str
    required: bool


class PromptView(Result):
    name: str
    title: str
    description: str
    arguments: list[PromptArgumentView]


class PromptsPage(Result):
    items: list[PromptView]


@operation(
    "prompts_list",
    title="List prompts",
    permission=AUTHENTICATED,
    toolset="prompts",
    read_only=True,
    idempotent=True,
    tool=False,
)
async def prompts_list(call: Call, args: PromptsListArgs) -> PromptsPage:
    """List the prompts: recipes for the workflows agents and operators repeat."""
    return PromptsPage(
        items=[
            PromptView(
                name=p.name,
                title=p.title,
                description=p.description,
                arguments=[
                    PromptArgumentView(name=a.name, description=a.description, required=a.required) for a in p.arguments
                ],
            )
            for p in PROMPTS.values()
        ]
    )


class PromptsGetArgs(Args):
    name: str = Field(min_length=1, max_length=64, description="Prompt name.")
    arguments: dict[str, str] = Field(default_factory=dict, max_length=20, description="Prompt arguments.")


class PromptText(Result):
    name: str
    description: str
    text: str


@operation(
    "prompts_get",
    title="Get a prompt",
    permission=AUTHENTICATED,
    toolset="prompts",
    read_only=True,
    idempotent=True,
    target="name",
    tool=False,
)
async def prompts_get(call: Call, args: PromptsGetArgs) -> PromptText:
    """Fetch one prompt with its arguments filled in."""
    prompt = PROMPTS.get(args.name)
    if prompt is None:
        raise NotFound(f"no prompt named {args.name[:64]!r}", hint=f"Prompts: {', '.join(PROMPTS)}.")
    return PromptText(name=prompt.name, description=prompt.description, text=prompt.render(args.arguments))


def placeholders(template: str) -> set[str]:
    """The ``{name}`` fields a template substitutes."""
    return {field for _, field, _, _ in Formatter().parse(template) if field}
