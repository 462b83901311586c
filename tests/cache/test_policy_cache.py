"""PolicyCache against the real Postgres store and the real Redis."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import pytest

from gatehouse.cache.l2 import RedisL2
from gatehouse.cache.policy_cache import PolicyCache
from gatehouse.engine.lifecycle import Action
from gatehouse.engine.model import SubjectRef
from gatehouse.errors import RevisionNotReached
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore, connect

ACTOR = Actor("test", "req")
ALICE = SubjectRef("user", "alice")


class CountingStore:
    """The real store, counting the hot-path loads that reach Postgres."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.tenant_loads = 0
        self.subject_loads = 0

    async def load_tenant(self, tenant_id: str) -> Any:
        self.tenant_loads += 1
        return await self._store.load_tenant(tenant_id)

    async def load_subject(self, tenant_id: str, subject: SubjectRef) -> Any:
        self.subject_loads += 1
        return await self._store.load_subject(tenant_id, subject)


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[PostgresStore]:
    s = await connect(database_url)
    yield s
    await s.close()


def l2(redis_url: str, prefix: str, *, cluster: bool = False) -> RedisL2:
    return RedisL2.from_url(redis_url, prefix=prefix, ttl_seconds=60, timeout=0.5, cluster=cluster)


@pytest.fixture(params=["standalone", "cluster"])
def l2_redis(request: pytest.FixtureRequest, redis_url: str) -> tuple[str, bool]:
    """The shared standalone Redis, or the run's real 3-master Redis Cluster: (url, cluster)."""
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url, True
    return redis_url, False


async def seeded_tenant(store: PostgresStore, slug: str) -> tuple[str, int]:
    tenant = await store.create_tenant(ACTOR, slug=slug, name=slug, plan="", region="", settings={})
    await store.transition_tenant(ACTOR, tenant.id, Action.ACTIVATE, reason="", expected_revision=0, confirm=False)
    await store.add_member(ACTOR, tenant.id, ALICE)
    _, revision = await store.assign_role(ACTOR, tenant.id, ALICE, role="viewer", scope="")
    return tenant.id, revision


async def test_concurrent_misses_make_one_query(store: PostgresStore, unique: str) -> None:
    tenant_id, revision = await seeded_tenant(store, f"sf-{unique}")
    counting = CountingStore(store)
    cache = PolicyCache(counting, None, max_entries=1000, ttl_seconds=60)  # type: ignore[arg-type]
    results = await asyncio.gather(*(cache.subject(tenant_id, ALICE) for _ in range(50)))
    assert counting.subject_loads == 1
    assert all(r is results[0] for r in results) and results[0] is not None
    assert results[0].revision == revision
    tenants = await asyncio.gather(*(cache.tenant(tenant_id) for _ in range(50)))
    assert counting.tenant_loads == 1 and all(t is tenants[0] for t in tenants)
    # Served from L1 now: no more queries.
    await cache.subject(tenant_id, ALICE)
    assert counting.subject_loads == 1


async def test_min_revision_forces_a_fresh_read(store: PostgresStore, unique: str) -> None:
    tenant_id, revision = await seeded_tenant(store, f"mr-{unique}")
    counting = CountingStore(store)
    cache = PolicyCache(counting, None, max_entries=1000, ttl_seconds=60)  # type: ignore[arg-type]
    first = await cache.subject(tenant_id, ALICE)
    assert first is not None and first.revision == revision
    _, newer = await store.assign_role(ACTOR, tenant_id, ALICE, role="admin", scope="x")
    assert (await cache.subject(tenant_id, ALICE)) is first  # no min_revision: L1 may answer
    fresh = await cache.subject(tenant_id, ALICE, min_revision=newer)
    assert fresh is not None and fresh.revision >= newer and counting.subject_loads == 2
    assert {g.role for g in fresh.grants} == {"viewer", "admin"}


async def test_second_process_warms_from_redis(
    store: PostgresStore, l2_redis: tuple[str, bool], redis_prefix: str, unique: str
) -> None:
    tenant_id, revision = await seeded_tenant(store, f"l2-{unique}")
    first_store, second_store = CountingStore(store), CountingStore(store)
    url, cluster = l2_redis
    first = PolicyCache(first_store, l2(url, redis_prefix, cluster=cluster), max_entries=1000, ttl_seconds=60)  # type: ignore[arg-type]
    second = PolicyCache(second_store, l2(url, redis_prefix, cluster=cluster), max_entries=1000, ttl_seconds=60)  # type: ignore[arg-type]
    assert await first.tenant(tenant_id) is not None
    assert await first.subject(tenant_id, ALICE) is not None
    await first.drain()
    assert (await second.tenant(tenant_id)) is not None
    grants = await second.subject(tenant_id, ALICE)
    assert grants is not None and grants.revision == revision
    assert (second_store.tenant_loads, second_store.subject_loads) == (0, 0)
    assert second.stats.l2_hits == 2

    # A write through the first process moves the Redis pointer: the second process's
    # next L1 miss never reads the older L2 entry.
    _, newer = await store.assign_role(ACTOR, tenant_id, ALICE, role="admin", scope="")
    await first.tenant_changed(tenant_id, newer)
    second.clear()
    grants = await second.subject(tenant_id, ALICE)
    assert grants is not None and grants.revision == newer and second_store.subject_loads == 1


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
async def test_redis_down_still_answers_from_postgres(
    store: PostgresStore, redis_prefix: str, unique: str, cluster: bool
) -> None:
    tenant_id, revision = await seeded_tenant(store, f"rd-{unique}")
    # The cluster client fails differently (RedisClusterException: no node answers).
    dead = RedisL2.from_url("redis://127.0.0.1:1/0", prefix=redis_prefix, ttl_seconds=60, timeout=0.2, cluster=cluster)
    cache = PolicyCache(store, dead, max_entries=1000, ttl_seconds=60)
    grants = await cache.subject(tenant_id, ALICE)
    assert grants is not None and grants.revision == revision
    assert (await cache.tenant(tenant_id)) is not None
    await cache.drain()
    assert dead.errors >= 1  # counted, and L2 skipped for a moment (the next read does not wait on it)
    await dead.close()


async def test_l1_is_bounded(store: PostgresStore, unique: str) -> None:
    tenant_id, _ = await seeded_tenant(store, f"bd-{unique}")
    cache = PolicyCache(store, None, max_entries=20, ttl_seconds=60)
    for index in range(100):
        await cache.subject(tenant_id, SubjectRef("user", f"u{index}"))
    assert len(cache) <= 20 + 16


# --- a min_revision this process has not heard of (issue 11, part 3) ---


async def test_a_min_revision_the_tenant_has_not_reached_is_refused_not_answered_older(
    store: PostgresStore, unique: str
) -> None:
    tenant_id, revision = await seeded_tenant(store, f"fut-{unique}")
    counting = CountingStore(store)
    cache = PolicyCache(counting, None, max_entries=1000, ttl_seconds=60)  # type: ignore[arg-type]
    assert (await cache.tenant(tenant_id)).revision == revision  # type: ignore[union-attr]
    with pytest.raises(RevisionNotReached) as refused:
        await cache.tenant(tenant_id, revision + 1000)
    assert refused.value.metadata == {
        "tenant_id": tenant_id, "min_revision": str(revision + 1000), "current_revision": str(revision),
    }
    # The same for a subject asked at a revision nobody has: never grants from older data.
    with pytest.raises(RevisionNotReached):
        await cache.subject(tenant_id, ALICE, revision + 1000)


async def test_a_revision_written_elsewhere_is_read_from_postgres(store: PostgresStore, unique: str) -> None:
    """Another sidecar's write that no event has announced here yet: still served, from
    Postgres, as before; only a revision nobody has is refused."""
    tenant_id, revision = await seeded_tenant(store, f"rw-{unique}")
    cache = PolicyCache(store, None, max_entries=1000, ttl_seconds=60, revision_probe_seconds=0.05)
    assert (await cache.tenant(tenant_id)).revision == revision  # type: ignore[union-attr]
    _, written = await store.assign_role(ACTOR, tenant_id, ALICE, role="member", scope="x")
    entry = await cache.tenant(tenant_id, written)
    assert entry is not None and entry.revision == written
    grants = await cache.subject(tenant_id, ALICE, written)
    assert grants is not None and grants.revision == written


async def test_unreachable_revisions_cost_one_store_read_per_interval(store: PostgresStore, unique: str) -> None:
    tenant_id, revision = await seeded_tenant(store, f"flood-{unique}")
    counting = CountingStore(store)
    cache = PolicyCache(counting, None, max_entries=1000, ttl_seconds=60, revision_probe_seconds=0.2)  # type: ignore[arg-type]
    await cache.tenant(tenant_id)
    loads = counting.tenant_loads

    async def ask(min_revision: int) -> BaseException | None:
        try:
            await cache.tenant(tenant_id, min_revision)
        except RevisionNotReached as error:
            return error
        return None

    # 300 at once, each asking for a different future revision: the first begins a read;
    # the rest arrived after it began, so they share the next one.
    answers = await asyncio.gather(*(ask(revision + 1 + i) for i in range(300)))
    assert all(isinstance(a, RevisionNotReached) for a in answers)
    assert counting.tenant_loads - loads == 2
    # One after the other: each waits for the next read (one per 0.2 s), never its own.
    loads = counting.tenant_loads
    started = asyncio.get_running_loop().time()
    for _ in range(5):
        assert isinstance(await ask(revision + 7), RevisionNotReached)
    elapsed = asyncio.get_running_loop().time() - started
    assert counting.tenant_loads - loads <= 1 + elapsed / 0.2
    # An unknown tenant asked at a revision: the same (current revision 0).
    missing = "00000000-0000-4000-8000-000000000009"
    results = await asyncio.gather(*(cache.tenant(missing, 3) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, RevisionNotReached) and r.current == 0 for r in results)


def test_a_config_event_older_than_this_processs_own_write_still_wakes_watchers() -> None:
    """Found by the breaker session: sidecar B committed AddMember at N+1 (floor raised,
    config listeners not woken) before A's config event N reached it; event N was then
    dropped as old, and B's WatchTenantConfig streams never sent the new config."""
    cache = PolicyCache(None, None, max_entries=100, ttl_seconds=60)  # type: ignore[arg-type]  # no reads here
    heard: list[tuple[str, int]] = []
    cache.on_tenant_change(lambda tenant_id, revision: heard.append((tenant_id, revision)))
    cache.tenant_event("t", 7, notify=False)  # this process's own AddMember
    cache.tenant_event("t", 6)  # another sidecar's PatchTenantConfig, arriving late
    assert heard == [("t", 6)]


async def test_a_roster_is_served_only_at_the_newest_revision_heard_of(store: PostgresStore, unique: str) -> None:
    tenant_id, revision = await seeded_tenant(store, f"roster-{unique}")
    cache = PolicyCache(store, None, max_entries=1000, ttl_seconds=60, max_rosters=2)
    roster = await cache.roster(tenant_id)
    assert roster is not None and roster.revision == revision
    assert [m.subject_key for m in roster.members] == [ALICE.key]
    assert cache.peek_roster(tenant_id) is roster and cache.peek_roster(tenant_id, revision + 1) is None
    # Any change heard of, one subject's included (another's than alice's), makes it unservable.
    cache.subject_event(tenant_id, "user/zed", revision + 1)
    assert cache.peek_roster(tenant_id) is None
    cache.tenant_event(tenant_id, revision)  # an older event changes nothing
    assert cache.peek_roster(tenant_id) is None
    # A gap in the stream forgets every roster.
    _, revision = await store.add_member(ACTOR, tenant_id, SubjectRef("user", "zed"))
    assert (await cache.roster(tenant_id, revision)) is not None
    cache.clear()
    assert cache.peek_roster(tenant_id) is None


async def test_the_changes_remembered_for_rosters_stay_as_few_as_the_rosters(store: PostgresStore, unique: str) -> None:
    cache = PolicyCache(store, None, max_entries=1000, ttl_seconds=60, max_rosters=2)
    for i in range(5):
        tenant_id, revision = await seeded_tenant(store, f"rosters-{i}-{unique}")
        assert await cache.roster(tenant_id) is not None
        for step in range(1, 4):  # subject events after the roster: remembered for it
            cache.subject_event(tenant_id, f"user/u{step}", revision + step)
        assert len(cache._changes[tenant_id]) == 3
        assert len(cache._changes) <= 3  # at most the two rosters held, and the one just put
