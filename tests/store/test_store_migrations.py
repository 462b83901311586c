"""Migrations: up, down and up again leave exactly the schema they claim, and concurrent
migrators apply each step once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gatehouse.store.migrate import LATEST_VERSION, MIGRATIONS, current_version, migrate_down, migrate_up

TABLES = ("plans", "tenants", "roles", "memberships", "role_assignments", "audit_log", "outbox")
TENANT_SCOPED = ("tenants", "roles", "memberships", "role_assignments", "audit_log", "outbox")


async def _public_objects(dsn: str) -> list[str]:
    """Every relation and function in the public schema."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public'
            UNION ALL
            SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public'
            ORDER BY 1
            """
        )
    finally:
        await conn.close()
    return [row["name"] for row in rows]


def test_migrations_are_numbered_from_one() -> None:
    assert LATEST_VERSION >= 1
    assert sorted(MIGRATIONS) == list(range(1, LATEST_VERSION + 1))


async def test_up_down_up(empty_db: str) -> None:
    assert await _public_objects(empty_db) == []

    assert await migrate_up(empty_db) == LATEST_VERSION
    assert await current_version(empty_db) == LATEST_VERSION
    objects = await _public_objects(empty_db)
    assert {*TABLES, "schema_migrations"} <= set(objects)

    assert await migrate_down(empty_db) == 0
    assert await current_version(empty_db) == 0
    # Down undoes up completely: no table, index, sequence or function is left behind.
    assert await _public_objects(empty_db) == []

    assert await migrate_up(empty_db) == LATEST_VERSION
    assert await _public_objects(empty_db) == objects


async def test_migrating_again_is_a_no_op(empty_db: str) -> None:
    assert await migrate_up(empty_db) == LATEST_VERSION
    assert await migrate_up(empty_db) == LATEST_VERSION
    assert await migrate_down(empty_db, LATEST_VERSION) == LATEST_VERSION


async def test_concurrent_migrators_apply_each_step_once(empty_db: str) -> None:
    results = await asyncio.gather(*(migrate_up(empty_db) for _ in range(4)))
    assert results == [LATEST_VERSION] * 4
    conn = await asyncpg.connect(empty_db)
    try:
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [row["version"] for row in versions] == list(range(1, LATEST_VERSION + 1))


async def test_target_out_of_range_is_rejected(empty_db: str) -> None:
    with pytest.raises(ValueError):
        await migrate_up(empty_db, LATEST_VERSION + 1)
    with pytest.raises(ValueError):
        await migrate_down(empty_db, -1)
    assert await current_version(empty_db) == 0


async def test_every_tenant_table_forces_row_level_security(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
            list(TENANT_SCOPED),
        )
    finally:
        await conn.close()
    assert {row["relname"]: (row["relrowsecurity"], row["relforcerowsecurity"]) for row in rows} == {
        table: (True, True) for table in TENANT_SCOPED
    }


async def test_the_default_plan_is_seeded(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT features::text FROM plans WHERE name = 'default'") == "{}"
    finally:
        await conn.close()
