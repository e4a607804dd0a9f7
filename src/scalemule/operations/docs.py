"""The Markdown docs, served to agents as ``scalemule://docs/{topic}`` resources."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from scalemule.core.access import AUTHENTICATED
from scalemule.core.errors import NotFound
from scalemule.operations.base import Args, Call, Result
from scalemule.operations.registry import Resource, operation

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"


def topics() -> list[str]:
    """The available topics: the docs' file names without ``.md``."""
    return sorted(p.stem for p in DOCS_DIR.glob("*.md"))


class DocsGetArgs(Args):
    topic: str = Field(
        min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$", description="Docs topic, e.g. 'quickstart'."
    )


class DocText(Result):
    topic: str
    markdown: str


@operation(
    "docs_get",
    title="Read a docs topic",
    permission=AUTHENTICATED,
    toolset="docs",
    read_only=True,
    idempotent=True,
    tool=False,
    resources=(
        Resource(
            "scalemule://docs/{topic}", "A page of the ScaleMule docs", "text/markdown", body="markdown", name="docs"
        ),
    ),
)
async def docs_get(call: Call, args: DocsGetArgs) -> DocText:
    """Read one page of the ScaleMule docs."""
    path = DOCS_DIR / f"{args.topic}.md"
    if not re.fullmatch(r"[a-z0-9-]+", args.topic) or not path.is_file():
        raise NotFound(f"no docs topic {args.topic!r}", hint=f"Topics: {', '.join(topics())}.")
    return DocText(topic=args.topic, markdown=path.read_text(encoding="utf-8"))
