"""Plans: upsert (one event per tenant on the plan) and list."""

from __future__ import annotations

import asyncpg

from gatehouse.engine.model import Plan
from gatehouse.errors import InvalidArgument
from gatehouse.store.api import Actor
from gatehouse.store.changes import tenant_change
from gatehouse.store.rows import features_json, plan_record
from gatehouse.store.transactions import PLATFORM_SCOPE
from gatehouse.store.write_tail import AuditedChange, TenantWrites, append_events


class Plans(TenantWrites):
    """Plans, shared by every tenant on them."""

    async def upsert_plan(self, actor: Actor, plan: Plan) -> tuple[Plan, list[tuple[str, int]]]:
        """Create or replace a plan; every tenant on it gets a revision bump and an outbox
        event, since its effective flags may have changed. Deleted tenants too: a deleted
        tenant's config is still served, and one revision must mean one config. Returns the stored plan and
        (tenant id, new revision) of each of those tenants."""
        async with self._transaction(PLATFORM_SCOPE) as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO plans (name, features, quotas, rate_limits) VALUES ($1, $2, $3, $4)
                ON CONFLICT (name) DO UPDATE
                SET features = excluded.features, quotas = excluded.quotas, rate_limits = excluded.rate_limits
                RETURNING *
                """,
                plan.name,
                features_json(plan.features),
                dict(plan.quotas),
                dict(plan.rate_limits),
            )
            bumped = await conn.fetch(
                """
                UPDATE tenants SET revision = revision + 1
                WHERE plan = $1
                RETURNING id, revision
                """,
                plan.name,
            )
            change = AuditedChange(
                action="plan.upsert", target=f"plan/{plan.name}", kind="plan", details={"plan": plan.name}
            )
            # One audit row for the plan (platform-wide: no tenant), one event per tenant.
            revisions = [(str(r["id"]), int(r["revision"])) for r in bumped]
            await append_events(conn, actor, change, audit_tenant=None, revisions=revisions)
        await self._changes.publish(tenant_change(t, r, change.kind, change.subject) for t, r in revisions)
        return plan_record(row["name"], row["features"], row["quotas"], row["rate_limits"]), revisions

    async def list_plans(self) -> list[Plan]:
        """Every plan, by name."""
        async with self._reading(PLATFORM_SCOPE) as conn:
            rows = await conn.fetch("SELECT * FROM plans ORDER BY name")
        return [plan_record(row["name"], row["features"], row["quotas"], row["rate_limits"]) for row in rows]


async def require_plan(conn: asyncpg.Connection, plan: str) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM plans WHERE name = $1)", plan):
        raise InvalidArgument("plan", "unknown plan")
