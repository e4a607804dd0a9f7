"""What the ``scalemule`` command prints: results as JSON or tables, errors, exit codes, progress."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

# One exit status per error class, so scripts branch without parsing output (docs/errors.md).
# 2 is click's usage error: the command line itself is wrong (unknown command, tool or option).
EXIT_CODES: dict[str, int] = {
    "internal": 1,
    "invalid_argument": 3,
    "unauthenticated": 4,
    "permission_denied": 5,
    "not_found": 6,
    "already_exists": 7,
    "conflict": 8,
    "failed_precondition": 9,
    "quota_exceeded": 10,
    "rate_limited": 11,
}
EXIT_USAGE = 2
FORMATS = ("json", "table")


class CliError(Exception):
    """A CLI failure printed as ``{"error": {...}}`` with the exit status of its code."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.body = {"code": code, "message": message, "hint": hint}

    @property
    def exit_code(self) -> int:
        """The documented exit status of this error's code."""
        return EXIT_CODES.get(str(self.body["code"]), 1)


def chosen_format(explicit: str | None) -> str:
    """``--format`` when given, else a table for a person at a terminal and JSON for a pipe."""
    if explicit:
        return explicit
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root().params.get("output_format") if ctx is not None else None
    if root:
        return str(root)
    return "table" if sys.stdout.isatty() else "json"


def out(text: str, *, nl: bool = True) -> None:
    """Write to stdout; when the reader has gone away (``| head -1``), end the command quietly with 0.

    Raises:
        click.exceptions.Exit: the pipe closed (status 0: the reader had what it wanted).
    """
    try:
        click.echo(text, nl=nl)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's last flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise click.exceptions.Exit(0) from None


def emit(value: Any, fmt: str | None = None) -> None:
    """Print a result in the chosen format."""
    if chosen_format(fmt) == "json":
        out(json.dumps(value, indent=2, ensure_ascii=False, default=str))
    else:
        out(table(value))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _grid(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def table(value: Any) -> str:
    """A readable rendering: a page's items as columns, an object as aligned ``key  value`` lines."""
    if isinstance(value, dict) and isinstance(value.get("items"), list):
        rows = [i if isinstance(i, dict) else {"value": i} for i in value["items"]]
        text = _grid(rows) if rows else "(no items)"
        rest = {k: v for k, v in value.items() if k != "items" and v is not None}
        return text + ("\n\n" + table(rest) if rest else "")
    if isinstance(value, dict):
        if not value:
            return "(empty)"
        width = max(len(str(k)) for k in value)
        return "\n".join(f"{str(k).ljust(width)}  {_cell(v)}" for k, v in value.items())
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _grid(value)
    return _cell(value)


def emit_error(body: dict[str, Any], fmt: str | None = None) -> None:
    """The error contract: JSON on stdout for scripts, a readable line on stderr at a terminal."""
    if chosen_format(fmt) == "json":
        out(json.dumps({"error": body}, indent=2, ensure_ascii=False))
        return
    click.echo(f"error: {body['code']}: {body['message']}", err=True)
    if body.get("hint"):
        click.echo(f"hint: {body['hint']}", err=True)


@contextmanager
def progress(label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr while a terminal watches, silent when piped; yields ``advance(n)``.

    The total is not known up front (a sweep lists blobs as it goes), so the bar counts.
    """
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    with click.progressbar(iter(()), label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update
