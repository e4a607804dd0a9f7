"""Every agent-facing operation, registered on import. ``REGISTRY`` is the single source of truth."""

import scalemule.operations.storage  # noqa: F401
from scalemule.operations import (  # noqa: F401  (registers the operations)
    audit,
    config,
    docs,
    grants,
    identity,
    jobs,
    members,
    permissions,
    prompts,
    secrets,
    tasks,
)
from scalemule.operations.registry import REGISTRY, Operation, Resource, operation, resource_for

__all__ = ["REGISTRY", "Operation", "Resource", "operation", "resource_for"]
