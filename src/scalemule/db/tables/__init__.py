"""Every table, declared with SQLAlchemy Core, one module per domain.

Invariants live here as constraints with stable names (see ``db.errors``), so they hold on SQLite and
PostgreSQL alike under any concurrency. Every tenant-scoped table carries ``tenant_id``.
"""

from scalemule.db.tables.audit import audit_checkpoints, audit_events, audit_heads, audit_rollups, idempotency_keys
from scalemule.db.tables.base import metadata
from scalemule.db.tables.config import config_entries, config_history, environments, secret_versions, secrets
from scalemule.db.tables.identity import api_keys, invitations, memberships, principals, tenants
from scalemule.db.tables.jobs import jobs
from scalemule.db.tables.storage import signed_url_uses, storage_objects, storage_usage

__all__ = [
    "api_keys",
    "audit_checkpoints",
    "audit_events",
    "audit_heads",
    "audit_rollups",
    "config_entries",
    "config_history",
    "environments",
    "idempotency_keys",
    "invitations",
    "jobs",
    "memberships",
    "metadata",
    "principals",
    "secret_versions",
    "secrets",
    "signed_url_uses",
    "storage_objects",
    "storage_usage",
    "tenants",
]
