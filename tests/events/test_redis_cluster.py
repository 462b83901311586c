"""Gatehouse on a real Redis Cluster (three masters on loopback, started once per run by
`tests.dependencies.redis_cluster`): L2 across tenants on every master, the relay's
cross-slot batch, the event stream between two sidecars, and the start-up refusal of a
Redis in the other mode."""

from __future__ import annotations

import uuid
from typing import AsyncIterator

import asyncpg
import pytest
from redis.asyncio.cluster import RedisCluster

from gatehouse.cache.l2 import RedisL2
from gatehouse.engine.model import (
    AssignmentRow,
    Plan,
    SubjectRef,
    SubjectSnapshot,
    TenantRecord,
    TenantSnapshot,
    TenantStatus,
)
from gatehouse.events import pointer_key, stream_key
from gatehouse.redis_client import WrongRedisMode, check_mode, redis_client
from gatehouse.server.admin_auth import create_operator_key
from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse.store.api import Actor
from gatehouse.store.postgres import PostgresStore, connect
from gatehouse.store.relay import OutboxRelay
from gatehouse_client.v1 import admin_pb2
from tests.client import make_client, user
from tests.dependencies import PrivateRedisCluster
from tests.events.test_propagation import check, eventually
from tests.events.test_relay_and_gaps import active_tenant, stream_events

TENANTS = 48  # enough that every one of three masters owns some


@pytest.fixture
async def cluster_client(redis_cluster: PrivateRedisCluster) -> AsyncIterator[RedisCluster]:
    client = redis_client(redis_cluster.url, cluster=True, socket_timeout=2.0, socket_connect_timeout=2.0)
    assert isinstance(client, RedisCluster)
    await client.initialize()  # learn the slot map now: get_node_from_key reads it
    yield client
    await client.aclose()


def masters_owning(client: RedisCluster, keys: list[str]) -> set[str]:
    return {client.get_node_from_key(key).name for key in keys}


async def test_l2_keeps_every_tenant_on_one_slot_and_tenants_on_every_master(
    redis_cluster: PrivateRedisCluster, cluster_client: RedisCluster, unique: str
) -> None:
    prefix = f"ghc{unique}"
    l2 = RedisL2.from_url(redis_cluster.url, prefix=prefix, ttl_seconds=60, timeout=1.0, cluster=True)
    tenants = [str(uuid.uuid4()) for _ in range(TENANTS)]
    alice = SubjectRef("user", "alice")
    try:
        for n, tenant_id in enumerate(tenants, start=1):
            await l2.put_tenant(tenant_snapshot(tenant_id, revision=n))
            await l2.put_subject(
                SubjectSnapshot(
                    tenant_id=tenant_id,
                    subject=alice,
                    revision=n,
                    is_member=True,
                    assignments=(AssignmentRow("viewer", "", ("doc.read",)),),
                )
            )
        for n, tenant_id in enumerate(tenants, start=1):
            got = await l2.get_tenant(tenant_id, n)
            assert got is not None and got.revision == n and got.tenant.id == tenant_id
            grants = await l2.get_subject(tenant_id, alice.key, n)
            assert grants is not None and grants.revision == n and grants.assignments[0].role == "viewer"
            # One slot per tenant: the pointer and both entries hash alike.
            keys = [pointer_key(prefix, tenant_id), f"{prefix}:{{{tenant_id}}}:t:{n}", f"{prefix}:{{{tenant_id}}}:s:{n}:{alice.key}"]
            assert len({cluster_client.keyslot(key) for key in keys}) == 1
        pointers = [pointer_key(prefix, t) for t in tenants]
        assert len(masters_owning(cluster_client, pointers)) == PrivateRedisCluster.MASTERS
        assert l2.errors == 0

        # A pointer moves forward only; after a bump, the older entries are never read.
        first = tenants[0]
        await l2.advance(first, 10)
        assert await l2.get_tenant(first, 1) is None  # the pointer names 10; nothing stored at 10
        await l2.advance(first, 5)
        assert await cluster_client.get(pointer_key(prefix, first)) == b"10"
        await l2.put_tenant(tenant_snapshot(first, revision=10))
        got = await l2.get_tenant(first, 1)
        assert got is not None and got.revision == 10
        assert l2.errors == 0
    finally:
        await l2.close()


def tenant_snapshot(tenant_id: str, *, revision: int) -> TenantSnapshot:
    record = TenantRecord(
        id=tenant_id,
        slug=f"t-{tenant_id[:8]}",
        name="t",
        status=TenantStatus.ACTIVE,
        plan="",
        region="",
        settings={},
        flag_overrides={},
        quota_overrides={},
        revision=revision,
    )
    return TenantSnapshot(tenant=record, plan=Plan(name=""))


async def test_the_relay_publishes_a_batch_spanning_every_master(
    isolated_database: str, isolated_store: PostgresStore, cluster_client: RedisCluster, unique: str
) -> None:
    prefix = f"ghc{unique}"
    tenants = [await active_tenant(isolated_store, f"cl-{unique}-{n}") for n in range(12)]
    relay = OutboxRelay(isolated_database, cluster_client, prefix=prefix)
    conn = await asyncpg.connect(isolated_database)
    try:
        published = await relay.publish_pending(conn)
    finally:
        await conn.close()
    assert published == 2 * len(tenants)  # created, activated
    events = await stream_events(cluster_client, prefix)  # type: ignore[arg-type]
    assert sorted((e.tenant_id, e.revision) for e in events) == sorted((t, r) for t in tenants for r in (1, 2))
    pointers = [pointer_key(prefix, t) for t in tenants]
    assert len(masters_owning(cluster_client, pointers)) > 1
    assert [await cluster_client.get(p) for p in pointers] == [b"2"] * len(tenants)


@pytest.fixture
async def cluster_sidecars(
    isolated_database: str, redis_cluster: PrivateRedisCluster, unique: str
) -> AsyncIterator[tuple[list[Sidecar], str]]:
    store = await connect(isolated_database)
    try:
        token = await create_operator_key(store, Actor("tests"), name="tests")
    finally:
        await store.close()
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=isolated_database,
        redis_url=redis_cluster.url,
        redis_cluster=1,
        redis_prefix=f"ghc{unique}",
        l1_ttl_seconds=30.0,
        grace_seconds=0.5,
    )
    # Two sidecars, both relaying (SKIP LOCKED keeps them from publishing a row twice).
    running = [Sidecar(settings), Sidecar(settings)]
    try:
        for sidecar in running:
            await sidecar.start()
        yield running, token
    finally:
        for sidecar in running:
            await sidecar.stop(grace=0.2)


async def test_a_revocation_through_one_sidecar_reaches_the_other_over_the_cluster(
    cluster_sidecars: tuple[list[Sidecar], str], unique: str
) -> None:
    sidecars, token = cluster_sidecars
    a, b = (make_client(s.addresses[0], token) for s in sidecars)
    try:
        tenant = await a.tenant(f"clrev-{unique}")
        await a.grant(tenant.id, user("ben"), "editor", "eu", ["doc.*"])
        for c in (a, b):
            assert (await c.access.CheckAccess(check(tenant.id, "ben", "doc.edit"))).allowed
        await a.admin.RevokeRole(
            admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("ben"), role="editor", scope="eu"),
            metadata=a.auth,
        )

        async def b_denies() -> bool:
            return not (await b.access.CheckAccess(check(tenant.id, "ben", "doc.edit"))).allowed

        await eventually(b_denies)
        second = sidecars[1]
        assert second.subscriber is not None and second.subscriber.stats.events > 0
        assert second.subscriber.stats.gaps == 0
        assert second.l2 is not None and second.l2.errors == 0
    finally:
        for c in (a, b):
            await c.channel.close()


async def test_start_refuses_a_cluster_node_with_cluster_mode_off(
    redis_cluster: PrivateRedisCluster, database_url: str
) -> None:
    with pytest.raises(WrongRedisMode, match="GATEHOUSE_REDIS_CLUSTER=1"):
        await check_mode(redis_cluster.url, cluster=False, timeout=1.0)
    sidecar = Sidecar(Settings(listen="127.0.0.1:0", database_url=database_url, redis_url=redis_cluster.url))
    with pytest.raises(SystemExit, match="is a Redis Cluster node"):
        await sidecar.start()
    assert sidecar.server is None  # refused before anything was opened


async def test_start_refuses_cluster_mode_on_a_standalone_redis(redis_url: str, database_url: str) -> None:
    with pytest.raises(WrongRedisMode, match="not a cluster node"):
        await check_mode(redis_url, cluster=True, timeout=1.0)
    sidecar = Sidecar(Settings(listen="127.0.0.1:0", database_url=database_url, redis_url=redis_url, redis_cluster=1))
    with pytest.raises(SystemExit, match="cluster_enabled:0"):
        await sidecar.start()
    assert sidecar.server is None


async def test_the_mode_check_passes_a_matching_redis_and_skips_an_unreachable_one(
    redis_cluster: PrivateRedisCluster, redis_url: str
) -> None:
    assert await check_mode(redis_cluster.url, cluster=True, timeout=1.0) is True
    assert await check_mode(redis_url, cluster=False, timeout=1.0) is False
    # Redis is a cache: a sidecar starts without it, so an unanswered check is no refusal.
    assert await check_mode("redis://127.0.0.1:1/0", cluster=True, timeout=0.2) is None


def test_a_prefix_with_a_brace_is_refused() -> None:
    with pytest.raises(SystemExit, match="must not contain"):
        Settings(redis_prefix="gh{x}").check_redis_prefix()
    Settings(redis_prefix="gh").check_redis_prefix()


async def test_subscriber_reads_the_stream_from_the_master_owning_it(
    cluster_client: RedisCluster, unique: str
) -> None:
    """XREAD and XINFO route by the stream key to its master, like XADD."""
    prefix = f"ghc{unique}"
    key = stream_key(prefix)
    await cluster_client.xadd(key, {"v": "1", "id": "1", "tenant": str(uuid.uuid4()), "rev": "1"})
    reply = await cluster_client.xread({key: "0-0"}, count=10)
    assert reply and len(reply[0][1]) == 1
    info = await cluster_client.xinfo_stream(key)
    assert int(info["entries-added"]) == 1
