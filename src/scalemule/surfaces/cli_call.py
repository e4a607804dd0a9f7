"""``scalemule call TOOL``: one subcommand per registry operation, its options generated from the args model.

Argument sources, later ones winning: ``--json`` (an object, ``@file`` or ``-`` for stdin), then
``key=value`` pairs, then typed options (``--env dev --limit 5``). Text fields take their value as
written; other fields read it as JSON when it parses and as text otherwise, so ``--value 5`` is the
number 5 and ``--value '"5"'`` the string "5" (docs/operations.md).
"""

from __future__ import annotations

import difflib
import enum
import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import click
from click.core import ParameterSource
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from scalemule.core.errors import InvalidArgument
from scalemule.operations import REGISTRY, Operation

# Options every tool subcommand has; a field of the same name is passed as key=value or in --json.
_RESERVED = frozenset({"json", "api_key", "format", "help", "pairs"})


def read_json_source(raw: str) -> str:
    """``--json``'s text: the value itself, ``-`` for stdin, or ``@path`` for a file's contents.

    Raises:
        InvalidArgument: the file cannot be read.
    """
    if raw == "-":
        return sys.stdin.read()
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(
                f"--json {raw}: cannot read {path.resolve()}: {type(exc).__name__}",
                hint="Name a readable UTF-8 file holding one JSON object, or use '-' for stdin.",
            ) from None
    return raw


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser allows
        return value


def parse_pairs(pairs: list[str], raw_json: str | None, *, text_fields: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Tool arguments from ``key=value`` pairs and ``--json``.

    A pair's value is read as JSON when it parses, except for ``text_fields`` (string arguments),
    which take it as written.

    Raises:
        InvalidArgument: a pair without ``=`` or ``--json`` that is not a JSON object.
    """
    args: dict[str, Any] = {}
    if raw_json is not None:
        try:
            loaded = json.loads(read_json_source(raw_json))
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"--json is not valid JSON: {exc}", hint="Pass a JSON object.") from None
        if not isinstance(loaded, dict):
            raise InvalidArgument("--json must be a JSON object", hint='e.g. --json \'{"name": "x"}\'')
        args.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"argument {pair!r} is not key=value", hint="e.g. name=worker limit=10")
        args[key] = value if key in text_fields else _json_or_text(value)
    return args


def _unwrap(annotation: Any) -> Any:
    """The annotation without constraints or ``None`` in a union (``Annotated[str, ...] | None`` -> ``str``)."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return _unwrap(rest[0]) if len(rest) == 1 else annotation
    return annotation


def field_kind(field: FieldInfo) -> tuple[str, click.ParamType[Any] | None]:
    """How a field is typed on the command line: ``text``, ``integer``, ``number``, ``flag``, ``choice`` or
    ``json``, with the click type that parses it (None for JSON, read by :func:`_json_or_text`)."""
    annotation = _unwrap(field.annotation)
    if annotation is bool:
        return "flag", None
    if annotation is int:
        return "integer", click.INT
    if annotation is float:
        return "number", click.FLOAT
    if annotation is str:
        return "text", click.STRING
    if get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation)):
        return "choice", click.Choice([str(a) for a in get_args(annotation)])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice", click.Choice([str(m.value) for m in annotation])
    return "json", None


def _option(name: str, field: FieldInfo) -> click.Option:
    kind, param_type = field_kind(field)
    flag = "--" + name.replace("_", "-")
    default = None if field.is_required() else field.get_default(call_default_factory=False)
    described = (field.description or "").strip()
    parts = [described + ("." if described and not described.endswith(".") else "")]
    if field.is_required():
        parts.append("Required.")
    elif default is not None:
        parts.append(f"Default: {json.dumps(default, default=str)}.")
    if kind == "json":
        parts.append("JSON (text when it does not parse).")
    text = " ".join(p for p in parts if p)
    if kind == "flag":
        return click.Option([f"{flag}/--no-{flag[2:]}", name], default=None, help=text)
    metavar = {"text": "TEXT", "integer": "INTEGER", "number": "NUMBER", "json": "JSON"}.get(kind)
    return click.Option([flag, name], type=param_type, default=None, metavar=metavar, help=text)


def _example(op: Operation) -> str:
    sample = {"text": "TEXT", "integer": "10", "number": "1.5", "json": "'\"...\"'", "flag": ""}
    words = [f"scalemule call {op.name}"]
    for name, field in op.args_model.model_fields.items():
        if field.is_required() and name not in _RESERVED:
            kind, param_type = field_kind(field)
            value = param_type.choices[0] if isinstance(param_type, click.Choice) else sample[kind]
            words.append(f"--{name.replace('_', '-')} {value}".rstrip())
    return " ".join(words)


def build_command(op: Operation, run: Any) -> click.Command:
    """The subcommand of one operation; ``run(op, arguments, api_key, fmt)`` performs it."""
    model: type[BaseModel] = op.args_model
    fields = {n: f for n, f in model.model_fields.items() if n not in _RESERVED}
    text_fields = frozenset(n for n, f in model.model_fields.items() if field_kind(f)[0] == "text")

    def callback(**params: Any) -> None:
        ctx = click.get_current_context()
        arguments = parse_pairs(list(params.pop("pairs")), params.pop("json"), text_fields=text_fields)
        api_key, fmt = params.pop("api_key"), params.pop("format")
        for name, value in params.items():
            if ctx.get_parameter_source(name) is ParameterSource.DEFAULT or value is None:
                continue
            arguments[name] = _json_or_text(value) if field_kind(fields[name])[0] == "json" else value
        run(op, arguments, api_key or (ctx.obj or {}).get("api_key"), fmt)

    params: list[click.Parameter] = [_option(n, f) for n, f in fields.items()]
    params += [
        click.Option(["--json"], metavar="OBJ|@FILE|-", help="arguments as a JSON object, a file (@path) or stdin (-)"),
        click.Option(["--api-key"], metavar="KEY", help="API key (default: SCALEMULE_API_KEY)"),
        click.Option(["--format", "format"], type=click.Choice(["json", "table"]), help="default: table on a terminal"),
        click.Argument(["pairs"], nargs=-1, metavar="[key=value]..."),
    ]
    description = (op.description or "").strip()
    epilog = f"Example:\n\n    {_example(op)}\n\nToolset: {op.toolset}. Needs: {op.permission}."
    return click.Command(op.name, params=params, callback=callback, help=description, epilog=epilog)


class ToolGroup(click.Group):
    """The operations of the registry as subcommands, built when named (``--help`` lists them all)."""

    def __init__(self, run: Any, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._run = run

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(REGISTRY)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        op = REGISTRY.get(cmd_name)
        return build_command(op, self._run) if op is not None else None

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if not name.startswith("-") and self.get_command(ctx, name) is None:
            near = difflib.get_close_matches(name, list(REGISTRY), n=1)
            guess = f" Did you mean '{near[0]}'?" if near else " See 'scalemule tools'."
            ctx.fail(f"No such tool '{name}'.{guess}")
        return super().resolve_command(ctx, args)


class SuggestingGroup(click.Group):
    """A group whose mistyped subcommand gets the nearest name."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            near = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            guess = f" Did you mean '{near[0]}'?" if near else ""
            ctx.fail(f"No such command '{name}'.{guess}")
        return super().resolve_command(ctx, args)
