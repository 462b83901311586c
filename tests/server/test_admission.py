"""Admission control (server/admission.py): a saturated method class is refused at once
with RESOURCE_EXHAUSTED GATEHOUSE_OVERLOADED and a pushback, the other classes and health
keep working; the watch cap; a flood of wrong admin keys from one address is refused
fast and unhashed while a verified key's calls go through (server/admin_auth.py).

No timing assertions beyond generous functional bounds (seconds, not milliseconds)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
import time
from typing import Any, AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gatehouse.server.admin_auth import FailedAuthLimit, peer_address
from gatehouse.server.admission import Admission, method_class
from gatehouse.server.app import Sidecar
from gatehouse.settings import Settings
from gatehouse_client.v1 import access_pb2, admin_pb2, config_pb2
from tests.client import Client, make_client, user
from tests.server.status import details


@pytest.fixture(scope="module")
async def small(sidecar_settings: Settings) -> AsyncIterator[Sidecar]:
    """A sidecar of its own with tiny bounds."""
    settings = dataclasses.replace(
        sidecar_settings,
        max_in_flight_config=2,
        max_watch_streams=2,
        auth_max_pending=2,
        auth_failures_burst=3,
        auth_failures_per_second=0.5,
    )
    running = Sidecar(settings)
    await running.start()
    yield running
    await running.stop(grace=0.5)


@pytest.fixture(scope="module")
async def small_client(small: Sidecar, operator_token: str) -> AsyncIterator[Client]:
    c = make_client(small.addresses[0], operator_token)
    yield c
    await c.channel.close()


def assert_overloaded(exc: grpc.aio.AioRpcError, kind: str) -> None:
    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, _ = details(exc)
    assert info.reason == "GATEHOUSE_OVERLOADED" and info.metadata["class"] == kind
    pushback = dict(tuple(exc.trailing_metadata() or ()))["grpc-retry-pushback-ms"]
    assert int(pushback) > 0 and pushback == info.metadata["retry_after_ms"]


async def test_a_saturated_class_is_refused_at_once_and_the_others_keep_working(
    small: Sidecar, small_client: Client, unique: str
) -> None:
    c = small_client
    blocked = await c.tenant(f"adm-blocked-{unique}")
    other = await c.tenant(f"adm-other-{unique}")
    assert small.cache is not None
    release = asyncio.Event()
    real = small.cache.tenant

    async def slow_for_one(tenant_id: str, min_revision: int = 0) -> Any:
        if tenant_id == blocked.id:
            await release.wait()
        return await real(tenant_id, min_revision)

    small.cache.tenant = slow_for_one  # type: ignore[method-assign]
    try:
        # Two GetTenantConfig calls wait inside their handler (min_revision makes each
        # request's bytes new, so no remembered answer serves it): the class is full.
        waiting = [
            asyncio.ensure_future(
                c.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=blocked.id, min_revision=n))
            )
            for n in (1, 2)
        ]
        deadline = time.monotonic() + 10
        while small.admission.gates["config"].in_flight < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=other.id), timeout=5)
        assert time.monotonic() - started < 2.0  # at once, not after the blocked ones
        assert_overloaded(refused.value, "config")
        # Other classes, and health, are not affected.
        answer = await c.access.CheckAccess(
            access_pb2.CheckAccessRequest(tenant_id=other.id, subject=user("a"), permission="doc.read"), timeout=5
        )
        assert not answer.allowed
        await c.admin.GetTenant(admin_pb2.GetTenantRequest(tenant_id=other.id), metadata=c.auth, timeout=5)
        health = await health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        release.set()
        for config in await asyncio.gather(*waiting):
            assert config.id == blocked.id
        # Freed: the class admits again.
        assert (await c.config.GetTenantConfig(config_pb2.GetTenantConfigRequest(tenant_id=other.id))).id == other.id
        stats = small.stats.snapshot()
        assert stats["admission.shed{class=config}"] >= 1
        assert stats["grpc.calls{method=/gatehouse.v1.ConfigService/GetTenantConfig,code=RESOURCE_EXHAUSTED}"] >= 1
    finally:
        release.set()
        small.cache.tenant = real  # type: ignore[method-assign]


async def test_concurrent_watch_streams_are_capped(small: Sidecar, small_client: Client, unique: str) -> None:
    c = small_client
    tenant = await c.tenant(f"adm-watch-{unique}")
    request = config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id)
    first, second = c.config.WatchTenantConfig(request), c.config.WatchTenantConfig(request)
    try:
        assert (await first.read()).id == tenant.id
        assert (await second.read()).id == tenant.id
        third = c.config.WatchTenantConfig(request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await third.read()
        assert_overloaded(refused.value, "watch")
        first.cancel()
        deadline = time.monotonic() + 10
        while small.admission.gates["watch"].in_flight > 1:  # the server sees the cancel
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        fourth = c.config.WatchTenantConfig(request)
        assert (await fourth.read()).id == tenant.id
        fourth.cancel()
    finally:
        first.cancel()
        second.cancel()


async def test_a_wrong_key_flood_from_one_address_does_not_hold_up_a_verified_key(
    small: Sidecar, small_client: Client, unique: str
) -> None:
    c = small_client
    tenant = await c.tenant(f"adm-flood-{unique}")
    get = admin_pb2.GetTenantRequest(tenant_id=tenant.id)
    await c.admin.GetTenant(get, metadata=c.auth)  # verified, remembered
    before = small.stats.snapshot()

    async def wrong() -> grpc.StatusCode:
        key = f"gh_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
        try:
            await c.admin.GetTenant(get, metadata=(("authorization", f"Bearer {key}"),), timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    flood = [asyncio.ensure_future(wrong()) for _ in range(60)]
    legit = []
    for _ in range(5):
        started = time.monotonic()
        assert (await c.admin.GetTenant(get, metadata=c.auth, timeout=10)).id == tenant.id
        legit.append(time.monotonic() - started)
    codes = await asyncio.gather(*flood)
    assert max(legit) < 2.0  # 60 Argon2 hashes in a row would be ~0.6 s of 2 threads at the least
    assert grpc.StatusCode.OK not in codes
    assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    after = small.stats.snapshot()
    rejected = after["auth.rejected"] - before["auth.rejected"]  # hashed and refused
    refused = (after["auth.refused_pending"] - before["auth.refused_pending"]) + (
        after["auth.refused_address"] - before["auth.refused_address"]
    )
    assert rejected <= 3 + 1 and refused >= 60 - rejected  # the burst, and a refill at most
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == refused


def test_method_classes() -> None:
    assert method_class("/gatehouse.v1.AccessService/CheckAccess") == "hot"
    assert method_class("/gatehouse.v1.AccessService/CheckAccessBatch") == "hot"
    assert method_class("/gatehouse.v1.ConfigService/GetTenantConfig") == "config"
    assert method_class("/gatehouse.v1.ConfigService/WatchTenantConfig") == "watch"
    assert method_class("/gatehouse.v1.AdminService/CreateTenant") == "admin"
    assert method_class("/grpc.health.v1.Health/Check") is None
    assert method_class("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    # Exempt or unbounded: the handler itself, unwrapped (no cost per call).
    admission = Admission({"hot": 0, "admin": 3})

    async def handler(request: Any, context: Any) -> Any:
        return request

    assert admission.unary("/gatehouse.v1.AccessService/CheckAccess", handler) is handler
    assert admission.unary("/grpc.health.v1.Health/Check", handler) is handler
    assert admission.unary("/gatehouse.v1.AdminService/GetTenant", handler) is not handler


def test_failed_authentications_per_address_are_a_token_bucket() -> None:
    now = [0.0]
    limit = FailedAuthLimit(burst=2, per_second=0.5, max_addresses=2, clock=lambda: now[0])
    assert limit.spend("a") == 0
    limit.refund("a")  # a success costs nothing
    assert limit.spend("a") == 0 and limit.spend("a") == 0  # two failures (or two at once)
    assert limit.spend("a") == pytest.approx(2.0)
    assert limit.spend("b") == 0  # another address: its own budget
    now[0] = 1.0
    assert limit.spend("a") == pytest.approx(1.0)
    now[0] = 2.0
    assert limit.spend("a") == 0
    limit.spend("c")  # bounded: the least recently used address is forgotten
    assert len(limit._buckets) == 2
    assert FailedAuthLimit(burst=0, per_second=1.0).spend("x") == 0  # off


def test_peer_addresses_drop_the_port() -> None:
    assert peer_address("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert peer_address("ipv6:%5B::1%5D:5") == "::1"
    assert peer_address("ipv6:[2001:db8::2]:443") == "2001:db8::2"
    assert peer_address("unix:/tmp/gh.sock") == "unix"
    assert peer_address("") == ""


def _flood_while_blocked(address: str, calls: int, started: "threading.Event") -> list[tuple[grpc.StatusCode, float]]:
    """`calls` health checks at once from a plain (threaded) grpc channel: each one's code
    and when it ended, counted from when they were all sent."""
    with grpc.insecure_channel(address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        grpc.channel_ready_future(channel).result(timeout=5)
        started.wait(5)
        sent = time.monotonic()
        ended: list[tuple[grpc.StatusCode, float]] = []

        def done(future: Any) -> None:
            ended.append((future.code(), time.monotonic() - sent))

        futures = [check.future(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(calls)]
        for future in futures:
            future.add_done_callback(done)
        for future in futures:
            future.exception()  # waits for it to end, however it ends
        return ended


@pytest.mark.parametrize("bound", [0, 4])
async def test_calls_past_the_pending_bound_are_refused_in_grpc_core_while_python_is_busy(
    sidecar_settings: Settings, bound: int
) -> None:
    # The event loop is held for 1.5 s while 40 calls arrive: Python cannot take any, so
    # they wait in grpc's core. With a bound of 4, core refuses those past it (at once,
    # randomly between 4 and 8, always beyond) and the client sees CANCELLED; unbounded,
    # every call waits and is answered once the loop is free.
    running = Sidecar(dataclasses.replace(sidecar_settings, max_pending_calls=bound))
    await running.start()
    try:
        started = threading.Event()
        flood = asyncio.ensure_future(asyncio.to_thread(_flood_while_blocked, running.addresses[0], 40, started))
        await asyncio.sleep(0.5)  # the thread's channel is connected before the loop is held
        started.set()
        time.sleep(1.5)
        ended = await flood
        core = running.core_calls.values()
    finally:
        await running.stop(grace=0.5)
    answered = [at for code, at in ended if code == grpc.StatusCode.OK]
    refused = [at for code, at in ended if code == grpc.StatusCode.CANCELLED]
    assert len(answered) + len(refused) == 40
    # Core counts what it refused as started, neither succeeded nor failed: what the
    # metrics export as gatehouse_grpc_core_calls_started_total (server/core_calls.py).
    assert core["calls_started"] - core["calls_succeeded"] - core["calls_failed"] == len(refused)
    if bound == 0:
        assert not refused
    else:
        # One call may already be taken (grpc.aio asks core for one call ahead), the rest
        # of the admitted ones wait in core's queue: at most 1 + 2 * bound answered.
        assert 1 <= len(answered) <= 1 + 2 * bound
        assert max(refused) < 1.4  # refused while the loop was still held, not after it


async def test_grpcs_own_concurrency_refusals_are_in_the_core_count_too(
    sidecar_settings: Settings, operator_token: str, unique: str
) -> None:
    # GATEHOUSE_MAX_CONCURRENT_RPCS refuses in grpc.aio before any interceptor: no
    # grpc_server_handled_total counts it, and core counts it as started (and failed). So
    # `core calls started - handled`, the dashboard's "refused before Gatehouse" series,
    # holds these refusals as well as core's own (README "Overload").
    running = Sidecar(dataclasses.replace(sidecar_settings, max_concurrent_rpcs=2))
    await running.start()
    client = make_client(running.addresses[0], operator_token)
    try:
        tenant = await client.tenant(f"conc-{unique}")
        streams = [client.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
                   for _ in range(2)]
        for stream in streams:
            await stream.read()
        request = access_pb2.CheckAccessRequest(tenant_id=tenant.id, subject=user("a"), permission="invoice.read")
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.access.CheckAccess(request)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        core = running.core_calls.values()
        handled = sum(v for k, v in running.stats.snapshot().items() if k.startswith("grpc.calls{"))
        for stream in streams:
            stream.cancel()
    finally:
        await client.channel.close()
        await running.stop(grace=0)
    # CreateTenant and ActivateTenant handled; the two streams still open; five refused.
    assert handled == 2 and core["calls_succeeded"] == 2
    assert core["calls_started"] - handled == 2 + 5
    assert core["calls_failed"] == 5
