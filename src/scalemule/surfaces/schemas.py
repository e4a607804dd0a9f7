"""Generated files: tool_schemas/*.json, docs/tools.md and the schemas the server publishes
(src/scalemule/operations/schemas.json), derived from the registry's models, and the settings table in
docs/operations.md, derived from the settings model.

``scalemule schemas`` rewrites them; ``scalemule schemas --check`` (and a test) fails on drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scalemule.dispatch import DEFAULT_TOOLS
from scalemule.operations import REGISTRY, Operation
from scalemule.operations.registry import PUBLISHED
from scalemule.settings import settings_table

# The generated part of docs/operations.md lies between these lines; the rest is written by hand.
SETTINGS_START = "<!-- settings table: generated from the settings model by `scalemule schemas` -->"
SETTINGS_END = "<!-- end of settings table -->"
# Where the published schemas the server reads (operations.registry.PUBLISHED) lie in a checkout.
PUBLISHED_IN_CHECKOUT = Path("src", "scalemule", "operations", PUBLISHED.name)


def tool_schema(op: Operation) -> dict[str, Any]:
    """The published contract of one tool."""
    return {
        "name": op.name,
        "title": op.title,
        "description": op.description,
        "toolset": op.toolset,
        "permission": op.permission,
        "annotations": op.annotations,
        "inputSchema": op.derive_input_schema(),
        "outputSchema": op.derive_output_schema(),
    }


def _tools() -> list[Operation]:
    return [op for op in REGISTRY.values() if op.tool]


def tools_markdown() -> str:
    """docs/tools.md: every tool by toolset, with permission, annotations and arguments."""
    lines = [
        "# Tools reference",
        "",
        "Generated from the operation registry by `scalemule schemas`; do not edit by hand.",
        "Each tool's full input and output JSON Schema is in `tool_schemas/<tool>.json`.",
        "",
    ]
    lines += [
        "Tools marked **default** make the default tool list; every tool is served with its toolset",
        "(`--toolsets`, the `X-MCP-Toolsets` header, or `/mcp/x/{toolsets}`; see [concepts](concepts.md)).",
        "",
    ]
    for toolset in sorted({op.toolset for op in _tools()}):
        lines += [f"## {toolset}", ""]
        for op in (o for o in _tools() if o.toolset == toolset):
            flags = [k.removesuffix("Hint") for k, v in op.annotations.items() if v]
            lines += [
                f"### `{op.name}`" + (" (default)" if op.name in DEFAULT_TOOLS else ""),
                "",
                f"**{op.title}.**",
                "",
                op.description,
                "",
                f"- permission: `{op.permission}`",
                f"- annotations: {', '.join(flags) or 'none (writes, not idempotent)'}",
            ]
            if op.task:
                lines.append(
                    "- MCP Tasks: a task-aware client gets a task at once; the server runs the call in the "
                    "background with the caller's rights ([jobs](jobs.md#long-running-work))"
                )
            schema = op.derive_input_schema()
            required = set(schema.get("required", []))
            props = schema.get("properties", {})
            if props:
                lines.append("- arguments:")
                for name, prop in props.items():
                    need = "required" if name in required else "optional"
                    about = prop.get("description", "")
                    lines.append(f"  - `{name}` ({need}){': ' + about if about else ''}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render(root: Path) -> dict[Path, str]:
    """Every generated file under ``root`` with its content."""
    contracts = [tool_schema(op) for op in _tools()]
    files = {
        root / "tool_schemas" / f"{c['name']}.json": json.dumps(c, indent=2, ensure_ascii=False) + "\n"
        for c in contracts
    }
    published = {c["name"]: {k: c[k] for k in ("inputSchema", "outputSchema")} for c in contracts}
    files[root / PUBLISHED_IN_CHECKOUT] = json.dumps(published, ensure_ascii=False) + "\n"
    files[root / "docs" / "tools.md"] = tools_markdown()
    operations = root / "docs" / "operations.md"
    if operations.exists():
        files[operations] = with_settings_table(operations.read_text(encoding="utf-8"))
    return files


def with_settings_table(markdown: str) -> str:
    """``markdown`` with the settings table between its markers rewritten from the settings model."""
    head, start, rest = markdown.partition(SETTINGS_START)
    _, end, tail = rest.partition(SETTINGS_END)
    if not start or not end:
        return markdown
    return f"{head}{SETTINGS_START}\n{settings_table()}{SETTINGS_END}{tail}"


def drift(root: Path) -> list[Path]:
    """Generated files that are missing, stale, or no longer generated."""
    return _stale(root, render(root))


def _stale(root: Path, files: dict[Path, str]) -> list[Path]:
    stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    extra = [p for p in (root / "tool_schemas").glob("*.json") if p not in files]
    return sorted(stale + extra)


def write(root: Path) -> list[Path]:
    """Rewrite the generated files that are stale, delete those no longer generated; returns both."""
    files = render(root)
    changed = _stale(root, files)
    for path in changed:
        if path not in files:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[path], encoding="utf-8")
    return changed
