"""Helpers shared by the store tests: reading what the database holds behind row-level
security, as the superuser."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from gatehouse.engine.model import TenantRecord

PG_SUPERUSER = "postgres"

TenantFactory = Callable[..., Awaitable[TenantRecord]]


def superuser_dsn(app_dsn: str) -> str:
    """The same database as `app_dsn`, as the superuser (which bypasses row-level security)."""
    parts = urlsplit(app_dsn)
    return f"postgresql://{PG_SUPERUSER}@{parts.hostname}:{parts.port or 5432}{parts.path}"


@dataclass(frozen=True)
class Written:
    """What the database holds for one tenant, seen by the superuser (no RLS)."""

    revision: int | None
    audit: list[dict[str, Any]]
    outbox: list[dict[str, Any]]


async def written(superuser: asyncpg.Connection, tenant_id: str) -> Written:
    revision = await superuser.fetchval("SELECT revision FROM tenants WHERE id = $1::uuid", tenant_id)
    audit = await superuser.fetch("SELECT * FROM audit_log WHERE tenant_id = $1::uuid ORDER BY id", tenant_id)
    outbox = await superuser.fetch("SELECT * FROM outbox WHERE tenant_id = $1::uuid ORDER BY id", tenant_id)
    # published_at is the relay's business (a sidecar of another test may be running one).
    events = [{k: v for k, v in dict(row).items() if k != "published_at"} for row in outbox]
    return Written(revision, [dict(row) for row in audit], events)


async def row_counts(superuser: asyncpg.Connection) -> dict[str, int]:
    """Rows in every table, across all tenants."""
    tables = ("tenants", "plans", "roles", "memberships", "role_assignments", "audit_log", "outbox")
    return {table: await superuser.fetchval(f"SELECT count(*) FROM {table}") for table in tables}
