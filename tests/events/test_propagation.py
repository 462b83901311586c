"""Tenant events between real sidecar processes sharing one Postgres and one Redis."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from gatehouse_client.v1 import access_pb2, admin_pb2, common_pb2, config_pb2
from tests.client import Client, make_client, user
from tests.dependencies import PrivateRedis
from tests.processes import ServerProcess, sidecar_env, start_server

BOUND_SECONDS = 3.0  # generous for a shared CI machine; bench/ measures the real figure
KEY = "events-operator-key"


async def eventually(probe: Callable[[], Awaitable[bool]], bound: float = BOUND_SECONDS) -> float:
    """Seconds until `probe()` is true; fails past `bound`."""
    start = time.monotonic()
    while True:
        if await probe():
            return time.monotonic() - start
        if time.monotonic() - start > bound:
            raise AssertionError(f"not within {bound}s")
        await asyncio.sleep(0.01)


def check(tenant_id: str, who: str, permission: str) -> access_pb2.CheckAccessRequest:
    return access_pb2.CheckAccessRequest(
        tenant_id=tenant_id, subject=user(who), permission=permission, resource=common_pb2.Resource(scope="eu/fr")
    )


@pytest.fixture(scope="module")
async def sidecars(database_url: str, redis_url: str, redis_prefix: str) -> AsyncIterator[list[ServerProcess]]:
    env = sidecar_env(database_url, redis_url, redis_prefix, KEY)
    # Both run a relay too: SKIP LOCKED keeps them from publishing a row twice.
    processes = [await start_server(env), await start_server(env)]
    yield processes
    for process in processes:
        process.kill()


@pytest.fixture(scope="module")
async def clients(sidecars: list[ServerProcess], operator_token: str) -> AsyncIterator[list[Client]]:
    made = [make_client(p.address, operator_token) for p in sidecars]
    yield made
    for c in made:
        await c.channel.close()


async def test_a_write_through_one_sidecar_reaches_the_other(clients: list[Client], unique: str) -> None:
    a, b = clients
    tenant = await a.tenant(f"prop-{unique}")
    await a.grant(tenant.id, user("amy"), "reader", "eu", ["doc.read"])
    # B caches "no" first, so it must be told, not merely miss.
    assert not (await b.access.CheckAccess(check(tenant.id, "amy", "doc.write"))).allowed
    revision = await a.grant(tenant.id, user("amy"), "writer", "eu", ["doc.write"])

    async def b_allows() -> bool:
        answer = await b.access.CheckAccess(check(tenant.id, "amy", "doc.write"))
        return answer.allowed and answer.revision >= revision

    await eventually(b_allows)


async def test_revocation_stops_allowing_everywhere(clients: list[Client], unique: str) -> None:
    a, b = clients
    tenant = await a.tenant(f"rev-{unique}")
    await a.grant(tenant.id, user("ben"), "editor", "eu", ["doc.*"])
    for c in clients:
        assert (await c.access.CheckAccess(check(tenant.id, "ben", "doc.edit"))).allowed
    await a.admin.RevokeRole(
        admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("ben"), role="editor", scope="eu"),
        metadata=a.auth,
    )
    for c in clients:
        async def denied(c: Client = c) -> bool:
            return not (await c.access.CheckAccess(check(tenant.id, "ben", "doc.edit"))).allowed

        await eventually(denied)


async def test_a_revoked_key_is_rejected_by_every_sidecar(clients: list[Client], unique: str) -> None:
    """Each sidecar remembers a verified key (Argon2 is slow); the key event makes every
    one of them forget it, for tenant keys and operator keys alike."""
    a, b = clients
    tenant = await a.tenant(f"key-{unique}")
    tenant_key = await a.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, permissions=["*"], roles=[admin_pb2.RoleGrant(role="viewer")]),
        metadata=a.auth,
    )
    operator_key = await a.admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(permissions=["*"]), metadata=a.auth)
    request = admin_pb2.ListRolesRequest(tenant_id=tenant.id)
    for secret in (tenant_key.secret, operator_key.secret):
        for c in clients:  # verified (and remembered) at both
            await c.admin.ListRoles(request, metadata=(("authorization", f"Bearer {secret}"),))
    await a.admin.RevokeApiKey(
        admin_pb2.RevokeApiKeyRequest(tenant_id=tenant.id, key_id=tenant_key.key.id), metadata=a.auth
    )
    await a.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(key_id=operator_key.key.id), metadata=a.auth)
    for secret in (tenant_key.secret, operator_key.secret):
        async def rejected(secret: str = secret) -> bool:
            try:
                await b.admin.ListRoles(request, metadata=(("authorization", f"Bearer {secret}"),))
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

        await eventually(rejected)


async def test_watch_sees_a_config_patch_and_a_stalled_reader_stalls_nobody(clients: list[Client], unique: str) -> None:
    a, b = clients
    tenant = await a.tenant(f"watch-{unique}")
    stalled = b.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
    first_of_stalled = await stalled.read()  # then never read again
    watch = b.config.WatchTenantConfig(config_pb2.WatchTenantConfigRequest(tenant_id=tenant.id))
    first = await watch.read()
    assert first.revision == first_of_stalled.revision == tenant.revision

    last = None
    for n in range(30):
        last = await a.admin.PatchTenantConfig(
            admin_pb2.PatchTenantConfigRequest(tenant_id=tenant.id, set_quota_overrides={"seats": n + 1}),
            metadata=a.auth,
        )
    assert last is not None

    async def caught_up() -> bool:
        update = await asyncio.wait_for(watch.read(), timeout=BOUND_SECONDS)
        return update.revision == last.revision and update.quotas["seats"] == 30

    await eventually(caught_up)
    stalled.cancel()
    watch.cancel()


async def test_watch_of_unknown_tenant_is_not_found(clients: list[Client]) -> None:
    stream = clients[0].config.WatchTenantConfig(
        config_pb2.WatchTenantConfigRequest(tenant_id="00000000-0000-0000-0000-000000000000")
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stream.read()
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


async def test_redis_restart_keeps_answers_flowing_and_catches_up(
    database_url: str, private_redis: PrivateRedis, unique: str, operator_token: str
) -> None:
    prefix = f"ghtest{secrets.token_hex(3)}"
    env = sidecar_env(database_url, private_redis.url, prefix, KEY)
    processes = [await start_server(env), await start_server(env, "--relay", "0")]
    a, b = (make_client(p.address, operator_token) for p in processes)
    try:
        tenant = await a.tenant(f"redis-{unique}")
        await a.grant(tenant.id, user("cat"), "editor", "eu", ["doc.*"])
        await eventually(lambda: _allowed(b, tenant.id, "cat"))

        private_redis.stop()
        # Both keep answering, from L1 and Postgres, with no errors.
        for _ in range(20):
            for c in (a, b):
                await c.access.CheckAccess(check(tenant.id, "cat", "doc.edit"))
        # A write while Redis is down commits (the event waits in the outbox), and even
        # without events B stops serving the old grant within its blind-refresh bound.
        await a.admin.RevokeRole(
            admin_pb2.RevokeRoleRequest(tenant_id=tenant.id, subject=user("cat"), role="editor", scope="eu"),
            metadata=a.auth,
        )
        await eventually(lambda: _denied(b, tenant.id, "cat"), bound=BOUND_SECONDS + 2)

        await private_redis.start()
        await a.grant(tenant.id, user("cat"), "editor", "eu")
        await eventually(lambda: _allowed(b, tenant.id, "cat"), bound=BOUND_SECONDS + 3)
    finally:
        for c in (a, b):
            await c.channel.close()
        for p in processes:
            p.kill()


async def _allowed(c: Client, tenant_id: str, who: str) -> bool:
    return (await c.access.CheckAccess(check(tenant_id, who, "doc.edit"))).allowed


async def _denied(c: Client, tenant_id: str, who: str) -> bool:
    return not await _allowed(c, tenant_id, who)
