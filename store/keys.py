"""API keys: tenant keys (members holding roles) and operator keys (no tenant)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, UTC

import asyncpg

from gatehouse.engine.model import KEY_SUBJECT_TYPE, key_subject
from gatehouse.errors import KeyAlreadyRevoked, NotFound
from gatehouse.store.api import Actor, ApiKeyCredential, ApiKeyRecord, Page
from gatehouse.store.pages import Filters, clamp_page_size, decode_token, page_of
from gatehouse.store.rows import key_record
from gatehouse.store.transactions import PLATFORM_SCOPE, require_tenant_id, tenant_revision
from gatehouse.store.write_tail import PLATFORM_EVENT_TENANT, AuditedChange, TenantWrites, append_events, insert_audit


_INSERT_KEY = """
INSERT INTO api_keys (id, tenant_id, name, secret_hash, permissions, expires_at, created_by)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *
"""



class Keys(TenantWrites):
    """API keys; never a secret leaves here but its hash."""

    async def create_api_key(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        key_id: str,
        secret_hash: str,
        name: str,
        permissions: Sequence[str],
        expires_at: float | None,
        roles: Sequence[tuple[str, str]],
    ) -> tuple[ApiKeyRecord, int]:
        """A tenant key: a member of its tenant (subject `api_key/<id>`) holding `roles`,
        limited to `permissions`. With tenant_id "": an operator key, whose patterns are
        its whole grant, on the platform."""
        expires = datetime.fromtimestamp(expires_at, tz=UTC) if expires_at is not None else None
        details = {"name": name, "permissions": list(permissions), "roles": [list(r) for r in roles]}
        if not tenant_id:
            async with self._transaction(PLATFORM_SCOPE) as conn:
                row = await conn.fetchrow(
                    _INSERT_KEY, key_id, None, name, secret_hash, list(permissions), expires, actor.id
                )
                await insert_audit(
                    conn, actor, tenant_id=None, action="key.create", target=key_subject(key_id).key, outcome="ok",
                    reason="", details=details,
                )
            return key_record(row, ()), 0
        async with self._tenant_write(actor, tenant_id) as write:
            conn, tid = write.conn, write.tenant_id
            known = set(await conn.fetchval(
                "SELECT coalesce(array_agg(name), '{}') FROM roles WHERE tenant_id = $1 AND name = ANY($2::text[])",
                tid,
                [role for role, _ in roles],
            ))
            for role, _ in roles:
                if role not in known:
                    raise NotFound("role not found", metadata={"role": role})
            row = await conn.fetchrow(_INSERT_KEY, key_id, tid, name, secret_hash, list(permissions), expires, actor.id)
            await conn.execute(
                "INSERT INTO memberships (tenant_id, subject_type, subject_id) VALUES ($1, $2, $3)",
                tid,
                KEY_SUBJECT_TYPE,
                key_id,
            )
            await conn.executemany(
                "INSERT INTO role_assignments (tenant_id, subject_type, subject_id, role, scope)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                [(tid, KEY_SUBJECT_TYPE, key_id, role, scope) for role, scope in roles],
            )
            write.record(
                AuditedChange(
                    action="key.create", target=key_subject(key_id).key, kind="key",
                    subject=key_subject(key_id).key, details=details,
                )
            )
        return key_record(row, tuple(roles)), write.revision

    async def revoke_api_key(self, actor: Actor, tenant_id: str, key_id: str) -> int:
        """Stop a key working, at every sidecar (a `key` event names it). NotFound when the
        key is not in that tenant (or, with tenant_id "", not an operator key)."""
        subject = key_subject(key_id).key
        change = AuditedChange(action="key.revoke", target=subject, kind="key", subject=subject)
        if not tenant_id:
            async with self._transaction(PLATFORM_SCOPE) as conn:
                await _revoke_key(conn, actor, None, key_id)
                await append_events(conn, actor, change, audit_tenant=None, revisions=[(PLATFORM_EVENT_TENANT, 0)])
            return 0
        async with self._tenant_write(actor, tenant_id) as write:
            await _revoke_key(write.conn, actor, write.tenant_id, key_id)
            write.record(change)
        return write.revision

    async def list_api_keys(self, tenant_id: str, *, page_size: int, page_token: str) -> Page[ApiKeyRecord]:
        """A tenant's keys (or, with tenant_id "", the operator keys), oldest first, with
        the roles each holds now; never a secret or a hash."""
        query = Filters()
        if tenant_id:
            tid = require_tenant_id(tenant_id)
            scope = str(tid)
            query.add("k.tenant_id = {}", tid)
        else:
            scope = PLATFORM_SCOPE
            query.add("k.tenant_id IS NULL")
        after = decode_token(page_token, (str,))
        if after is not None:
            query.add("k.id > {}", *after)
        size = clamp_page_size(page_size)
        sql = f"""
            SELECT k.*,
                   (SELECT coalesce(array_agg(ARRAY[a.role, a.scope] ORDER BY a.role, a.scope), '{{}}')
                    FROM role_assignments a
                    WHERE a.tenant_id = k.tenant_id AND a.subject_type = {query.param(KEY_SUBJECT_TYPE)}
                      AND a.subject_id = k.id) AS grants
            FROM api_keys k{query.where()} ORDER BY k.id LIMIT {query.param(size + 1)}
        """
        async with self._reading(scope) as conn:
            if tenant_id:
                await tenant_revision(conn, tid)
            rows = await conn.fetch(sql, *query.args)
        return page_of(
            # (role, scope) pairs as a two-dimensional array: no separator to collide with.
            rows, size, lambda row: key_record(row, tuple((role, scope) for role, scope in row["grants"])),
            key=lambda row: [row["id"]],
        )

    async def find_api_key(self, key_id: str) -> ApiKeyCredential | None:
        async with self._reading(PLATFORM_SCOPE) as conn:
            row = await conn.fetchrow(
                "SELECT id, tenant_id, secret_hash, permissions, extract(epoch FROM expires_at)::float8 AS expires,"
                " revoked_at IS NOT NULL AS revoked FROM api_keys WHERE id = $1",
                key_id,
            )
        if row is None:
            return None
        return ApiKeyCredential(
            id=row["id"],
            tenant_id=str(row["tenant_id"]) if row["tenant_id"] is not None else "",
            secret_hash=row["secret_hash"],
            permissions=tuple(row["permissions"]),
            expires_at=row["expires"],
            revoked=row["revoked"],
        )


async def _revoke_key(conn: asyncpg.Connection, actor: Actor, tenant_id: uuid.UUID | None, key_id: str) -> None:
    revoked_at = await conn.fetchrow(
        "SELECT revoked_at FROM api_keys WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 FOR UPDATE",
        key_id,
        tenant_id,
    )
    if revoked_at is None:
        raise NotFound("no such API key", metadata={"key_id": key_id})
    if revoked_at["revoked_at"] is not None:
        raise KeyAlreadyRevoked("the key is already revoked", metadata={"key_id": key_id})
    await conn.execute(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = $2 WHERE id = $1", key_id, actor.id
    )
