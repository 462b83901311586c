"""The relay's delivery guarantees and the subscriber's gap handling, against real
Postgres and Redis (each test on a database and key prefix of its own)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.cache.subscriber import TenantEventSubscriber
from gatehouse.engine.decision import decide
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import SubjectRef
from gatehouse.events import TenantEvent, stream_key
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore
from gatehouse.store.relay import OutboxRelay
from tests.store.store_helpers import superuser_dsn

ACTOR = Actor("test", "req")
ALICE = SubjectRef("user", "alice")


class Crash(Exception):
    """Stands for the relay process dying between XADD and marking its rows published."""


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


async def stream_events(redis: aioredis.Redis, prefix: str) -> list[TenantEvent]:
    entries = await redis.xrange(stream_key(prefix))
    return [e for e in (TenantEvent.parse(fields) for _, fields in entries) if e is not None]


async def unpublished(dsn: str) -> int:
    conn = await asyncpg.connect(superuser_dsn(dsn))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    finally:
        await conn.close()


async def active_tenant(store: PostgresStore, slug: str) -> str:
    tenant = await store.create_tenant(ACTOR, slug=slug, name=slug, plan="", region="", settings={})
    await store.transition_tenant(ACTOR, tenant.id, Action.ACTIVATE, reason="", expected_revision=0, confirm=False)
    return tenant.id


async def test_a_crash_between_xadd_and_marking_loses_nothing(
    isolated_database: str, isolated_store: PostgresStore, redis: aioredis.Redis, fresh_prefix: str
) -> None:
    tenant_id = await active_tenant(isolated_store, "crashy")
    _, revision = await isolated_store.add_member(ACTOR, tenant_id, ALICE)

    async def crash(_events: list[TenantEvent]) -> None:
        raise Crash()

    dying = OutboxRelay(isolated_database, redis, prefix=fresh_prefix, after_xadd=crash)
    conn = await asyncpg.connect(isolated_database)
    try:
        with pytest.raises(Crash):
            await dying.publish_pending(conn)
        assert await unpublished(isolated_database) == 3  # the rows stay: nothing marked
        delivered_once = await stream_events(redis, fresh_prefix)
        assert [e.revision for e in delivered_once] == [1, 2, 3]

        restarted = OutboxRelay(isolated_database, redis, prefix=fresh_prefix)
        assert await restarted.publish_pending(conn) == 3
        assert await unpublished(isolated_database) == 0
    finally:
        await conn.close()
    events = await stream_events(redis, fresh_prefix)
    # At least once: every event is there, some twice; the last says who changed.
    assert sorted({e.revision for e in events}) == [1, 2, 3]
    assert len(events) == 6
    assert events[-1].kind == "membership" and events[-1].subject == "user/alice" and events[-1].revision == revision


async def test_concurrent_relays_publish_each_row_once(
    isolated_database: str, isolated_store: PostgresStore, redis: aioredis.Redis, fresh_prefix: str
) -> None:
    tenant_id = await active_tenant(isolated_store, "busy")
    for n in range(60):
        await isolated_store.add_member(ACTOR, tenant_id, SubjectRef("user", f"u{n}"))
    relays = [OutboxRelay(isolated_database, redis, prefix=fresh_prefix, batch_size=7) for _ in range(3)]
    conns = [await asyncpg.connect(isolated_database) for _ in relays]
    try:
        counts = await asyncio.gather(*(r.publish_pending(c) for r, c in zip(relays, conns)))
    finally:
        for c in conns:
            await c.close()
    assert sum(counts) == 62
    events = await stream_events(redis, fresh_prefix)
    assert len(events) == 62 and len({e.id for e in events}) == 62


async def test_duplicate_and_out_of_order_events_are_harmless(isolated_store: PostgresStore) -> None:
    tenant_id = await active_tenant(isolated_store, "dupes")
    await isolated_store.add_member(ACTOR, tenant_id, ALICE)
    cache = PolicyCache(isolated_store, None, max_entries=100, ttl_seconds=60)
    _, revision = await isolated_store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    for rev in (revision, revision - 1, revision, revision - 2):
        cache.subject_event(tenant_id, ALICE.key, rev)
        cache.tenant_event(tenant_id, rev - 1)
    grants = await cache.subject(tenant_id, ALICE)
    assert grants is not None and grants.revision == revision and grants.grants


async def test_a_trimmed_stream_evicts_conservatively(
    isolated_database: str, isolated_store: PostgresStore, redis: aioredis.Redis, redis_url: str, fresh_prefix: str
) -> None:
    tenant_id = await active_tenant(isolated_store, "trimmed")
    await isolated_store.add_member(ACTOR, tenant_id, ALICE)
    await isolated_store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    relay = OutboxRelay(isolated_database, redis, prefix=fresh_prefix)
    conn = await asyncpg.connect(isolated_database)
    cache = PolicyCache(isolated_store, None, max_entries=100, ttl_seconds=3600)
    # The subscriber blocks in XREAD: like in the server, it has a connection of its own.
    subscriber_redis = aioredis.from_url(redis_url, socket_timeout=3)
    subscriber = TenantEventSubscriber(subscriber_redis, cache, prefix=fresh_prefix, block_ms=100)
    try:
        await relay.publish_pending(conn)
        policy = (await cache.tenant(tenant_id)).policy  # type: ignore[union-attr]
        assert decide(policy, await cache.subject(tenant_id, ALICE), "doc.read", "").allowed

        # The subscriber falls behind (here: stops) ...
        task = asyncio.create_task(subscriber.run())
        await asyncio.wait_for(subscriber.connected.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # ... the revocation's event is published and trimmed away before it reads it ...
        await isolated_store.revoke_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
        await relay.publish_pending(conn)
        await redis.xtrim(stream_key(fresh_prefix), maxlen=0, approximate=False)
        assert subscriber.stats.gaps == 0

        # ... so when it reads on, it cannot prove anything current and evicts it all.
        task = asyncio.create_task(subscriber.run())
        for _ in range(100):
            if subscriber.stats.gaps:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        info = await redis.xinfo_stream(stream_key(fresh_prefix))
        assert subscriber.stats.gaps == 1, (subscriber.position, info, task)
        assert len(cache) == 0
        policy = (await cache.tenant(tenant_id)).policy  # type: ignore[union-attr]
        assert not decide(policy, await cache.subject(tenant_id, ALICE), "doc.read", "").allowed
    finally:
        await conn.close()
        await subscriber_redis.aclose()


async def test_a_subject_event_keeps_other_subjects_cached(isolated_store: PostgresStore) -> None:
    tenant_id = await active_tenant(isolated_store, "narrow")
    bob = SubjectRef("user", "bob")
    for who in (ALICE, bob):
        await isolated_store.add_member(ACTOR, tenant_id, who)
    cache = PolicyCache(isolated_store, None, max_entries=100, ttl_seconds=3600)
    alice_before = await cache.subject(tenant_id, ALICE)
    bob_before = await cache.subject(tenant_id, bob)
    _, revision = await isolated_store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    cache.subject_event(tenant_id, ALICE.key, revision)
    assert await cache.subject(tenant_id, bob) is bob_before
    alice_after = await cache.subject(tenant_id, ALICE)
    assert alice_after is not alice_before and alice_after is not None and alice_after.revision == revision
