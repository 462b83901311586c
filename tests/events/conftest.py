"""Fixtures for tenant-event tests: isolated databases and a private Redis server
(`tests.dependencies`)."""

from __future__ import annotations

import secrets
from typing import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gatehouse.store.postgres import PostgresStore, connect
from tests.conftest import create_migrated_database, drop_database



@pytest.fixture
async def isolated_database(database_roles: None) -> AsyncIterator[str]:
    """A migrated database of its own (the runtime role's DSN): no other sidecar's relay
    publishes its outbox."""
    name = f"gh_test_iso_{secrets.token_hex(4)}"
    dsn = await create_migrated_database(name)
    yield dsn
    await drop_database(name)


@pytest.fixture
async def isolated_store(isolated_database: str) -> AsyncIterator[PostgresStore]:
    store = await connect(isolated_database)
    yield store
    await store.close()


@pytest.fixture
async def fresh_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"ghtest{secrets.token_hex(4)}"
    yield prefix
    client = aioredis.from_url(redis_url)
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)
    await client.aclose()
