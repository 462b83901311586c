"""The relay's delivery guarantees and the subscriber's gap handling, against real
Postgres and Redis (each test on a database and key prefix of its own)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
import redis.asyncio as aioredis

from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.cache.subscriber import TenantEventSubscriber, UnsupportedRedis, entry_order
from gatehouse.engine.decision import decide
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import SubjectRef
from gatehouse.events import TenantEvent, as_text, stream_key
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


# --- Gap detection is exact: no gap without a lost event, one gap for a lost one. ---------


async def wait_until(condition: Callable[[], bool], bound: float = 5.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        await asyncio.sleep(0.01)


def an_event(n: int, tenant_id: str = "00000000-0000-0000-0000-0000000000aa") -> dict[str, str]:
    return TenantEvent(id=n, tenant_id=tenant_id, revision=n, kind="tenant").fields()


class PausedReads:
    """Holds a subscriber's XREADs back while paused, so that the stream can move on (be
    trimmed, deleted, made anew) behind a reader that is still running."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._xread = client.xread
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.parked = asyncio.Event()
        client.xread = self._held  # type: ignore[method-assign]

    async def _held(self, *args: Any, **kwargs: Any) -> Any:
        if not self.resumed.is_set():
            self.parked.set()
            await self.resumed.wait()
        return await self._xread(*args, **kwargs)

    async def pause(self) -> None:
        """Returns once the reader waits before its next XREAD (the one in flight done)."""
        self.parked.clear()
        self.resumed.clear()
        await asyncio.wait_for(self.parked.wait(), 5)

    def resume(self) -> None:
        self.resumed.set()


@pytest.fixture
async def subscriber_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The subscriber's own connection (it blocks in XREAD), as in the server."""
    client = aioredis.from_url(redis_url, socket_timeout=3)
    yield client
    await client.aclose()


@pytest.fixture
async def running() -> AsyncIterator[Callable[[TenantEventSubscriber], None]]:
    """Runs subscribers for the test; cancels them at its end."""
    tasks: list[asyncio.Task[None]] = []
    yield lambda subscriber: tasks.append(asyncio.create_task(subscriber.run()))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def xadd_only(redis: aioredis.Redis, stream: str) -> None:
    await redis.xadd(stream, an_event(2))


async def xadd_then_trim_what_was_read(redis: aioredis.Redis, stream: str) -> None:
    """Trimming passes the reader's position, yet takes only the entry it has read."""
    await xadd_only(redis, stream)
    newest = (await redis.xrevrange(stream, count=1))[0][0]
    await redis.xtrim(stream, minid=newest, approximate=False)


@pytest.mark.parametrize("race", [xadd_only, xadd_then_trim_what_was_read])
async def test_an_event_published_between_an_idle_read_and_the_check_is_no_gap(
    race: Callable[[aioredis.Redis, str], Awaitable[None]],
    isolated_store: PostgresStore,
    redis: aioredis.Redis,
    subscriber_redis: aioredis.Redis,
    fresh_prefix: str,
    running: Callable[[TenantEventSubscriber], None],
) -> None:
    """The race behind the false gaps, in the order that loses it: an XREAD returns
    nothing, an XADD lands, then the subscriber asks the stream how far it got."""
    stream = stream_key(fresh_prefix)
    await redis.xadd(stream, an_event(1))
    xinfo = subscriber_redis.xinfo_stream
    calls = 0

    async def xinfo_after_the_race(name: str, full: bool = False) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # 1: where to start (the tail); 2: the check after the first, idle, read
            await race(redis, stream)
        return await xinfo(name, full)

    subscriber_redis.xinfo_stream = xinfo_after_the_race  # type: ignore[method-assign]
    cache = PolicyCache(isolated_store, None, max_entries=100, ttl_seconds=60)
    subscriber = TenantEventSubscriber(subscriber_redis, cache, prefix=fresh_prefix, block_ms=20, gap_check_seconds=0)
    running(subscriber)
    # It reads the event and checks a few times more (unless it skipped it, as a gap).
    await wait_until(lambda: subscriber.stats.gaps > 0 or (subscriber.stats.events == 1 and calls >= 5))
    assert subscriber.stats.gaps == 0 and subscriber.stats.events == 1


async def test_two_relays_and_bursts_of_writes_cause_no_gaps(
    isolated_database: str,
    isolated_store: PostgresStore,
    redis: aioredis.Redis,
    redis_url: str,
    fresh_prefix: str,
) -> None:
    """The issue's setting: an untrimmed stream, two relays, several subscribers, writes in
    bursts (so that readers go idle between them, and XADDs race their checks)."""
    clients = [aioredis.from_url(redis_url, socket_timeout=3) for _ in range(6)]
    subscribers = [
        TenantEventSubscriber(
            client, PolicyCache(isolated_store, None, max_entries=1000, ttl_seconds=60), prefix=fresh_prefix,
            block_ms=5, gap_check_seconds=0.01,
        )
        for client in clients[:4]
    ]
    relays = [
        OutboxRelay(isolated_database, client, prefix=fresh_prefix, batch_size=5, poll_interval=0.05)
        for client in clients[4:]
    ]
    tasks = [asyncio.create_task(subscriber.run()) for subscriber in subscribers]
    try:
        for subscriber in subscribers:
            await asyncio.wait_for(subscriber.connected.wait(), 5)
        tasks += [asyncio.create_task(relay.run()) for relay in relays]
        tenants = [await active_tenant(isolated_store, f"burst{n}") for n in range(4)]
        rng = random.Random(11)
        for burst in range(40):
            await asyncio.gather(
                *(
                    isolated_store.add_member(ACTOR, tenants[n % len(tenants)], SubjectRef("user", f"u{burst}-{n}"))
                    for n in range(rng.randint(1, 6))
                )
            )
            await asyncio.sleep(rng.uniform(0, 0.02))
        for _ in range(500):
            if not await unpublished(isolated_database):
                break
            await asyncio.sleep(0.01)
        assert await unpublished(isolated_database) == 0
        published = len(await stream_events(redis, fresh_prefix))  # heartbeats are entries too, not events
        assert published == sum(relay.published for relay in relays) and min(r.published for r in relays) > 0
        # Each reads every event (unless it skipped some, as a gap).
        await wait_until(lambda: all(s.stats.gaps > 0 or s.stats.events >= published for s in subscribers))
        await asyncio.sleep(0.05)  # a few more checks, caught up
        info = await redis.xinfo_stream(stream_key(fresh_prefix))
        assert as_text(info["max-deleted-entry-id"]) == "0-0"  # nothing was ever trimmed ...
        assert [s.stats.gaps for s in subscribers] == [0] * len(subscribers)  # ... so no gap
        assert [s.stats.events for s in subscribers] == [published] * len(subscribers)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients:
            await client.aclose()


async def cached_viewer(
    isolated_database: str, store: PostgresStore, redis: aioredis.Redis, prefix: str, slug: str
) -> tuple[str, PolicyCache, OutboxRelay]:
    """A tenant where alice is a viewer, its events published, and a cache that holds that."""
    tenant_id = await active_tenant(store, slug)
    await store.add_member(ACTOR, tenant_id, ALICE)
    await store.assign_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    relay = OutboxRelay(isolated_database, redis, prefix=prefix)
    await publish(relay, isolated_database)
    cache = PolicyCache(store, None, max_entries=100, ttl_seconds=3600)
    assert await alice_may_read(cache, tenant_id)
    return tenant_id, cache, relay


async def publish(relay: OutboxRelay, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await relay.publish_pending(conn)
    finally:
        await conn.close()


@dataclass
class GapRig:
    """What a gap test needs: its own database and store, Redis, a prefix, a subscriber runner."""

    database: str
    store: PostgresStore
    redis: aioredis.Redis
    subscriber_redis: aioredis.Redis
    prefix: str
    running: Callable[[TenantEventSubscriber], None]

    async def start(
        self, slug: str
    ) -> tuple[str, PolicyCache, OutboxRelay, "PausedReads", TenantEventSubscriber]:
        """A tenant whose viewer alice is cached, and a connected subscriber reading into
        that cache whose reads can be paused."""
        tenant_id, cache, relay = await cached_viewer(self.database, self.store, self.redis, self.prefix, slug)
        paused = PausedReads(self.subscriber_redis)
        subscriber = TenantEventSubscriber(self.subscriber_redis, cache, prefix=self.prefix, block_ms=20)
        self.running(subscriber)
        await asyncio.wait_for(subscriber.connected.wait(), 5)
        return tenant_id, cache, relay, paused, subscriber


@pytest.fixture
def rig(
    isolated_database: str,
    isolated_store: PostgresStore,
    redis: aioredis.Redis,
    subscriber_redis: aioredis.Redis,
    fresh_prefix: str,
    running: Callable[[TenantEventSubscriber], None],
) -> GapRig:
    return GapRig(isolated_database, isolated_store, redis, subscriber_redis, fresh_prefix, running)


async def alice_may_read(cache: PolicyCache, tenant_id: str) -> bool:
    policy = (await cache.tenant(tenant_id)).policy  # type: ignore[union-attr]
    return decide(policy, await cache.subject(tenant_id, ALICE), "doc.read", "").allowed


async def test_a_reader_that_reads_past_trimmed_entries_counts_one_gap(
    rig: GapRig,
) -> None:
    """The trim leaves newer entries for the reader to read: it reads on past the hole,
    so nothing after its position is missing by the time it checks; the count is short."""
    tenant_id, cache, relay, paused, subscriber = await rig.start("pasttrim")
    isolated_database, isolated_store, redis, fresh_prefix = rig.database, rig.store, rig.redis, rig.prefix
    await paused.pause()
    await isolated_store.revoke_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    await isolated_store.add_member(ACTOR, tenant_id, SubjectRef("user", "zed"))
    await publish(relay, isolated_database)
    await redis.xtrim(stream_key(fresh_prefix), maxlen=1, approximate=False)  # the revocation goes
    paused.resume()
    await wait_until(lambda: subscriber.stats.gaps > 0)
    await asyncio.sleep(0.2)  # more checks: still one
    assert subscriber.stats.gaps == 1 and subscriber.stats.events == 1
    assert not await alice_may_read(cache, tenant_id)


@pytest.mark.parametrize("entries_after", [0, 1, 12])
async def test_a_stream_deleted_and_made_anew_counts_one_gap(
    entries_after: int,
    rig: GapRig,
) -> None:
    """DEL (or a Redis restart the subscriber did not notice) takes the stream's history:
    gone (0), made anew with fewer entries than seen (1), or with more (12), all newer than
    the reader's position, so only the count tells."""
    tenant_id, cache, relay, paused, subscriber = await rig.start("remade")
    isolated_database, isolated_store, redis, fresh_prefix = rig.database, rig.store, rig.redis, rig.prefix
    await isolated_store.add_member(ACTOR, tenant_id, SubjectRef("user", "yan"))
    await publish(relay, isolated_database)
    await wait_until(lambda: subscriber.stats.events == 1)  # it has read from this stream
    await paused.pause()
    await isolated_store.revoke_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    await publish(relay, isolated_database)
    await redis.delete(stream_key(fresh_prefix))  # the revocation goes with the stream
    for n in range(entries_after):
        await redis.xadd(stream_key(fresh_prefix), an_event(100 + n))
    paused.resume()
    await wait_until(lambda: subscriber.stats.gaps > 0)
    await asyncio.sleep(0.2)
    assert subscriber.stats.gaps == 1
    assert not await alice_may_read(cache, tenant_id)


@pytest.mark.parametrize("later_events", [0, 1])
async def test_an_unread_entry_removed_by_xdel_counts_one_gap(
    later_events: int,
    rig: GapRig,
) -> None:
    """XDEL, unlike trimming, raises max-deleted-entry-id: above the reader's position
    (nothing after it), or read past (a later event), the revocation is gone unread."""
    tenant_id, cache, relay, paused, subscriber = await rig.start("xdel")
    isolated_database, isolated_store, redis, fresh_prefix = rig.database, rig.store, rig.redis, rig.prefix
    await paused.pause()
    await isolated_store.revoke_role(ACTOR, tenant_id, ALICE, role="viewer", scope="")
    await publish(relay, isolated_database)
    revocation = (await redis.xrevrange(stream_key(fresh_prefix), count=1))[0][0]
    for n in range(later_events):
        await redis.xadd(stream_key(fresh_prefix), an_event(100 + n))
    assert await redis.xdel(stream_key(fresh_prefix), revocation) == 1
    paused.resume()
    await wait_until(lambda: subscriber.stats.gaps > 0)
    await asyncio.sleep(0.2)
    assert subscriber.stats.gaps == 1 and subscriber.stats.events == later_events
    assert not await alice_may_read(cache, tenant_id)


def test_stream_ids_compare_as_numbers() -> None:
    assert entry_order("9-0") < entry_order("10-0") and entry_order("10-2") < entry_order("10-10")
    assert entry_order("0-0") == (0, 0) and entry_order("1796079451983-7") == (1796079451983, 7)


async def test_a_redis_older_than_7_stops_the_subscriber_with_the_reason(
    isolated_store: PostgresStore, redis: aioredis.Redis, subscriber_redis: aioredis.Redis, fresh_prefix: str
) -> None:
    """Redis 6 answers XINFO STREAM without entries-added, max-deleted-entry-id and
    recorded-first-entry-id: without them a lost event cannot be told from a new one."""
    await redis.xadd(stream_key(fresh_prefix), an_event(1))
    xinfo = subscriber_redis.xinfo_stream

    async def as_redis_6_answers(name: str, full: bool = False) -> Any:
        info = dict(await xinfo(name, full))
        for field in ("max-deleted-entry-id", "entries-added", "recorded-first-entry-id"):
            del info[field]
        return info

    subscriber_redis.xinfo_stream = as_redis_6_answers  # type: ignore[method-assign]
    cache = PolicyCache(isolated_store, None, max_entries=100, ttl_seconds=60)
    subscriber = TenantEventSubscriber(subscriber_redis, cache, prefix=fresh_prefix)
    with pytest.raises(UnsupportedRedis, match="Redis 7.0 or newer"):
        await asyncio.wait_for(subscriber.run(), 5)
