"""The relay sweeps expired role assignments and publishes what the sweep wrote: a running
relay, real Postgres and Redis, a database of its own."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gatehouse.engine.model import SubjectRef
from gatehouse.store.postgres import PostgresStore
from gatehouse.store.relay import OutboxRelay
from tests.events.test_relay_and_gaps import ACTOR, active_tenant, stream_events
from tests.store.store_helpers import superuser_dsn

BOB = SubjectRef("user", "bob")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_the_relay_sweeps_expired_assignments_and_publishes_their_event(
    isolated_database: str, isolated_store: PostgresStore, redis: aioredis.Redis, fresh_prefix: str
) -> None:
    tenant_id = await active_tenant(isolated_store, "sweepy")
    await isolated_store.create_role(ACTOR, tenant_id, name="editor", permissions=("doc.*",), description="")
    await isolated_store.add_member(ACTOR, tenant_id, BOB)
    _, revision = await isolated_store.assign_role(
        ACTOR, tenant_id, BOB, role="editor", scope="eu", expires_at=time.time() + 0.5
    )
    relay = OutboxRelay(isolated_database, redis, prefix=fresh_prefix, poll_interval=0.05, sweep_seconds=0.1)
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = await stream_events(redis, fresh_prefix)
            if any(e.revision == revision + 1 for e in events):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    swept = [e for e in events if e.revision == revision + 1]
    assert [(e.kind, e.subject) for e in swept] == [("assignment", "user/bob")]
    assert relay.swept == 1
    conn = await asyncpg.connect(superuser_dsn(isolated_database))
    try:
        assert await conn.fetchval("SELECT count(*) FROM role_assignments WHERE tenant_id = $1::uuid", tenant_id) == 0
        actions = [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE tenant_id = $1::uuid ORDER BY id", tenant_id
        )]
        assert actions[-1] == "role.expire"
    finally:
        await conn.close()
