"""Tenants: create, read, list, update, lifecycle transitions and config patches."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from gatehouse.engine.lifecycle import Action, transition
from gatehouse.engine.model import TenantRecord, TenantStatus
from gatehouse.errors import AlreadyExists, SettingsTooLarge, TenantNotFound
from gatehouse.store.api import DEFAULT_PLAN, SYSTEM_ROLES, Actor, ConfigPatch, Page
from gatehouse.store.changes import tenant_change
from gatehouse.merge_patch import merge_patch
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.plans import require_plan
from gatehouse.store.rows import tenant_record
from gatehouse.store.transactions import PLATFORM_SCOPE, require_tenant_id
from gatehouse.store.write_tail import AuditedChange, TenantWrites, append_events, completed, tenant_target

# A tenant's settings in all, after every merge-patch (each patch is capped at 64 KiB by
# the server): every GetTenantConfig answer, WatchTenantConfig message and cached copy
# carries them, so they stay far below gRPC's 4 MiB default message size.
MAX_TENANT_SETTINGS_BYTES = 256 * 1024

T = TypeVar("T")


_SYSTEM_ROLE_DESCRIPTIONS = {
    "owner": "Owns the tenant: every permission, and the last one cannot be removed",
    "admin": "Every permission",
    "member": "A member with no permissions of its own",
    "viewer": "Read, list and get everything",
}



class Tenants(TenantWrites):
    """The tenant rows themselves."""

    async def create_tenant(
        self, actor: Actor, *, slug: str, name: str, plan: str, region: str, settings: Mapping[str, Any]
    ) -> TenantRecord:
        """A new DRAFT tenant at revision 1 with the system roles; AlreadyExists for a taken slug."""
        plan = plan or DEFAULT_PLAN
        # Platform scope: the tenant's id does not exist until the INSERT makes it.
        async with self._transaction(PLATFORM_SCOPE) as conn:
            await require_plan(conn, plan)
            row = await conn.fetchrow(
                """
                INSERT INTO tenants (slug, name, plan, region, settings) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (slug) DO NOTHING
                RETURNING *
                """,
                slug,
                name,
                plan,
                region,
                dict(settings),
            )
            if row is None:
                raise AlreadyExists("a tenant with this slug already exists", metadata={"slug": slug})
            await conn.executemany(
                "INSERT INTO roles (tenant_id, name, permissions, description, system) VALUES ($1, $2, $3, $4, true)",
                [
                    (row["id"], role, list(permissions), _SYSTEM_ROLE_DESCRIPTIONS.get(role, ""))
                    for role, permissions in SYSTEM_ROLES.items()
                ],
            )
            change = AuditedChange(
                action="tenant.create",
                target=tenant_target(row["id"]),
                kind="tenant",
                details={"slug": slug, "plan": plan, "region": region},
            )
            await append_events(conn, actor, change, audit_tenant=row["id"], revisions=[(row["id"], row["revision"])])
        await self._changes.publish([tenant_change(row["id"], row["revision"], change.kind, change.subject)])
        return tenant_record(row)

    async def get_tenant(self, tenant_id: str) -> TenantRecord:
        """The tenant; TenantNotFound when there is none."""
        tid = require_tenant_id(tenant_id)
        async with self._reading(str(tid)) as conn:
            row = await conn.fetchrow("SELECT * FROM tenants WHERE id = $1", tid)
        if row is None:
            raise TenantNotFound("tenant not found", metadata={"tenant_id": tenant_id})
        return tenant_record(row)

    async def list_tenants(
        self, *, page_size: int, page_token: str, status: TenantStatus | None, plan: str, region: str
    ) -> Page[TenantRecord]:
        """Tenants in slug order, optionally filtered by status, plan and region (empty = any)."""
        query = Filters()
        if status is not None:
            query.add("status = {}", status.value)
        if plan:
            query.add("plan = {}", plan)
        if region:
            query.add("region = {}", region)
        after = decode_token(page_token, (str,))
        if after is not None:
            query.add("slug > {}", *after)
        size = clamp_page_size(page_size)
        sql = f"SELECT * FROM tenants{query.where()} ORDER BY slug LIMIT {query.param(size + 1)}"
        async with self._reading(PLATFORM_SCOPE) as conn:
            rows = await conn.fetch(sql, *query.args)
        return page_of(rows, size, tenant_record, key=lambda row: [row["slug"]])

    async def update_tenant(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        expected_revision: int,
        name: str | None,
        plan: str | None,
        region: str | None,
    ) -> TenantRecord:
        """Change name, plan and/or region (None = unchanged)."""
        columns = {
            column: value for column, value in (("name", name), ("plan", plan), ("region", region)) if value is not None
        }
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            if plan is not None:
                await require_plan(write.conn, plan)
            write.record(
                AuditedChange(
                    action="tenant.update",
                    target=tenant_target(write.tenant_id),
                    kind="tenant",
                    details=columns,
                    columns=columns,
                )
            )
        return tenant_record(completed(write))

    async def transition_tenant(
        self, actor: Actor, tenant_id: str, action: Action, *, reason: str, expected_revision: int, confirm: bool
    ) -> TenantRecord:
        """Apply a lifecycle action (IllegalTransition / ConfirmationRequired per the table),
        recording who did it and why; the database stamps when."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            before = TenantStatus(write.before["status"])
            after = transition(before, action, confirm=confirm)
            write.record(
                AuditedChange(
                    action=f"tenant.{action.value}",
                    target=tenant_target(write.tenant_id),
                    kind="tenant",
                    details={"from": before.value, "to": after.value},
                    reason=reason,
                    columns={"status": after.value, "status_reason": reason, "status_changed_by": actor.id},
                )
            )
        return tenant_record(completed(write))

    async def patch_tenant_config(
        self, actor: Actor, tenant_id: str, patch: ConfigPatch, *, expected_revision: int
    ) -> TenantRecord:
        """Merge-patch the settings (RFC 7396) and set or clear flag and quota overrides.

        A key both set and cleared in one patch ends up set.
        """
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            columns: dict[str, Any] = {}
            if patch.settings_patch is not None:
                settings = merge_patch(write.before["settings"], patch.settings_patch)
                size = len(json.dumps(settings, separators=(",", ":")))
                if size > MAX_TENANT_SETTINGS_BYTES and size > len(json.dumps(write.before["settings"], separators=(",", ":"))):
                    raise SettingsTooLarge(
                        f"the tenant's settings would be {size} bytes of JSON, over {MAX_TENANT_SETTINGS_BYTES}",
                        metadata={"limit": str(MAX_TENANT_SETTINGS_BYTES), "size": str(size)},
                    )
                columns["settings"] = settings
            if patch.set_flags or patch.clear_flags:
                columns["flag_overrides"] = _overridden(
                    write.before["flag_overrides"], patch.set_flags, patch.clear_flags
                )
            if patch.set_quotas or patch.clear_quotas:
                columns["quota_overrides"] = _overridden(
                    write.before["quota_overrides"], patch.set_quotas, patch.clear_quotas
                )
            write.record(
                AuditedChange(
                    action="tenant.config.patch",
                    target=tenant_target(write.tenant_id),
                    kind="config",
                    details={
                        "settings_keys": sorted(patch.settings_patch or ()),
                        "set_flags": dict(patch.set_flags),
                        "clear_flags": list(patch.clear_flags),
                        "set_quotas": dict(patch.set_quotas),
                        "clear_quotas": list(patch.clear_quotas),
                    },
                    columns=columns,
                )
            )
        return tenant_record(completed(write))


def _overridden(current: Mapping[str, T], set_: Mapping[str, T], clear: Sequence[str]) -> dict[str, T]:
    cleared = set(clear)
    overrides = {key: value for key, value in current.items() if key not in cleared}
    overrides.update(set_)
    return overrides
