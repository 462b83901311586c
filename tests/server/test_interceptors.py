"""The interceptor chain wraps every handler of every service, and every counter of the
process reads out of one stats registry."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.server.app import Sidecar
from gatehouse.stats import StatsRegistry
from gatehouse_client.v1 import access_pb2, admin_pb2, config_pb2
from tests.client import Client, user


async def test_every_call_of_every_service_is_counted_by_method_and_code(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    tenant = await client.tenant(f"chain-{unique}")
    check = access_pb2.CheckAccessRequest(tenant_id=tenant.id, subject=user("a"), permission="doc.read")
    before = sidecar.stats.snapshot()
    await client.access.CheckAccess(check)
    await client.access.CheckAccess(check)  # remembered: the chain is outside that too
    with pytest.raises(grpc.aio.AioRpcError):
        await client.access.CheckAccess(access_pb2.CheckAccessRequest(tenant_id="X"))
    await client.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=tenant.id))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=tenant.id))  # no credentials
    await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(service=""))
    after = sidecar.stats.snapshot()

    def grew(method: str, code: str) -> float:
        key = f"grpc.calls{{method={method},code={code}}}"
        return after.get(key, 0) - before.get(key, 0)

    assert grew("/gatehouse.v1.AccessService/CheckAccess", "OK") == 2
    assert grew("/gatehouse.v1.AccessService/CheckAccess", "INVALID_ARGUMENT") == 1
    assert grew("/gatehouse.v1.ConfigService/GetTenantConfig", "OK") == 1
    assert grew("/gatehouse.v1.AdminService/GetTenant", "UNAUTHENTICATED") == 1
    assert grew("/grpc.health.v1.Health/Check", "OK") == 1
    # The other counters of the process, under one naming scheme.
    for counter in ("cache.l1_hits", "cache.store_loads", "l2.errors", "answers.check_hits", "events.events", "events.gaps"):
        assert counter in after
    assert after["answers.check_hits"] - before["answers.check_hits"] >= 1


def test_the_registry_refuses_a_name_twice_and_reads_dataclasses_live() -> None:
    from gatehouse.cache.policy_cache import CacheStats

    stats = StatsRegistry()
    counters = CacheStats()
    stats.register("cache", counters)
    counters.l1_hits += 3
    assert stats.snapshot()["cache.l1_hits"] == 3
    with pytest.raises(ValueError):
        stats.register("cache", lambda: {})
    with pytest.raises(TypeError):
        stats.register("other", 42)


async def test_a_watch_stream_the_client_closes_is_counted_cancelled_not_unknown(
    client: Client, sidecar: Sidecar, unique: str
) -> None:
    """grpc closes a stream the client left (GeneratorExit) before its context says it is
    cancelled: every link reports it with the chain's one rule, CANCELLED. It was counted
    UNKNOWN, which is what the "internal errors" alert fires on."""
    import asyncio

    tenant = await client.tenant(f"chain-watch-{unique}")
    key = "grpc.calls{method=/gatehouse.v1.ConfigService/WatchTenantConfig,code=%s}"
    before = sidecar.stats.snapshot()
    stream = client.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
    await stream.read()  # the first message: the stream is open
    stream.cancel()
    for _ in range(100):
        after = sidecar.stats.snapshot()
        if after.get(key % "CANCELLED", 0) > before.get(key % "CANCELLED", 0):
            break
        await asyncio.sleep(0.05)
    assert after.get(key % "CANCELLED", 0) - before.get(key % "CANCELLED", 0) == 1
    assert after.get(key % "UNKNOWN", 0) == before.get(key % "UNKNOWN", 0)
