"""Fixtures for the store tests: one PostgresStore on this run's database, a superuser
connection to look behind row-level security, and a tenant factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gatehouse.engine.model import TenantRecord
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
