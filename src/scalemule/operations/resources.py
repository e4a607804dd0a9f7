"""MCP resources, each read through an operation (and so authorized and audited like a tool call)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ResourceRoute:
    """A URI template served by reading one operation with arguments taken from the URI."""

    template: str
    operation: str
    description: str
    mime_type: str = "application/json"
    # The result field holding the body; None serves the whole result as JSON.
    body_field: str | None = None
    extra_args: dict[str, Any] = field(default_factory=dict)

    @property
    def pattern(self) -> re.Pattern[str]:
        """A regex matching URIs of this template; the last ``{name}`` may span slashes."""
        parts = re.split(r"(\{[a-z_]+\})", self.template)
        regex = ""
        for i, part in enumerate(parts):
            if part.startswith("{"):
                last = i == len(parts) - 2 and parts[-1] == ""
                regex += f"(?P<{part[1:-1]}>{'.+' if last else '[^/]+'})"
            else:
                regex += re.escape(part)
        return re.compile(f"^{regex}$")

    def match(self, uri: str) -> dict[str, Any] | None:
        """The operation's arguments for ``uri``, or None when it is not of this template."""
        found = self.pattern.match(uri)
        return None if found is None else {**self.extra_args, **found.groupdict()}


ROUTES: list[ResourceRoute] = [
    ResourceRoute("scalemule://docs/{topic}", "docs_get", "ScaleMule documentation page", "text/markdown", "markdown"),
    ResourceRoute("scalemule://tenants/{tenant}", "tenants_get", "A tenant and your role in it"),
    ResourceRoute(
        "scalemule://tenants/{tenant}/audit/recent",
        "audit_query",
        "The tenant's 50 most recent audit events",
        extra_args={"limit": 50},
    ),
]


def route_for(uri: str) -> tuple[ResourceRoute, dict[str, Any]] | None:
    """The route serving ``uri`` and the arguments it implies."""
    for route in ROUTES:
        args = route.match(uri)
        if args is not None:
            return route, args
    return None
