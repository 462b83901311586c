"""Fixtures for the store tests: one PostgresStore on this run's database, a superuser
connection to look behind row-level security, and a tenant factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gatehouse.engine.model import SubjectRef, TenantRecord
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore, connect
from tests.store.store_helpers import TenantFactory, superuser_dsn


@pytest.fixture(scope="session")
async def store(database_url: str) -> AsyncIterator[PostgresStore]:
    store = await connect(database_url, min_size=1, max_size=4)
    yield store
    await store.close()


@pytest.fixture(scope="session")
async def superuser(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to this run's database: sees every row, can add triggers."""
    conn = await asyncpg.connect(superuser_dsn(database_url))
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    yield conn
    await conn.close()


@pytest.fixture
def actor(unique: str) -> Actor:
    return Actor(id=f"operator-{unique}", request_id=f"req-{unique}")


@pytest.fixture
def make_tenant(store: PostgresStore, actor: Actor, unique: str) -> TenantFactory:
    """Creates tenants with slugs unique to this test: make_tenant("a"), make_tenant("b", plan=...)."""

    async def make(label: str = "t", *, plan: str = "", region: str = "eu") -> TenantRecord:
        return await store.create_tenant(
            actor, slug=f"{label}-{unique}", name=f"Tenant {label}", plan=plan, region=region, settings={}
        )

    return make


@pytest.fixture
async def runtime(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the runtime role: what the server's pool and relay hold (owns
    nothing, not a superuser), so only row-level security stands between tenants."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def two_tenants(
    store: PostgresStore, actor: Actor, make_tenant: TenantFactory
) -> tuple[TenantRecord, TenantRecord]:
    """Tenants A and B with rows in every tenant-scoped table, same names on both sides,
    written through the store (which also leaves their audit rows and outbox events)."""
    tenants = (await make_tenant("a"), await make_tenant("b"))
    alice = SubjectRef("user", "alice")
    for tenant in tenants:
        await store.create_role(actor, tenant.id, name="editor", permissions=("doc.*",), description="")
        await store.add_member(actor, tenant.id, alice)
        await store.assign_role(actor, tenant.id, alice, role="editor", scope="")
    return tenants
