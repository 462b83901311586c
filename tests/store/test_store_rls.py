"""Row-level security with teeth: queries that forget their tenant filter still see and
write only the tenant their transaction is scoped to."""

from __future__ import annotations

import asyncpg
import pytest

from gatehouse.engine.model import Plan, TenantRecord
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PLATFORM_SCOPE, PostgresStore


# (table, the column holding the tenant id)
TENANT_TABLES = [
    ("tenants", "id"),
    ("roles", "tenant_id"),
    ("memberships", "tenant_id"),
    ("role_assignments", "tenant_id"),
    ("audit_log", "tenant_id"),
    ("outbox", "tenant_id"),
]


async def _tenant_ids(conn: asyncpg.Connection, table: str, column: str) -> set[str | None]:
    # Deliberately unfiltered: only row-level security stands between us and other tenants.
    rows = await conn.fetch(f"SELECT {column} AS tenant FROM {table}")
    return {str(row["tenant"]) if row["tenant"] is not None else None for row in rows}


@pytest.mark.parametrize(("table", "column"), TENANT_TABLES)
async def test_a_scoped_transaction_sees_only_its_tenant(
    runtime: asyncpg.Connection, two_tenants: tuple[TenantRecord, TenantRecord], table: str, column: str
) -> None:
    a, _ = two_tenants
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", a.id)
        assert await _tenant_ids(runtime, table, column) == {a.id}


@pytest.mark.parametrize(("table", "column"), TENANT_TABLES)
async def test_no_scope_sees_nothing(
    runtime: asyncpg.Connection, two_tenants: tuple[TenantRecord, TenantRecord], table: str, column: str
) -> None:
    assert await _tenant_ids(runtime, table, column) == set()
    # A scope set in an earlier transaction on this connection has ended with it.
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", two_tenants[0].id)
    assert await _tenant_ids(runtime, table, column) == set()


async def test_platform_scope_sees_every_tenant_and_platform_audit_rows(
    store: PostgresStore,
    actor: Actor,
    runtime: asyncpg.Connection,
    two_tenants: tuple[TenantRecord, TenantRecord],
    unique: str,
) -> None:
    await store.upsert_plan(actor, Plan(name=f"plan-{unique}"))  # audited with no tenant
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", PLATFORM_SCOPE)
        assert {two_tenants[0].id, two_tenants[1].id} <= await _tenant_ids(runtime, "roles", "tenant_id")
        assert None in await _tenant_ids(runtime, "audit_log", "tenant_id")
    async with runtime.transaction():
        await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", two_tenants[0].id)
        assert None not in await _tenant_ids(runtime, "audit_log", "tenant_id")


class _Rollback(Exception):
    """Raised to roll a test transaction back."""


async def test_a_scoped_transaction_cannot_write_another_tenants_rows(
    runtime: asyncpg.Connection, two_tenants: tuple[TenantRecord, TenantRecord]
) -> None:
    a, b = two_tenants
    with pytest.raises(_Rollback):
        async with runtime.transaction():
            await runtime.execute("SELECT set_config('gatehouse.tenant_id', $1, true)", a.id)
            # Unfiltered writes touch only A's rows...
            assert await runtime.execute("UPDATE roles SET description = 'x' WHERE name = 'editor'") == "UPDATE 1"
            assert await runtime.execute("DELETE FROM role_assignments") == "DELETE 1"
            # ...and a row for B cannot even be inserted.
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await runtime.execute(
                    "INSERT INTO memberships (tenant_id, subject_type, subject_id) VALUES ($1, 'user', 'mallory')",
                    b.id,
                )
            raise _Rollback
