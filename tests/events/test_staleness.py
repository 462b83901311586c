"""Bounded staleness (issue 14): relay heartbeats, the cache's confirmation, and what a
sidecar answers when the relay, the stream or Postgres goes away. Real Postgres and Redis;
faults only on private servers (tests.dependencies) or by stopping our own relay task.

Small bounds (max staleness 1 s, heartbeats every 0.1 s) keep each test a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable

import asyncpg
import pytest
import redis.asyncio as aioredis

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.cache.subscriber import TenantEventSubscriber
from gatehouse.engine.decision import decide
from gatehouse.engine.model import SubjectRef
from gatehouse.errors import Stale
from gatehouse.events import Heartbeat, TenantEvent, parse_entry, stream_key
from gatehouse.retry import Backoff
from gatehouse.store.postgres import PostgresStore, connect
from gatehouse.store.relay import OutboxRelay
from tests.dependencies import PrivatePostgres, PrivateRedis
from tests.events.test_relay_and_gaps import ACTOR, ALICE, active_tenant, alice_may_read, publish
from tests.store.store_helpers import superuser_dsn

BOUND = 1.0  # max staleness in these tests
BEAT = 0.1  # relay heartbeat
SLACK = 0.5  # scheduling, one heartbeat, one check round trip


class Tasks:
    """Background tasks of a test (relays, subscribers); each can be stopped alone."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, run: Callable[[], "asyncio.Future[None] | object"]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(run())  # type: ignore[arg-type]
        self._tasks.append(task)
        return task

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def stop_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def tasks() -> AsyncIterator[Tasks]:
    running = Tasks()
    yield running
    await running.stop_all()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, socket_timeout=3)
    yield client
    await client.aclose()


@pytest.fixture
async def subscriber_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, socket_timeout=3)
    yield client
    await client.aclose()


async def until(condition: Callable[[], bool], bound: float = 5.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.01)


def bounded_cache(store: PostgresStore) -> PolicyCache:
    return PolicyCache(store, None, max_entries=100, ttl_seconds=3600, max_staleness_seconds=BOUND)


async def confirmed_sidecar(
    dsn: str, store: PostgresStore, redis: aioredis.Redis, subscriber_redis: aioredis.Redis, prefix: str, tasks: Tasks
) -> tuple[PolicyCache, OutboxRelay, asyncio.Task[None], TenantEventSubscriber, asyncio.Task[None]]:
    """A bounded cache fed by a subscriber, a relay heartbeating into the stream, and the
    cache confirmed current by them."""
    cache = bounded_cache(store)
    subscriber = TenantEventSubscriber(subscriber_redis, cache, prefix=prefix, block_ms=50)
    subscribing = tasks.start(subscriber.run)
    await asyncio.wait_for(subscriber.connected.wait(), 5)
    relay = OutboxRelay(dsn, redis, prefix=prefix, poll_interval=0.05, heartbeat_seconds=BEAT)
    relaying = tasks.start(relay.run)
    await until(cache.confirmed)
    return cache, relay, relaying, subscriber, subscribing


async def test_a_stalled_relay_stops_old_allows_within_max_staleness(
    isolated_database: str,
    isolated_store: PostgresStore,
    redis: aioredis.Redis,
    subscriber_redis: aioredis.Redis,
    fresh_prefix: str,
    tasks: Tasks,
) -> None:
    """The issue's run: the relay stalls, a revoke commits; the other sidecar kept
    answering ALLOWED from L1 until its TTL. Now it re-reads Postgres within the bound."""
    tenant_id = await active_tenant(isolated_store, "stalled")
    await isolated_store.add_member(ACTOR, tenant_id, ALICE)
    await isolated_store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    cache, _relay, relaying, _subscriber, _ = await confirmed_sidecar(
        isolated_database, isolated_store, redis, subscriber_redis, fresh_prefix, tasks
    )
    assert await alice_may_read(cache, tenant_id)

    await tasks.stop(relaying)  # stalled: no events, no heartbeats; the stream stays readable
    # Another sidecar's write (this store publishes it to nobody here): only the relay
    # would have told this cache.
    await isolated_store.revoke_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    revoked_at = time.monotonic()
    loads = cache.stats.store_loads
    allowed_until = revoked_at
    while await alice_may_read(cache, tenant_id):
        allowed_until = time.monotonic()
        assert allowed_until - revoked_at < BOUND + SLACK, "still ALLOWED past max staleness"
        await asyncio.sleep(0.01)
    assert allowed_until - revoked_at <= BOUND + SLACK
    assert cache.stats.store_loads > loads and cache.stats.unconfirmed_loads > 0  # answered from Postgres
    assert not cache.confirmed()
    # And so is every answer while the relay stays away: never the old one again.
    for _ in range(20):
        assert not await alice_may_read(cache, tenant_id)
        await asyncio.sleep(0.02)


async def test_heartbeats_keep_a_quiet_tenant_cached(
    isolated_database: str,
    isolated_store: PostgresStore,
    redis: aioredis.Redis,
    subscriber_redis: aioredis.Redis,
    fresh_prefix: str,
    tasks: Tasks,
) -> None:
    """Nothing is written for several times max staleness: the heartbeats say so, and every
    read is an L1 hit, with no Postgres load at all."""
    tenant_id = await active_tenant(isolated_store, "quiet")
    await isolated_store.add_member(ACTOR, tenant_id, ALICE)
    await isolated_store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    cache, relay, _, subscriber, _ = await confirmed_sidecar(
        isolated_database, isolated_store, redis, subscriber_redis, fresh_prefix, tasks
    )
    assert await alice_may_read(cache, tenant_id)
    loads, hits = cache.stats.store_loads, cache.stats.l1_hits
    started = time.monotonic()
    while time.monotonic() - started < 3 * BOUND:
        assert await alice_may_read(cache, tenant_id)
        assert cache.peek_subject(tenant_id, ALICE.key) is not None  # remembered answers stay too
        await asyncio.sleep(0.02)
    assert cache.stats.store_loads == loads and cache.stats.l1_hits > hits + 50
    assert relay.heartbeats >= 2 * BOUND / BEAT and subscriber.stats.confirmations >= 10
    assert cache.confirmation_age() < BOUND


async def test_with_postgres_and_the_stream_gone_answers_turn_unavailable_at_the_bound(
    private_postgres: PrivatePostgres, redis: aioredis.Redis, subscriber_redis: aioredis.Redis, fresh_prefix: str,
    tasks: Tasks,
) -> None:
    """Postgres stopped, relay and stream gone: cached answers until max staleness after
    the last confirmation, then UNAVAILABLE GATEHOUSE_STALE, never a stale allow past it."""
    store = await connect(private_postgres.database_url)
    try:
        tenant_id = await active_tenant(store, "pgdown")
        await store.add_member(ACTOR, tenant_id, ALICE)
        await store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
        cache, _, relaying, _, subscribing = await confirmed_sidecar(
            private_postgres.database_url, store, redis, subscriber_redis, fresh_prefix, tasks
        )
        assert await alice_may_read(cache, tenant_id)
        await tasks.stop(relaying)
        await tasks.stop(subscribing)
        gone = time.monotonic()
        private_postgres.stop()

        last_allow = gone
        refusal: Stale | None = None
        while time.monotonic() - gone < BOUND + SLACK + 1.0:
            try:
                assert await alice_may_read(cache, tenant_id)  # an answer is the cached one ...
                last_allow = time.monotonic()
            except Stale as exc:
                refusal = exc
                if time.monotonic() - gone > BOUND + SLACK:
                    break
            await asyncio.sleep(0.01)
        # ... served right up to the bound (it was confirmed within a heartbeat or two of `gone`) ...
        assert last_allow - gone > BOUND - 3 * BEAT - SLACK / 2
        # ... and never past it: then the reason is stable.
        assert last_allow - gone <= BOUND
        assert refusal is not None and refusal.reason == "GATEHOUSE_STALE" and refusal.code.name == "UNAVAILABLE"
        assert cache.stats.stale_refused > 0
    finally:
        await store.close()


async def test_a_heartbeat_never_vouches_for_rows_another_relay_holds(
    isolated_database: str, isolated_store: PostgresStore, redis: aioredis.Redis, fresh_prefix: str
) -> None:
    """Relay A claimed a row and stalled before marking it (its transaction open, the row
    locked); relay B skips it when publishing, but its heartbeat must not claim it published."""
    tenant_id = await active_tenant(isolated_store, "held")
    b = OutboxRelay(isolated_database, redis, prefix=fresh_prefix)
    conn_a, conn_b = await asyncpg.connect(isolated_database), await asyncpg.connect(isolated_database)
    holding, release = asyncio.Event(), asyncio.Event()

    async def stall(_events: list[TenantEvent]) -> None:
        holding.set()
        await release.wait()

    a = OutboxRelay(isolated_database, redis, prefix=fresh_prefix, after_xadd=stall)
    try:
        await b.publish_pending(conn_b)
        await isolated_store.add_member(ACTOR, tenant_id, ALICE)
        check = await asyncpg.connect(superuser_dsn(isolated_database))
        held_ms = int(
            await check.fetchval(
                "SELECT floor(extract(epoch FROM max(created_at)) * 1000)::bigint FROM outbox WHERE published_at IS NULL"
            )
        )
        await check.close()
        stalled = asyncio.create_task(a.publish_pending(conn_a))
        await asyncio.wait_for(holding.wait(), 5)
        await asyncio.sleep(0.05)
        assert await b.publish_pending(conn_b) == 0  # SKIP LOCKED: B cannot see it to publish
        beat = await b.heartbeat(conn_b)
        assert beat.through_ms <= held_ms  # ... nor vouch for it
        release.set()
        assert await stalled == 1
        after = await b.heartbeat(conn_b)
        assert after.through_ms > held_ms  # published now: time moves on
        # In the stream, each heartbeat follows every event it vouches for.
        entries = [parse_entry(fields) for _, fields in await redis.xrange(stream_key(fresh_prefix))]
        last = max(i for i, e in enumerate(entries) if isinstance(e, TenantEvent))
        assert isinstance(entries[-1], Heartbeat) and entries[-1] == after and last < len(entries) - 1
    finally:
        release.set()
        await conn_a.close()
        await conn_b.close()


async def test_while_redis_is_down_the_relay_and_subscriber_log_once_and_back_off(
    isolated_database: str, isolated_store: PostgresStore, private_redis: PrivateRedis, tasks: Tasks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The issue saw ~9 relay warnings a second while Redis was down (retrying every 0.1 s)."""
    caplog.set_level(logging.INFO, logger="gatehouse")
    relay_redis = aioredis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=0.5)
    events_redis = aioredis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=0.5)
    cache = bounded_cache(isolated_store)
    relay = OutboxRelay(isolated_database, relay_redis, prefix="ghdown", poll_interval=0.05, heartbeat_seconds=BEAT)
    subscriber = TenantEventSubscriber(events_redis, cache, prefix="ghdown", block_ms=50)
    try:
        tasks.start(subscriber.run)
        tasks.start(relay.run)
        await until(cache.confirmed)
        private_redis.stop()
        await asyncio.sleep(3.0)

        def lines(logger: str, text: str) -> int:
            return sum(r.name == logger and text in r.getMessage() for r in caplog.records)

        assert lines("gatehouse.store.relay", "redis unavailable") == 1
        assert lines("gatehouse.cache.subscriber", "redis unavailable") == 1
        assert subscriber.stats.reconnects <= 10  # backing off: 0.05 s doubling to 2 s, jittered
        await private_redis.start()  # the same port, empty
        await until(lambda: cache.confirmed() and subscriber.connected.is_set())
        assert lines("gatehouse.store.relay", "recovered") == 1
        assert lines("gatehouse.cache.subscriber", "recovered") == 1
    finally:
        await tasks.stop_all()
        await relay_redis.aclose()
        await events_redis.aclose()


async def test_the_blind_refresh_keeps_its_period_while_redis_hangs(
    isolated_store: PostgresStore, private_redis: PrivateRedis, tasks: Tasks
) -> None:
    """A frozen Redis makes every reconnect attempt hang for the socket timeout (3 s in the
    server): the blind refresh ran every ~3.1 s instead of its 2 s. Its own timer now."""
    events_redis = aioredis.from_url(private_redis.url, socket_timeout=3, socket_connect_timeout=1)
    subscriber = TenantEventSubscriber(
        events_redis, bounded_cache(isolated_store), prefix="ghblind", block_ms=50, blind_refresh_seconds=0.4
    )
    try:
        tasks.start(subscriber.run)
        await asyncio.wait_for(subscriber.connected.wait(), 5)
        private_redis.freeze()
        await until(lambda: not subscriber.connected.is_set(), bound=6)  # the XREAD timed out
        refreshes, since = subscriber.stats.blind_refreshes, time.monotonic()
        await asyncio.sleep(2.0)
        done = subscriber.stats.blind_refreshes - refreshes
        assert 2.0 / 0.4 - 1 <= done <= 2.0 / 0.4 + 1, (done, time.monotonic() - since)
    finally:
        private_redis.thaw()
        await tasks.stop_all()
        await events_redis.aclose()


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    high, low = Backoff(first=0.1, cap=2.0, rng=lambda: 0.999999), Backoff(first=0.1, cap=2.0, rng=lambda: 0.0)
    highs = [high.next() for _ in range(8)]
    lows = [low.next() for _ in range(8)]
    assert [round(d, 3) for d in highs] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert [round(d, 3) for d in lows] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    high.reset()
    assert round(high.next(), 3) == 0.1


async def test_published_events_still_reach_an_unbounded_cache_as_before(
    isolated_database: str, isolated_store: PostgresStore, redis: aioredis.Redis
) -> None:
    """A cache without a bound (tools, tests of other things) is confirmed forever."""
    cache = PolicyCache(isolated_store, None, max_entries=10, ttl_seconds=60)
    assert cache.confirmed() and cache.confirmation_age() == 0.0
    tenant_id = await active_tenant(isolated_store, "unbounded")
    await isolated_store.add_member(ACTOR, tenant_id, ALICE)
    relay = OutboxRelay(isolated_database, redis, prefix="ghunbounded")
    await publish(relay, isolated_database)
    policy = (await cache.tenant(tenant_id)).policy  # type: ignore[union-attr]
    assert not decide(policy, await cache.subject(tenant_id, SubjectRef("user", "alice")), "doc.read", "").allowed
