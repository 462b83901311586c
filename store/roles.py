"""Tenant roles: create, update, delete (system roles are immutable), list."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from gatehouse.errors import AlreadyExists, NotFound, RoleInUse, SystemRoleImmutable
from gatehouse.store.api import Actor, RoleRecord
from gatehouse.store.rows import role_record
from gatehouse.store.transactions import require_tenant_id, tenant_revision
from gatehouse.store.write_tail import AuditedChange, TenantWrites


class Roles(TenantWrites):
    """A tenant's roles."""

    async def create_role(
        self, actor: Actor, tenant_id: str, *, name: str, permissions: tuple[str, ...], description: str,
        expected_revision: int = 0,
    ) -> tuple[RoleRecord, int]:
        """A new tenant role; AlreadyExists when the name is taken (system roles included)."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            row = await write.conn.fetchrow(
                """
                INSERT INTO roles (tenant_id, name, permissions, description) VALUES ($1, $2, $3, $4)
                ON CONFLICT DO NOTHING
                RETURNING *
                """,
                write.tenant_id,
                name,
                list(permissions),
                description,
            )
            if row is None:
                raise AlreadyExists("a role with this name already exists", metadata={"role": name})
            write.record(_role_change("role.create", name, permissions))
        return role_record(row), write.revision

    async def update_role(
        self,
        actor: Actor,
        tenant_id: str,
        *,
        name: str,
        permissions: tuple[str, ...],
        description: str,
        expected_revision: int,
    ) -> tuple[RoleRecord, int]:
        """Replace a tenant role's permissions and description; system roles are immutable."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            await _require_custom_role(write.conn, write.tenant_id, name)
            row = await write.conn.fetchrow(
                "UPDATE roles SET permissions = $3, description = $4 WHERE tenant_id = $1 AND name = $2 RETURNING *",
                write.tenant_id,
                name,
                list(permissions),
                description,
            )
            # Every holder of the role is affected: the event names no single subject.
            write.record(_role_change("role.update", name, permissions))
        return role_record(row), write.revision

    async def delete_role(self, actor: Actor, tenant_id: str, *, name: str, expected_revision: int = 0) -> int:
        """Delete a tenant role that nobody holds (RoleInUse otherwise)."""
        async with self._tenant_write(actor, tenant_id, expected_revision=expected_revision) as write:
            await _require_custom_role(write.conn, write.tenant_id, name)
            in_use = await write.conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM role_assignments WHERE tenant_id = $1 AND role = $2)",
                write.tenant_id,
                name,
            )
            if in_use:
                raise RoleInUse("the role is still assigned; revoke it first", metadata={"role": name})
            await write.conn.execute("DELETE FROM roles WHERE tenant_id = $1 AND name = $2", write.tenant_id, name)
            write.record(_role_change("role.delete", name, ()))
        return write.revision

    async def list_roles(self, tenant_id: str) -> tuple[list[RoleRecord], int]:
        """Every role of the tenant (system roles included), by name, and the tenant revision."""
        tid = require_tenant_id(tenant_id)
        async with self._reading(str(tid)) as conn:
            revision = await tenant_revision(conn, tid)
            rows = await conn.fetch("SELECT * FROM roles WHERE tenant_id = $1 ORDER BY name", tid)
        return [role_record(row) for row in rows], revision


async def _require_custom_role(conn: asyncpg.Connection, tenant_id: uuid.UUID, name: str) -> None:
    """NotFound when the role does not exist, SystemRoleImmutable when it is a system role."""
    system = await conn.fetchval("SELECT system FROM roles WHERE tenant_id = $1 AND name = $2", tenant_id, name)
    if system is None:
        raise NotFound("role not found", metadata={"role": name})
    if system:
        raise SystemRoleImmutable(f"{name} is a system role and cannot be changed", metadata={"role": name})


def _role_change(action: str, name: str, permissions: Sequence[str]) -> AuditedChange:
    details: dict[str, Any] = {"role": name}
    if permissions:
        details["permissions"] = list(permissions)
    return AuditedChange(action=action, target=f"role/{name}", kind="role", details=details)
