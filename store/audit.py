"""The audit log: rows of denied and failed calls, and listing it."""

from __future__ import annotations

from datetime import datetime, UTC

from gatehouse.store.api import Actor, AuditRecord, Page
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.rows import audit_record
from gatehouse.store.transactions import PLATFORM_SCOPE, parse_tenant_id, require_tenant_id
from gatehouse.store.write_tail import TenantWrites, insert_audit


class Audit(TenantWrites):
    """Audit rows written on their own, and the listing of all of them."""

    async def record_audit(
        self, actor: Actor, *, tenant_id: str | None, action: str, target: str, outcome: str, reason: str
    ) -> None:
        """An audit row on its own (denied or failed calls). A tenant id that is not one is
        kept in the details and the row filed as platform-wide."""
        tid = parse_tenant_id(tenant_id) if tenant_id else None
        details = {"tenant_id": tenant_id} if tenant_id and tid is None else {}
        async with self._transaction(str(tid) if tid else PLATFORM_SCOPE) as conn:
            await insert_audit(
                conn,
                actor,
                tenant_id=tid,
                action=action,
                target=target,
                outcome=outcome,
                reason=reason,
                details=details,
            )

    async def list_audit_events(
        self,
        *,
        tenant_id: str,
        actor: str,
        action: str,
        since: float | None,
        until: float | None,
        page_size: int,
        page_token: str,
    ) -> Page[AuditRecord]:
        """Audit events newest first; one tenant's, or every event when tenant_id is empty.
        `since` is inclusive and `until` exclusive (unix seconds)."""
        query = Filters()
        scope = PLATFORM_SCOPE
        if tenant_id:
            tid = require_tenant_id(tenant_id)
            scope = str(tid)
            query.add("tenant_id = {}", tid)
        if actor:
            query.add("actor = {}", actor)
        if action:
            query.add("action = {}", action)
        if since is not None:
            query.add("created_at >= {}", datetime.fromtimestamp(since, tz=UTC))
        if until is not None:
            query.add("created_at < {}", datetime.fromtimestamp(until, tz=UTC))
        after = decode_token(page_token, (int,))
        if after is not None:
            query.add("id < {}", *after)
        size = clamp_page_size(page_size)
        sql = f"SELECT * FROM audit_log{query.where()} ORDER BY id DESC LIMIT {query.param(size + 1)}"
        async with self._reading(scope) as conn:
            rows = await conn.fetch(sql, *query.args)
        return page_of(rows, size, audit_record, key=lambda row: [row["id"]])
