"""The registry: every agent-facing operation declared once, with all it needs to be served.

Surfaces (MCP tools and resources, CLI, schema and doc generators) are built from ``REGISTRY``; the
dispatcher reads an operation's permission, annotations and models from here and nowhere else.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel

from scalemule.core.access import AUTHENTICATED, PERMISSIONS

if TYPE_CHECKING:
    from scalemule.operations.base import Call

A = TypeVar("A", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
Handler = Callable[["Call", Any], Awaitable[BaseModel]]


# Length and count bounds are still enforced by the args model, and a violation names the limit;
# listing them on every string of every tool would cost more context than they save.
_ENFORCED_NOT_SHOWN = frozenset({"minLength", "maxLength", "maxItems", "minItems"})


# Any JSON value, spelled as single-typed branches: a schema with no type at all, or with a list of
# types, is rejected or loosened by clients that map tool schemas onto a single-type dialect.
ANY_JSON: dict[str, Any] = {"anyOf": [{"type": t} for t in ("string", "number", "boolean", "object", "array", "null")]}


def _typed(kinds: list[str]) -> dict[str, Any]:
    unique = list(dict.fromkeys(kinds))
    return {"type": unique[0]} if len(unique) == 1 else {"anyOf": [{"type": k} for k in unique]}


def _inline_any(schema: Any, anything: set[str]) -> Any:
    # pydantic names "any JSON value" as an empty $def: it is written out where it is used.
    if isinstance(schema, list):
        return [_inline_any(s, anything) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("$ref", "").removeprefix("#/$defs/") in anything:
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return {**ANY_JSON, **_inline_any(rest, anything)}
    return {k: _inline_any(v, anything) for k, v in schema.items()}


def compact_schema(schema: Any) -> Any:
    """Drop what costs an agent's context but tells it nothing: titles, null defaults, string length
    bounds, and ``null`` in the type of arguments that may simply be omitted. Every type stays a
    single ``type`` (unions are ``anyOf`` branches), which every client's schema dialect accepts."""
    if isinstance(schema, dict) and "$defs" in schema:
        anything = {name for name, definition in schema["$defs"].items() if definition == {}}
        if anything:
            defs = {n: d for n, d in schema["$defs"].items() if n not in anything}
            schema = _inline_any(
                {**{k: v for k, v in schema.items() if k != "$defs"}, **({"$defs": defs} if defs else {})}, anything
            )
    if isinstance(schema, list):
        return [compact_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if (key == "default" and value is None) or key in _ENFORCED_NOT_SHOWN:
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: compact_schema(sub) for name, sub in value.items()}
        else:
            out[key] = compact_schema(value)
    if isinstance(out.get("properties"), dict):
        required = set(out.get("required", ()))
        out["properties"] = {
            name: prop if name in required else _omittable(prop) for name, prop in out["properties"].items()
        }
    return out


def _omittable(prop: dict[str, Any]) -> dict[str, Any]:
    # An optional argument is omitted, not sent as null: its schema need not spell out null.
    kind = prop.get("type")
    if isinstance(kind, list) and "null" in kind:
        rest = [k for k in kind if k != "null"]
        return {**prop, "type": rest[0] if len(rest) == 1 else rest}
    options = prop.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        base = {k: v for k, v in prop.items() if k != "anyOf"}
        return {**rest[0], **base} if len(rest) == 1 else {**base, "anyOf": rest}
    return prop


def _without_description(schema: dict[str, Any]) -> dict[str, Any]:
    # A model's docstring is for developers; the tool description already speaks to the agent.
    return {k: v for k, v in schema.items() if k != "description"}


def _shallow_type(prop: dict[str, Any]) -> dict[str, Any]:
    if prop.get("anyOf") == ANY_JSON["anyOf"]:
        shallow = dict(ANY_JSON)
    else:
        kinds: list[str] = []
        for option in prop.get("anyOf", [prop]):
            kinds += ["object"] if "$ref" in option else [option["type"]]
        shallow = _typed(kinds)
    # No descriptions: a result's fields are named for what they hold, and each result's text and the
    # tools reference (docs/tools.md) show them in full; the tool list's budget goes to the inputs.
    return shallow


def _nullable(prop: dict[str, Any]) -> bool:
    return {"type": "null"} in prop.get("anyOf", [])


def shallow_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """An object schema reduced to the JSON types of its top-level properties that always hold a value:
    still a valid schema every result conforms to (other properties are allowed). Fields that may be
    null are left to each result's text, which shows every field, as does the nested shape."""
    properties = {
        name: _shallow_type(prop) for name, prop in schema.get("properties", {}).items() if not _nullable(prop)
    }
    return {"type": "object", "properties": properties}


@dataclass(frozen=True)
class Resource:
    """An MCP resource template served by reading an operation with arguments taken from the URI.

    Attributes:
        template: e.g. ``scalemule://tenants/{tenant}/objects/{+key}``: ``{name}`` is one path segment,
            ``{+name}`` may span slashes.
        name: the template's short name in a client's resource list (never a tool's name).
        description: what reading it returns.
        mime_type: the content's type.
        body: the result field holding the content; None serves the whole result as JSON.
        blob: the body is base64 and served as a blob resource.
        args: fixed arguments added to those from the URI.
    """

    template: str
    description: str
    mime_type: str = "application/json"
    body: str | None = None
    blob: bool = False
    args: tuple[tuple[str, Any], ...] = ()
    name: str = field(kw_only=True)

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """A regex matching URIs of this template, without a query string. ``{name}`` matches one path
        segment; ``{+name}`` (RFC 6570 reserved expansion) may span slashes."""
        parts = re.split(r"(\{\+?[a-z_]+\})", self.template)
        regex = ""
        for part in parts:
            if part.startswith("{"):
                name = part.strip("{}+")
                regex += f"(?P<{name}>{'[^?#]+' if part.startswith('{+') else '[^/?#]+'})"
            else:
                regex += re.escape(part)
        return re.compile(f"^{regex}$")

    def match(self, uri: str) -> dict[str, Any] | None:
        """The operation's arguments for ``uri``, or None when it is not of this template.

        A query string (``?cursor=...&limit=...``) adds its parameters as arguments: the operation's
        arguments model accepts those it knows (a paging resource takes ``cursor`` and ``limit``) and
        dispatch refuses any other with ``invalid_argument``.
        """
        path, _, query = uri.partition("?")
        found = self.pattern.match(path)
        if found is None:
            return None
        args = {**dict(self.args), **{k: unquote(v) for k, v in found.groupdict().items()}}
        for name, values in parse_qs(query, keep_blank_values=True).items():
            args[name] = values[0] if len(values) == 1 else values
        return args


@dataclass(frozen=True)
class Operation:
    """One operation: its contract (models, permission, annotations) and its handler."""

    name: str
    title: str
    description: str
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    permission: str
    toolset: str
    read_only: bool
    destructive: bool
    idempotent: bool
    tenant_scoped: bool
    target: str | None
    tool: bool
    resources: tuple[Resource, ...]
    handler: Handler
    # Runs as an MCP task for a task-aware client: queued as a server job, run in the background.
    task: bool = False

    @cached_property
    def input_schema(self) -> dict[str, Any]:
        """The JSON Schema of the arguments, compacted for the tool list, as published (``PUBLISHED``)."""
        published = _published().get(self.name)
        return published["inputSchema"] if published is not None else self.derive_input_schema()

    @cached_property
    def output_schema(self) -> dict[str, Any]:
        """The JSON Schema of the result, as published (``PUBLISHED``)."""
        published = _published().get(self.name)
        return published["outputSchema"] if published is not None else self.derive_output_schema()

    def derive_input_schema(self) -> dict[str, Any]:
        """The arguments' JSON Schema from the args model, compacted for the tool list."""
        return _without_description(compact_schema(self.args_model.model_json_schema()))

    def derive_output_schema(self) -> dict[str, Any]:
        """The result's JSON Schema from the result model: top-level fields and their types (nested
        objects are shown by example in every result's text, and that keeps the tool list small)."""
        return _without_description(shallow_schema(compact_schema(self.result_model.model_json_schema())))

    @property
    def annotations(self) -> dict[str, bool]:
        """The four MCP tool annotations; openWorld is false for every ScaleMule operation."""
        return {
            "readOnlyHint": self.read_only,
            "destructiveHint": self.destructive,
            "idempotentHint": self.idempotent,
            "openWorldHint": False,
        }


REGISTRY: dict[str, Operation] = {}

# Every tool's input and output schema as derived from its models, written by `scalemule schemas` with
# tool_schemas/ (a test fails when they differ from what the models give). A server's first tools/list
# reads them here instead of building every operation's models, a tenth of its start-up; each model is
# still built, and validates, on its operation's first call.
PUBLISHED = Path(__file__).with_name("schemas.json")


@functools.cache
def _published() -> dict[str, dict[str, Any]]:
    try:
        published: dict[str, dict[str, Any]] = json.loads(PUBLISHED.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return published


def one_paragraph(docstring: str) -> str:
    """A handler's docstring as served: wrapped lines joined, blank-line paragraph breaks kept.

    Clients show a tool description as flowing text; a hard line break from the source's wrapping
    would show as a break mid-sentence.
    """
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs).strip()


def resource_for(uri: str) -> tuple[Operation, Resource, dict[str, Any]] | None:
    """The operation and template serving ``uri``, with the arguments the URI implies.

    The most specific template wins (the most literal text), should two templates match.
    """
    found: list[tuple[int, Operation, Resource, dict[str, Any]]] = []
    for op in REGISTRY.values():
        for resource in op.resources:
            args = resource.match(uri)
            if args is not None:
                found.append((len(re.sub(r"\{\+?[a-z_]+\}", "", resource.template)), op, resource, args))
    if not found:
        return None
    _, op, resource, args = max(found, key=lambda item: item[0])
    return op, resource, args


def check_task(name: str, args_model: type[BaseModel], *, read_only: bool) -> None:
    """Refuse to declare as a task an operation the server could not safely run later on a caller's behalf.

    A task's arguments are stored in its job (shown by jobs_get), and a run whose server died is run
    again by another: so only read-only, tenant-scoped operations whose arguments hold no secret and
    no idempotency key qualify.

    Raises:
        ValueError: naming the rule the declaration breaks.
    """
    from scalemule.operations.base import Sensitive, TenantArgs

    if not read_only:
        raise ValueError(f"{name}: only read-only operations run as tasks (a rescued run is run again)")
    if not issubclass(args_model, TenantArgs):
        raise ValueError(f"{name}: only tenant-scoped operations run as tasks (a task is a job of a tenant)")
    for field_name, info in args_model.model_fields.items():
        if field_name == "idempotency_key" or any(isinstance(m, Sensitive) for m in info.metadata):
            raise ValueError(f"{name}: argument {field_name!r} cannot be stored in a task's job")


def operation(
    name: str,
    *,
    title: str,
    permission: str,
    toolset: str,
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
    target: str | None = None,
    tool: bool = True,
    resources: tuple[Resource, ...] = (),
    task: bool = False,
) -> Callable[[Callable[[Call, A], Awaitable[R]]], Callable[[Call, A], Awaitable[R]]]:
    """Declare an operation; the handler's docstring is its description, its annotations its models.

    Args:
        name: the public tool name (snake_case, domain first).
        title: a short human title a client shows for the tool ("Set a config value").
        permission: the permission the caller must hold, or ``AUTHENTICATED``.
        toolset: the group an operator enables with ``--toolsets``.
        read_only: changes nothing (also allowed under ``--read-only``).
        destructive: may delete or overwrite data.
        idempotent: repeating the call with the same arguments has no further effect.
        target: the argument naming what the call acts on, recorded in the audit event.
        tool: False for operations served only as MCP resources.
        resources: MCP resource templates read through this operation.
        task: the work can outlast a client's timeout: a task-aware client gets an MCP task, which
            the server runs in the background with the caller's rights (``check_task``).
    """
    if permission != AUTHENTICATED and permission not in PERMISSIONS:
        raise ValueError(f"{name}: unknown permission {permission!r}")

    def register(handler: Callable[[Call, A], Awaitable[R]]) -> Callable[[Call, A], Awaitable[R]]:
        from scalemule.operations.base import TenantArgs

        if name in REGISTRY:
            raise ValueError(f"operation {name!r} declared twice")
        hints = get_type_hints(handler)
        args_model, result_model = hints["args"], hints["return"]
        if task:
            check_task(name, args_model, read_only=read_only)
        REGISTRY[name] = Operation(
            name=name,
            title=title,
            description=one_paragraph(handler.__doc__ or ""),
            args_model=args_model,
            result_model=result_model,
            permission=permission,
            toolset=toolset,
            read_only=read_only,
            destructive=destructive,
            idempotent=idempotent,
            tenant_scoped=issubclass(args_model, TenantArgs),
            target=target,
            tool=tool,
            resources=resources,
            handler=handler,
            task=task,
        )
        return handler

    return register
